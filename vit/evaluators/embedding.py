"""Frozen features of a whole split, on every process: what few-shot and linear probes fit."""
from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from vit import sharding
from vit.data import pipeline


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
  return jax.tree.map(lambda *parts: np.concatenate(parts), *feats), np.concatenate(labels)


def to_host(tree):
  """Global (sharded) arrays -> numpy arrays with all their rows, on every process."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(np.asarray, jax.device_get(tree))
