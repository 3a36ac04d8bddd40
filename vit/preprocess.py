"""Device-side scaling of uint8 batches: the one place the value ranges are defined."""
from typing import Callable, Optional

import jax.numpy as jnp

from vit.models.spec import ModelSpec, Pixels


def to_unit(images):
  """uint8 [0, 255] -> float32 [0, 1] (what MPP targets are computed from)."""
  return images.astype(jnp.float32) / 255.0


def to_model_input(images):
  """uint8 [0, 255] -> float32 [-1, 1], the official models' input range (x / 127.5 - 1)."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def input_fn(model: Optional[ModelSpec]) -> Callable:
  """uint8 [B, H, W, C] -> the float32 input of a model (a resolved `ModelSpec`; None: the
  official one). Its `pixels` (`pixels_fn`), when set, or the official `to_model_input`."""
  return pixels_fn(model.pixels if model is not None else None)


def pixels_fn(pixels: Optional[Pixels]) -> Callable:
  """uint8 [B, H, W, C] -> float32 (x * rescale - mean) / std per channel, in the order
  transformers' ViTImageProcessor applies them: a checkpoint's own normalisation (Hugging
  Face's processor, timm's pretrained_cfg). None: the official `to_model_input`."""
  if pixels is None:
    return to_model_input
  rescale = float(pixels.rescale)
  mean, std = (jnp.asarray(v, jnp.float32) for v in (pixels.mean, pixels.std))
  return lambda images: (images.astype(jnp.float32) * rescale - mean) / std
