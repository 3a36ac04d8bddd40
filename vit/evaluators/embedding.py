"""Frozen features of a whole split, on every process: what few-shot and linear probes fit."""
from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from vit import sharding
from vit.data import pipeline
from vit.errors import UserError


def embed(config: ml_collections.ConfigDict, features: Callable, params, source, mesh
          ) -> tuple[Any, np.ndarray]:
  """Features and labels of every record of `source`, in order, at the evaluation view.

  features: (params, uint8 images [B, H, W, C]) -> float [B, D], or a dict of such arrays
  (jit it once beforehand: it is called per batch). Batches come from
  `vit.data.pipeline.eval_batches` (config.eval_batch_size, this process's share) and are
  sharded over `mesh`. Returns (the same structure of float64 [N, D] arrays, int32 labels
  [N]), N = len(source): the padding of the last batch is dropped. With several processes
  every process gets all N rows (an all-gather), so each can fit the same probe.
  """
  feats, labels = [], []
  with jax.set_mesh(mesh):
    for batch in pipeline.eval_batches(config, source=source):
      batch = sharding.global_batch(batch, mesh)
      out, keep, label = to_host((features(params, batch['image']), batch['mask'],
                                  batch['label']))
      feats.append(jax.tree.map(lambda v, keep=keep: np.asarray(v, np.float64)[keep], out))
      labels.append(label[keep])
  out = jax.tree.map(lambda *parts: np.concatenate(parts), *feats)
  check_finite(out)
  return out, np.concatenate(labels)


def check_finite(features) -> None:
  """UserError counting the images whose features (an [N, D] array, or a dict of them) hold
  NaN or inf: finite weights whose activations overflow float32. A probe fit on them fails
  deep in numpy's linear algebra (few-shot's eigendecomposition did not converge) or
  reports a meaningless accuracy."""
  for name, x in (features.items() if isinstance(features, dict) else [(None, features)]):
    bad = int(np.count_nonzero(~np.isfinite(x).all(axis=tuple(range(1, x.ndim)))))
    if bad:
      what = f'the {name} features' if name else 'the features'
      raise UserError(f'{what} of {bad} of {len(x)} images are not finite (NaN or inf): the '
                      f'model\'s activations overflow float32, so no probe is fit on them')


def to_host(tree):
  """Global (sharded) arrays -> numpy arrays with all their rows, on every process."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(np.asarray, jax.device_get(tree))
