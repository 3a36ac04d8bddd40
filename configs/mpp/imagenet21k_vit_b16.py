"""Masked patch prediction for ViT-B/16 at 224 px: the paper's recipe (Appendix B.1.2), for pods.

The paper pretrained on JFT; ImageNet-21k (prepared as ArrayRecord with `python -m
vit.data.prepare`) is the public stand-in. 50% of patch embeddings corrupted (80% [mask], 10%
random, 10% kept), 3-bit mean colour (512 classes) of each 16x16 patch as the target, Adam
(0.9, 0.999), base learning rate 2e-4, 10k warmup steps then cosine decay, batch 4096, 1M steps;
the classification augmentation (Inception crop, flip). Set config.data.source to your copy.
"""
from mpp import objective
from vit import config as config_lib


def get_config():
  config = config_lib.defaults()
  config.mpp = objective.section()
  config.image_size = 224
  config.batch_size = 4096
  config.total_steps = 1_000_000
  config.model.name = 'ViT-B/16'
  config.model.dtype = 'bfloat16'
  config.data.source = 'array_record:/data/imagenet21k'
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  config.data.inception_crop = True
  config.data.flip = True
  config.data.worker_count = 16
  config.optimizer.name = 'adam'
  config.optimizer.b1, config.optimizer.b2 = 0.9, 0.999
  config.optimizer.learning_rate = 2e-4
  config.optimizer.warmup_steps = 10_000
  config.optimizer.decay = 'cosine'
  config.optimizer.grad_clip_norm = 1.0
  config.optimizer.weight_decay = 0.0  # Not stated for MPP in the paper.
  config.mpp.target = 'mean_color'
  config.mpp.corruption_rate = 0.5
  config.mpp.bits = 3
  # A randomly replaced patch comes from the same image: drawn from the whole batch, every
  # device would all-gather the 4096 images' patch embeddings each step (ViT-B/16 on
  # v5e:16x16: 6.54 GiB per chip instead of 2.42, docs/scaling.md).
  config.mpp.random_source = 'image'
  config.mpp.image_every = 10_000
  config.mpp.eval_examples = 10_000
  config.eval_batch_size = 1024
  config.eval_every = 10_000
  config.checkpoint_every = 2_000
  config.log_every = 200
  config.fewshot.enabled = True  # Frozen-feature few-shot accuracy of the backbone.
  config.fewshot.max_test = 10_000
  return config
