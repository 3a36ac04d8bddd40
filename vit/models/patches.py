"""Images cut into the ViT's patches and put back: the pixels of each token, in token order.

The order is the one `VisionTransformer`'s patch embedding gives its tokens (row-major over the
patch grid of `vit.models.vit.patch_grid`), so the objectives that predict pixels (mpp/, mae/,
simmim/) line their targets up with the model's outputs through these functions. Within a patch,
values run over rows, then columns, then channels: the official MAE `patchify`
('nchpwq->nhwpqc') and the layout of SimMIM's pixel-shuffle decoder.
"""
from __future__ import annotations

from typing import Sequence, Union

import jax.numpy as jnp

PatchSize = Union[int, Sequence[int]]


def as_pair(patch_size: PatchSize) -> tuple[int, int]:
  """A patch size as (height, width) in pixels: an int is a square patch."""
  if isinstance(patch_size, int):
    return patch_size, patch_size
  ph, pw = patch_size
  return int(ph), int(pw)


def patchify(images, patch_size: PatchSize):
  """[B, H, W, C] -> [B, N, ph, pw, C], patches in row-major order (the ViT token order).

  H and W must be multiples of the patch size. NumPy or JAX arrays, dtype kept.
  """
  ph, pw = as_pair(patch_size)
  b, h, w, c = images.shape
  x = images.reshape(b, h // ph, ph, w // pw, pw, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // ph) * (w // pw), ph, pw, c)


def unpatchify(patches, grid: tuple[int, int]):
  """[B, N, ph, pw, C] and the (rows, cols) patch grid -> [B, H, W, C]: `patchify`'s inverse."""
  b, _, ph, pw, c = patches.shape
  gh, gw = grid
  return patches.reshape(b, gh, gw, ph, pw, c).transpose(0, 1, 3, 2, 4, 5).reshape(
      b, gh * ph, gw * pw, c)


def pixels(images, patch_size: PatchSize):
  """[B, H, W, C] -> float32 [B, N, ph*pw*C]: each patch flattened (rows, columns, channels),
  in the scale of `images` (the reconstruction target of MPP's `pixels`, MAE and SimMIM)."""
  p = patchify(images, patch_size)
  return p.reshape(p.shape[0], p.shape[1], -1).astype(jnp.float32)
