"""What masked patch prediction predicts for each patch (paper §4.6, Appendix B.1.2).

Targets are computed from the un-normalised [0, 1] image after the augmentation the model sees,
never from the [-1, 1] model input: bins taken from normalised pixels would put half the colour
range below zero and collapse it into the first bin. The `pixels` target is the raw patch
(vit.models.patches.pixels), for L2 regression.
"""
from __future__ import annotations

import jax.numpy as jnp

from vit.models.patches import PatchSize, as_pair, patchify

TARGETS = ('mean_color', 'downsampled_color', 'pixels')



def quantize(colors, bits: int):
  """float [..., C] in [0, 1] -> int32 [...]: per-channel 2**bits bins, channel 0 most significant.

  The top bin is closed (1.0 falls in it); RGB with 3 bits is r*64 + g*8 + b, 512 classes.
  """
  levels = 2 ** bits
  q = jnp.minimum(jnp.floor(colors * levels), levels - 1).astype(jnp.int32)
  q = jnp.maximum(q, 0)
  channels = colors.shape[-1]
  weights = jnp.array([levels ** (channels - 1 - c) for c in range(channels)], jnp.int32)
  return jnp.sum(q * weights, axis=-1)


def dequantize(classes, channels: int, bits: int):
  """int [...] -> float [..., C]: the centre of each class's colour bin (for pictures)."""
  levels = 2 ** bits
  q = jnp.stack([(classes // levels ** (channels - 1 - c)) % levels for c in range(channels)], -1)
  return (q.astype(jnp.float32) + 0.5) / levels


def mean_color(images, patch_size: PatchSize, bits: int = 3):
  """float [B, H, W, C] in [0, 1] -> int32 [B, N]: each patch's quantised mean colour."""
  return quantize(patchify(images, patch_size).mean(axis=(2, 3)), bits)


def downsampled_color(images, patch_size: PatchSize, grid: int = 4, bits: int = 3):
  """-> int32 [B, N, grid*grid]: each patch average-pooled to grid x grid cells, quantised.

  The paper's variant of 16 predictions of 512 classes per 16x16 patch (4x4 cells of 4x4 pixels).
  A cell is `cell_size(patch_size, grid)` pixels: at 4-px patches, grid 4 is one pixel per cell.
  """
  ph, pw = as_pair(patch_size)
  if ph % grid or pw % grid:
    raise ValueError(f'patch size {(ph, pw)} is not divisible by the grid {grid}')
  p = patchify(images, (ph, pw))
  b, n, _, _, c = p.shape
  cells = p.reshape(b, n, grid, ph // grid, grid, pw // grid, c).mean(axis=(3, 5))
  return quantize(cells.reshape(b, n, grid * grid, c), bits)


def cell_size(patch_size: PatchSize, grid: int) -> tuple[int, int]:
  """Pixels per cell of the downsampled target, (height, width): patch size / grid."""
  ph, pw = as_pair(patch_size)
  return ph // grid, pw // grid


def normalize_patches(patches, eps: float = 1e-6):
  """Per-patch zero mean and unit variance over the last axis (optional pixel targets)."""
  mean = patches.mean(axis=-1, keepdims=True)
  var = patches.var(axis=-1, keepdims=True)
  return (patches - mean) / jnp.sqrt(var + eps)


def output_shape(target: str, patch_size: PatchSize, channels: int, bits: int, grid: int
                 ) -> tuple[int, ...]:
  """The head's per-patch output: (classes,), (cells, classes) or (values,)."""
  ph, pw = as_pair(patch_size)
  classes = (2 ** bits) ** channels
  if target == 'mean_color':
    return (classes,)
  if target == 'downsampled_color':
    return (grid * grid, classes)
  if target == 'pixels':
    return (ph * pw * channels,)
  raise ValueError(f'unknown MPP target {target!r}; known: {", ".join(TARGETS)}')
