"""Appendix D.4: learned 2D position embeddings (row and column tables, half width each).

The paper's ViT on Fashion-MNIST (configs/supervised/fashion_mnist.py) with one switch changed;
docs/ablations.md has the commands and the measured table.
"""
from configs.supervised import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.model.posemb = 'learned_2d'
  return config
