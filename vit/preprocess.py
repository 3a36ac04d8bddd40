"""Device-side scaling of uint8 batches: the one place the value ranges are defined."""
from typing import Callable, Optional

import jax.numpy as jnp


def to_unit(images):
  """uint8 [0, 255] -> float32 [0, 1] (what MPP targets are computed from)."""
  return images.astype(jnp.float32) / 255.0


def to_model_input(images):
  """uint8 [0, 255] -> float32 [-1, 1], the official models' input range (x / 127.5 - 1)."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def input_fn(model: Optional[dict]) -> Callable:
  """uint8 [B, H, W, C] -> the float32 input of a model (a resolved vit.config model dict).

  Its `pixels` key, when set (a checkpoint's own normalisation: Hugging Face's processor,
  timm's pretrained_cfg), gives (x * rescale - mean) / std per channel, in the order
  transformers' ViTImageProcessor applies them; unset, the official `to_model_input`.
  """
  px = (model or {}).get('pixels') or {}
  if px.get('rescale') is None:
    return to_model_input
  rescale = float(px['rescale'])
  mean, std = (jnp.asarray(px[k], jnp.float32) for k in ('mean', 'std'))
  return lambda images: (images.astype(jnp.float32) * rescale - mean) / std
