"""Attention weights of a ViT, mean attention distance and attention rollout (paper §4.5).

Weights are [B, heads, T, T] per block, tokens ordered as the model orders them: the prefix
(class token, when the classifier has one) first, then the patch grid row by row.
"""
from __future__ import annotations

import re
from typing import Sequence

import jax
import numpy as np

from vit.preprocess import to_model_input

_BLOCK = re.compile(r'encoderblock_(\d+)(?:_(row|col))?$')


def block_order(name: str) -> tuple[int, int]:
  """Depth order of the encoder blocks: `encoderblock_3` < `encoderblock_4_row` < `..._col`."""
  index, axis = _BLOCK.match(name).groups()
  return int(index), {None: 0, 'row': 0, 'col': 1}[axis]


def make_attention_fn(model, to_input=to_model_input):
  """Jitted `(params, uint8 images) -> (outputs, [weights [B, heads, T, T] per block])`.

  Blocks are in depth order; an axial layer contributes its row block, then its column block.
  `to_input` scales the uint8 images (vit.preprocess.input_fn of the model spec).
  """

  def fn(params, images):
    out, state = model.apply({'params': params}, to_input(images), train=False,
                             mutable=['intermediates'])
    blocks = state['intermediates']['Transformer']
    names = sorted((n for n in blocks if _BLOCK.match(n)), key=block_order)
    return out, [blocks[n]['MultiHeadDotProductAttention_1']['attention_weights'][0]
                 for n in names]

  return jax.jit(fn)


def patch_centres(grid: Sequence[int], pixels_per_patch: Sequence[int]) -> np.ndarray:
  """Centres of the patches in pixels, [gh * gw, 2] (row, col), row-major like the tokens."""
  gh, gw = grid
  r, c = np.divmod(np.arange(gh * gw), gw)
  return np.stack([(r + 0.5) * pixels_per_patch[0], (c + 0.5) * pixels_per_patch[1]], axis=1)


def mean_attention_distance(weights: np.ndarray, grid: Sequence[int],
                            pixels_per_patch: Sequence[int]) -> np.ndarray:
  """Attention-weighted distance in pixels between query and key patches, [B, heads].

  The paper's "attention distance" (Figure 7, right; analogous to receptive field size): for
  every patch query, the mean of the distances to all patch keys, weighted by attention, then
  averaged over queries. Prefix tokens have no position: their rows and columns are left out
  and each query's weights renormalised over the patches.
  """
  n = grid[0] * grid[1]
  w = np.asarray(weights, np.float64)[:, :, -n:, -n:]
  w = w / np.maximum(w.sum(-1, keepdims=True), 1e-12)
  centres = patch_centres(grid, pixels_per_patch)
  dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)  # [N, N]
  return np.einsum('bhqk,qk->bhq', w, dist).mean(-1)


def attention_rollout(weights: Sequence[np.ndarray]) -> np.ndarray:
  """Attention rollout (Abnar & Zuidema, 2020), the paper's method for Figures 6 and 14.

  Heads are averaged, the residual connection is accounted for by mixing in the identity
  (0.5 A + 0.5 I, rows renormalised), and the layers are multiplied from the input up:
  R = A_L ... A_1, [B, T, T]; R[b, i, j] is how much output token i draws on input token j.
  """
  rollout = None
  for w in weights:
    a = np.asarray(w, np.float64).mean(axis=1)
    a = 0.5 * a + 0.5 * np.eye(a.shape[-1])
    a = a / a.sum(-1, keepdims=True)
    rollout = a if rollout is None else a @ rollout
  return rollout


def rollout_map(rollout: np.ndarray, grid: Sequence[int], patch_mean: bool = False
                ) -> np.ndarray:
  """The map from the output representation to the patches, [B, gh, gw], of rollout [B, T, T].

  With a class token (the first token) it is the class token's row of the rollout; with
  global average pooling the output is the mean of all tokens, so it is the mean of the rows.
  `patch_mean`: the representation is the mean of the patch tokens (an MPP, MAE or SimMIM
  encoder's, as few-shot reads it; MPP discards the class token's output), so it is the mean
  of the patch rows, the class token's left out.
  """
  n = grid[0] * grid[1]
  prefix = rollout.shape[-1] - n
  if patch_mean or not prefix:
    row = rollout[:, prefix:].mean(axis=1)
  else:
    row = rollout[:, 0]
  return row[:, prefix:].reshape(-1, *grid)


def rollout_source(prefix: int, patch_mean: bool) -> str:
  """In words, the row `rollout_map` reads: for inspect.json's `rollout_of`."""
  if patch_mean:
    return 'mean of patch tokens'
  return 'class token' if prefix else 'mean of all tokens (global average pooling)'
