"""Supervised pretraining of ViT-B/16 on ImageNet-21k at 224 px: the paper's recipe, for pods.

Table 3 / Appendix B.1: Adam (0.9, 0.999), batch 4096, peak learning rate 1e-3 after 10k
linear warmup steps then linear decay, decoupled weight decay 0.03, dropout 0.1, global-norm
clipping at 1, 90 epochs (14.2M images / 4096 = ~3.5k steps per epoch), a 768-wide tanh
representation layer before the head. Data: ImageNet-21k prepared as ArrayRecord with
`python -m vit.data.prepare` (21,843 classes); set config.data.source accordingly.
"""
from vit import config as config_lib


def get_config():
  config = config_lib.defaults()
  config.image_size = 224
  config.batch_size = 4096
  config.total_steps = 312_000  # 90 epochs of 14.2M images.
  config.model.name = 'ViT-B/16'
  config.model.num_classes = 21_843
  config.model.representation_size = 768
  config.model.transformer.dropout_rate = 0.1
  config.model.dtype = 'bfloat16'
  config.data.source = 'array_record:/data/imagenet21k'
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  config.data.inception_crop = True
  config.data.flip = True
  config.data.worker_count = 16
  config.optimizer.name = 'adam'
  config.optimizer.b1, config.optimizer.b2 = 0.9, 0.999
  config.optimizer.learning_rate = 1e-3
  config.optimizer.weight_decay = 0.03
  config.optimizer.grad_clip_norm = 1.0
  config.optimizer.warmup_steps = 10_000
  config.optimizer.decay = 'linear'
  config.ema_decay = 0.0  # The paper averages while fine-tuning, not in pretraining.
  config.eval_batch_size = 1024
  config.eval_every = 10_000
  config.checkpoint_every = 2_000
  config.log_every = 200
  config.fewshot.enabled = True  # Frozen-feature 1/5/10/25-shot accuracy at every evaluation.
  config.fewshot.max_test = 10_000
  return config
