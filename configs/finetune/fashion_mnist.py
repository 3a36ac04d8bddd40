"""Fine-tuning on Fashion-MNIST at a higher resolution: the CPU default of
`python -m supervised.finetune`.

Start from any checkpoint with --config.init=..., e.g. the supervised or MPP default runs
(28 px, 4x4 patches: a 7x7 grid). Here images are 32 px, so the grid becomes 8x8 and the
position embeddings are interpolated, as the paper's 224 -> 384 fine-tuning (§3.2).
The model's sizes come from the checkpoint; set none of them here.
"""
from vit import config as config_lib


def get_config():
  config = config_lib.defaults()
  config.image_size = 32
  config.batch_size = 128
  config.total_steps = 300
  config.model.num_classes = 10
  config.model.transformer.dropout_rate = 0.0
  # Appendix B.1.1: SGD momentum 0.9, no weight decay, gradient clipping at global norm 1,
  # short warmup then cosine decay. The learning rate is the best of the paper's grid
  # {0.001, 0.003, 0.01, 0.03} for this small model.
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.learning_rate = 0.03
  config.optimizer.weight_decay = 0.0
  config.optimizer.grad_clip_norm = 1.0
  config.optimizer.warmup_steps = 30
  config.optimizer.decay = 'cosine'
  # Polyak averaging, evaluated beside the raw parameters. The paper's 0.9999 averages over
  # ~10k steps; 300 steps need a shorter horizon.
  config.ema_decay = 0.99
  config.log_every = 50
  return config
