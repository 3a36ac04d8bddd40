"""Learning-rate schedules and optimisers from `config.optimizer`."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def warmup_steps(opt: ml_collections.ConfigDict, total_steps: int) -> int:
  """The schedule's warmup: `opt.warmup_steps`, cut to the run's length when it is shorter."""
  return min(int(opt.warmup_steps), int(total_steps))


def learning_rate(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup to `learning_rate`, then cosine, linear (to 0), constant (paper §B.1) or
  rsqrt: peak * sqrt(w / (w + t)) at t steps after a warmup of w (big_vision's 'rsqrt' with
  its timescale at the warmup). rsqrt depends on no total length, so every checkpoint of one
  long run is the run of that length (the study's length curve, docs/study/protocol.md)."""
  peak, warmup = opt.learning_rate, warmup_steps(opt, total_steps)
  rest = max(total_steps - warmup, 1)
  timescale = max(warmup, 1)
  decay = {
      'cosine': lambda: optax.cosine_decay_schedule(peak, rest),
      'linear': lambda: optax.linear_schedule(peak, 0.0, rest),
      'constant': lambda: optax.constant_schedule(peak),
      'rsqrt': lambda: lambda t: peak * jnp.sqrt(timescale / (timescale + jnp.maximum(t, 0))),
  }[opt.decay]()
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params):
  """True for the leaves that weight decay applies to: every `kernel`, nothing else.

  As big_vision's `wd_mults=[('.*/kernel$', 1.0)]` (big_vision/optax.py): dense, attention and
  convolution kernels decay; biases, LayerNorm scales, the class token (`cls`), position
  embeddings (`pos_embedding`) and MPP's `mask_embedding` do not, although several of them have
  more than one dimension. Works on any params tree (dicts of arrays, boxed or not).
  """
  def is_kernel(path, _):  # The last dict key: a boxed leaf's path ends in its box's fields.
    keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return bool(keys) and keys[-1] == 'kernel'
  return jax.tree_util.tree_map_with_path(is_kernel, params)


def build(opt: ml_collections.ConfigDict, total_steps: int
          ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Adam with decoupled weight decay (pretraining) or SGD with momentum (fine-tuning), each
  after global-norm clipping, as in the paper's Appendix B."""
  schedule = learning_rate(opt, total_steps)
  parts = []
  if opt.grad_clip_norm and opt.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  if opt.name == 'adam':
    parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay,
                             mask=decay_mask))
  else:
    parts.append(optax.sgd(schedule, momentum=opt.momentum or None))
    if opt.weight_decay:
      parts.insert(-1, optax.add_decayed_weights(opt.weight_decay, decay_mask))
  return optax.chain(*parts), schedule
