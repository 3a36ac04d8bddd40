"""Appendix D.3: global average pooling with a higher learning rate (GAP needs its own LR).

The paper's ViT on Fashion-MNIST (configs/supervised/fashion_mnist.py) with one switch changed;
docs/ablations.md has the commands and the measured table.
"""
from configs.supervised import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.model.classifier = 'gap'
  config.optimizer.learning_rate = 3e-3
  return config
