"""Learning-rate schedules and optimisers from `config.optimizer`."""
from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup to `learning_rate`, then cosine, linear (to 0) or constant (paper §B.1)."""
  peak, warmup = opt.learning_rate, min(opt.warmup_steps, total_steps)
  rest = max(total_steps - warmup, 1)
  decay = {
      'cosine': optax.cosine_decay_schedule(peak, rest),
      'linear': optax.linear_schedule(peak, 0.0, rest),
      'constant': optax.constant_schedule(peak),
  }[opt.decay]
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def _decay_mask(params):
  # Weight decay on weight matrices and kernels only, not biases, norms or embeddings' scales.
  return jax.tree.map(lambda p: p.ndim > 1, params)


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
                             mask=_decay_mask))
  else:
    parts.append(optax.sgd(schedule, momentum=opt.momentum or None))
    if opt.weight_decay:
      parts.insert(-1, optax.add_decayed_weights(opt.weight_decay, _decay_mask))
  return optax.chain(*parts), schedule
