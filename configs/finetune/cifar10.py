"""Fine-tuning on CIFAR-10 at 384 px, the paper's transfer setting (Appendix B.1.1, Table 4).

Needs the TFDS data (`python -m vit.data.prepare` or an existing TFDS data_dir) and a
pretrained checkpoint, e.g. --config.init=vit_jax:ViT-B_16.npz (224 px, so the 14x14 grid of
position embeddings is interpolated to 24x24).
"""
from vit import config as config_lib


def get_config():
  config = config_lib.defaults()
  config.image_size = 384
  config.batch_size = 512
  config.total_steps = 10_000
  config.model.num_classes = 10
  config.data.source = 'tfds:cifar10'
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  config.data.inception_crop = True
  config.data.flip = True
  config.data.worker_count = 8
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.learning_rate = 0.01  # The paper sweeps {0.001, 0.003, 0.01, 0.03}.
  config.optimizer.weight_decay = 0.0
  config.optimizer.grad_clip_norm = 1.0
  config.optimizer.warmup_steps = 500
  config.optimizer.decay = 'cosine'
  config.ema_decay = 0.9999
  config.eval_every = 1000
  config.checkpoint_every = 1000
  config.log_every = 100
  return config
