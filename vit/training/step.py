"""The train step: a pure function of (state, batch), shared by every objective.

An objective supplies `loss_fn(params, batch, rng, train) -> (loss, metrics)`; everything else
(micro-batching, clipping, the update, Polyak averaging, the non-finite guard) lives here once.
A float metric is a mean, averaged over a step's micro-batches; an integer metric is a count
(e.g. MAE's and SimMIM's int32 `masked_patches`), summed over them, so that either is the
whole step's whatever `optimizer.accumulation_steps` is.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from vit.training.state import TrainState

LossFn = Callable[[Any, dict, jax.Array, bool], tuple[jax.Array, dict]]


def _micro_batches(batch: dict, count: int) -> dict:
  # Row j*count + a goes to micro-batch a: each device keeps its own rows in every micro-batch,
  # so splitting needs no communication when the batch is sharded along its first axis.
  return jax.tree.map(lambda x: jnp.moveaxis(x.reshape(x.shape[0] // count, count,
                                                      *x.shape[1:]), 1, 0), batch)


def _grads(loss_fn: LossFn, params, batch, rng, accumulation_steps: int):
  grad_fn = jax.value_and_grad(lambda p, b, r: loss_fn(p, b, r, True), has_aux=True)
  if accumulation_steps == 1:
    (loss, metrics), grads = grad_fn(params, batch, rng)
    return loss, metrics, grads

  def accumulate(carry, micro):
    index, micro_batch = micro
    (loss, metrics), grads = grad_fn(params, micro_batch, jax.random.fold_in(rng, index))
    total = jax.tree.map(jnp.add, carry, (loss, metrics, grads))
    return total, None

  micro = _micro_batches(batch, accumulation_steps)
  shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng)
  (loss, metrics), grads = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  (loss, metrics, grads), _ = jax.lax.scan(
      accumulate, (loss, metrics, grads), (jnp.arange(accumulation_steps), micro))
  scale = 1.0 / accumulation_steps
  return loss * scale, jax.tree.map(lambda m: _step_metric(m, scale), metrics), jax.tree.map(
      lambda g: g * scale, grads)


def _step_metric(total: jax.Array, scale: float) -> jax.Array:
  # A count's sum over the micro-batches is the step's count; a mean's sum is scaled back.
  return total if jnp.issubdtype(total.dtype, jnp.integer) else total * scale


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, ema_decay: float = 0.0,
                    accumulation_steps: int = 1, skip_nonfinite: bool = False):
  """Returns `train_step(state, batch) -> (state, metrics)`, to be jitted with donated state."""

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    loss, metrics, grads = _grads(loss_fn, state.params, batch, rng, accumulation_steps)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None:
      ema = optax.incremental_update(params, ema, step_size=1.0 - ema_decay)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
    if skip_nonfinite:
      keep_old = lambda new_leaf, old_leaf: jnp.where(finite, new_leaf, old_leaf)
      new = jax.tree.map(keep_old, new, state.replace(step=state.step + 1))
      new = new.replace(skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32))
    # `finite` tells the loop which steps to stop at (or, when skipping, to leave out of the
    # logged means); `skipped_steps` is the running count the logs show.
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, learning_rate=schedule(state.step),
                   finite=finite.astype(jnp.float32), skipped_steps=new.skipped_steps)
    return new, metrics

  return train_step
