"""Supervised training of a small ViT on Fashion-MNIST: the CPU default (minutes on 2 cores).

28x28 images, 4x4 patches -> 49 tokens; a ViT of width 64 and depth 4.
"""
from vit import config as config_lib


def get_config():
  config = config_lib.defaults()
  config.image_size = 28
  config.batch_size = 128
  config.total_steps = 600
  config.model.patches.size = (4, 4)
  config.model.hidden_size = 64
  config.model.transformer.mlp_dim = 256
  config.model.transformer.num_heads = 4
  config.model.transformer.num_layers = 4
  config.model.num_classes = 10
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 50
  config.optimizer.weight_decay = 0.1
  config.log_every = 50
  return config
