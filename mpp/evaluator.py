"""Held-out MPP loss and colour accuracy, with the majority-class baseline beside them."""
from __future__ import annotations

import itertools
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from mpp import objective
from vit import sharding


class MppEvaluator:
  """The first `examples` evaluation images, rounded up to whole global evaluation batches of
  `global_batch_size` (whatever the number of processes, as
  `vit.evaluators.held_out_loss.HeldOutLoss`), corrupted the same way at every evaluation;
  `examples` in the result is the number of valid images scored.

  `majority_accuracy` is what always predicting the most frequent target class scores on the
  same corrupted patches: an accuracy below it means the model learnt nothing from context.
  """

  def __init__(self, model: objective.MppModel, spec: objective.Spec,
               batches: Callable[[], Iterable[dict]], mesh, *, examples: int,
               global_batch_size: int, seed: int = 0, name: str = 'eval'):
    self.name, self._batches, self._mesh, self._spec = name, batches, mesh, spec
    # Global batches: each process pulls as many as the others (a collective per batch).
    self._limit = -(-examples // global_batch_size)
    base = jax.random.key(seed)
    colour = spec.target != 'pixels'
    num_classes = spec.output_shape[-1] if colour else 1
    # What `evaluate` returns, known before training (vit.training.loop checks best_metric).
    self.metric_names = ('loss', 'examples') + (
        ('accuracy',) if colour or not spec.normalize_pixels else ()) + (
        ('majority_accuracy',) if colour else ())

    def sums(params, batch, index):
      rng = jax.random.fold_in(base, index)
      outputs, targets, corruption = objective.forward(
          model, spec, params, batch['image'], rng, False)
      weights = objective.valid_rows(corruption.corrupted, batch)
      loss, metrics = objective.masked_loss(spec, outputs, targets, weights)
      count = jnp.sum(weights)
      out = {'loss': loss * count, 'patches': count.astype(jnp.float32),
             'images': jnp.sum(batch['mask']).astype(jnp.float32)}
      if 'accuracy' in metrics:
        out['accuracy'] = metrics['accuracy'] * count
      if colour:
        cells = targets if targets.ndim == 3 else targets[..., None]
        cell_weights = jnp.broadcast_to(weights[..., None], cells.shape)
        out['histogram'] = jnp.zeros(num_classes).at[cells.reshape(-1)].add(
            cell_weights.reshape(-1).astype(jnp.float32))
      return out

    self._sums = jax.jit(sums)

  def evaluate(self, params) -> dict:
    total = None
    with jax.set_mesh(self._mesh):
      for index, batch in enumerate(itertools.islice(self._batches(), self._limit)):
        s = self._sums(params, sharding.global_batch(batch, self._mesh), index)
        total = s if total is None else jax.tree.map(jnp.add, total, s)
    total = jax.device_get(total)
    count = max(float(total['patches']), 1.0)
    results = {'loss': float(total['loss']) / count, 'examples': float(total['images'])}
    if 'accuracy' in total:
      results['accuracy'] = float(total['accuracy']) / count
    if 'histogram' in total:
      hist = np.asarray(total['histogram'])
      results['majority_accuracy'] = float(hist.max() / max(hist.sum(), 1.0))
    return results

