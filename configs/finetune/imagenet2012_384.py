"""Fine-tuning on ImageNet (ILSVRC-2012) at 384 px, the paper's headline transfer (Table 2).

For pods: batch 512, 20k steps, SGD momentum 0.9, Polyak averaging 0.9999. Start from an
ImageNet-21k checkpoint, e.g. --config.init=supervised:runs/in21k (configs/supervised/
imagenet21k_vit_b16.py) or --config.init=vit_jax:imagenet21k_ViT-B_16.npz. Needs the TFDS
imagenet2012 data (manual download) under config.data.data_dir.
"""
from vit import config as config_lib


def get_config():
  config = config_lib.defaults()
  config.image_size = 384
  config.batch_size = 512
  config.total_steps = 20_000
  config.model.num_classes = 1000
  config.data.source = 'tfds:imagenet2012'
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  config.data.inception_crop = True
  config.data.flip = True
  config.data.worker_count = 16
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.learning_rate = 0.03  # The paper sweeps {0.003, 0.01, 0.03, 0.06}.
  config.optimizer.weight_decay = 0.0
  config.optimizer.grad_clip_norm = 1.0
  config.optimizer.warmup_steps = 500
  config.optimizer.decay = 'cosine'
  config.ema_decay = 0.9999
  config.eval_every = 2000
  config.checkpoint_every = 1000
  config.best_metric = 'eval_ema/accuracy'
  config.log_every = 100
  return config
