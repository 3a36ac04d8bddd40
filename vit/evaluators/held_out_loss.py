"""An objective's own loss on held-out images, masked the same way at every evaluation.

For the pixel-reconstruction objectives (mae/, simmim/): their training loss, computed without
dropout on the first `examples` evaluation images rounded up to whole global batches: the
first ceil(examples / global_batch_size) batches of the evaluation pipeline, whatever the
number of processes (1000 at 256 a batch scores 1024 images, the padding rows of a short
split's last batch aside; in P processes each batch holds global_batch_size / P rows of each
process's shard, so which images those are, and the rows their masks fall on, depend on P).
Each batch has its own fixed key, so that two evaluations (and two runs on one layout) see the
same masks. `loss_fn(params, batch, rng, train)` must weight by `batch['mask']` (the evaluation
pipeline's valid rows) and report the weight it averaged over as `metrics['masked_patches']`;
batches are combined by that weight. `examples` in the result is the number of valid images
scored.
"""
from __future__ import annotations

import itertools
from typing import Callable, Iterable

import jax
import jax.numpy as jnp

from vit import sharding


class HeldOutLoss:
  """The evaluator of an objective's loss on held-out images (see the module): `loss_fn` is the
  objective's `loss`. `evaluate(params)` returns {'loss': the mean over the masked patches of
  all batches, 'examples': the valid images scored}."""

  metric_names = ('loss', 'examples')  # What `evaluate` returns, known before training.

  def __init__(self, loss_fn: Callable, batches: Callable[[], Iterable[dict]], mesh, *,
               examples: int, global_batch_size: int, seed: int = 0, name: str = 'eval'):
    self.name, self._batches, self._mesh = name, batches, mesh
    # Global batches: each process pulls as many as the others (a collective per batch).
    self._limit = -(-examples // global_batch_size)
    base = jax.random.key(seed)

    def sums(params, batch, index):
      loss, metrics = loss_fn(params, batch, jax.random.fold_in(base, index), False)
      weight = metrics['masked_patches']
      return {'loss': loss * weight, 'weight': weight,
              'images': jnp.sum(batch['mask']).astype(jnp.float32)}

    self._sums = jax.jit(sums)

  def evaluate(self, params) -> dict:
    total = None
    with jax.set_mesh(self._mesh):
      for index, batch in enumerate(itertools.islice(self._batches(), self._limit)):
        s = self._sums(params, sharding.global_batch(batch, self._mesh), index)
        total = s if total is None else jax.tree.map(jnp.add, total, s)
    total = jax.device_get(total)
    return {'loss': float(total['loss']) / max(float(total['weight']), 1e-9),
            'examples': float(total['images'])}
