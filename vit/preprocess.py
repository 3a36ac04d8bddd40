"""Device-side scaling of uint8 batches: the one place the value ranges are defined."""
import jax.numpy as jnp


def to_unit(images):
  """uint8 [0, 255] -> float32 [0, 1] (what MPP targets are computed from)."""
  return images.astype(jnp.float32) / 255.0


def to_model_input(images):
  """uint8 [0, 255] -> float32 [-1, 1], the official models' input range (x / 127.5 - 1)."""
  return images.astype(jnp.float32) / 127.5 - 1.0
