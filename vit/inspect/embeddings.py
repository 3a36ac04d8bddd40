"""Position embedding similarity and patch-embedding filter components (paper Figure 7)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from vit.models.vit import sincos_2d


def patch_position_embeddings(params: dict, posemb: str, grid: Sequence[int]
                              ) -> Optional[np.ndarray]:
  """The position embedding each patch receives, [gh * gw, D]; None for kinds without one.

  `relative` biases act on pairs of tokens and `none` has nothing, so neither has a
  per-patch embedding to compare.
  """
  gh, gw = grid
  pos = params['Transformer'].get('posembed_input', {})
  if posemb == 'learned_1d':
    return np.asarray(pos['pos_embedding'])[0, -gh * gw:]
  if posemb == 'learned_2d':
    row, col = np.asarray(pos['pos_embedding_row']), np.asarray(pos['pos_embedding_col'])
    return np.concatenate([np.repeat(row, gw, axis=0), np.tile(col, (gh, 1))], axis=1)
  if posemb == 'sincos_2d':
    return sincos_2d(grid, np.asarray(params['embedding']['kernel']).shape[-1])
  return None


def posemb_similarity(embeddings: np.ndarray, grid: Sequence[int]) -> np.ndarray:
  """Cosine similarity of every patch's position embedding with every other's.

  [gh, gw, gh, gw]: entry [i, j] is the small map of Figure 7 (centre) for the patch in row i,
  column j.
  """
  e = np.asarray(embeddings, np.float64)
  e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
  return (e @ e.T).reshape(*grid, *grid)


def filter_pca(kernel: np.ndarray, count: int = 28) -> tuple[np.ndarray, np.ndarray]:
  """Leading principal components of the patch-embedding filters (Figure 7, left: 28 of them).

  `kernel` is the embedding convolution [ph, pw, C, D]: D filters, each a ph x pw x C patch.
  Returns the components as patches [k, ph, pw, C] (unit norm, sign arbitrary) and the share
  of the filters' variance each explains [k]. k is at most `count` and the rank of the
  centred filters (at most D - 1): directions past it explain no variance, and their vectors
  are whatever the SVD picked (a width-16 model drew a 16th "component" of 0%). k is 0 when
  every filter is the same.
  """
  kernel = np.asarray(kernel, np.float64)
  ph, pw, c, d = kernel.shape
  filters = kernel.reshape(ph * pw * c, d).T
  filters = filters - filters.mean(axis=0)
  _, s, vt = np.linalg.svd(filters, full_matrices=False)
  rank = int(np.count_nonzero(s > s.max(initial=0.0) * 1e-9))  # Relative: rounding leaves ~1e-16.
  k = min(count, rank)
  explained = s ** 2 / max(np.sum(s ** 2), 1e-30)
  return vt[:k].reshape(k, ph, pw, c), explained[:k]
