"""Masked patch prediction on Fashion-MNIST: the CPU default (a few minutes on 2 cores).

The same small ViT as configs/supervised/fashion_mnist.py (28x28, 4x4 patches -> 49 tokens,
width 64, depth 4), so its backbone fine-tunes with configs/finetune/fashion_mnist.py. Images
are repeated to 3 channels like the supervised default: the 512 mean-colour classes reduce to
the 8 grey ones, which the model learns quickly. The paper's augmentation for MPP is the
classification one (Inception crop and flip); at 28 pixels a crop down to 5% of the area
leaves little of the garment, so only the flip is kept here.
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
  config.data.flip = True
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 50
  config.optimizer.weight_decay = 0.1
  config.mpp.target = 'mean_color'
  config.mpp.corruption_rate = 0.5
  config.mpp.image_every = 200
  config.mpp.eval_examples = 1024
  config.log_every = 50
  return config
