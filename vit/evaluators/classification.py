"""Top-1 accuracy over an evaluation split, every example counted exactly once."""
from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp

from vit import sharding


class ClassificationEvaluator:
  """`batches()` yields padded batches with a `mask`; padding rows never count."""

  metric_names = ('accuracy', 'examples')  # What `evaluate` returns, known before training.

  def __init__(self, logits_fn: Callable, batches: Callable[[], Iterable[dict]], mesh,
               name: str = 'eval'):
    self.name, self._batches, self._mesh = name, batches, mesh

    def counts(params, batch):
      logits = logits_fn(params, batch)
      correct = (jnp.argmax(logits, -1) == batch['label']) & batch['mask']
      return jnp.sum(correct), jnp.sum(batch['mask'])

    self._counts = jax.jit(counts)

  def evaluate(self, params) -> dict:
    correct = total = 0
    with jax.set_mesh(self._mesh):
      for batch in self._batches():
        c, n = self._counts(params, sharding.global_batch(batch, self._mesh))
        correct, total = correct + c, total + n
    correct, total = int(jax.device_get(correct)), int(jax.device_get(total))
    return {'accuracy': correct / max(total, 1), 'examples': float(total)}
