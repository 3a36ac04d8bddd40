"""One train step of an objective, for tests of what the step reports (its metrics)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit.training import step as step_lib
from vit.training.state import TrainState


def one_step_metrics(objective, batch: dict[str, np.ndarray], accumulation_steps: int = 1
                     ) -> dict[str, jax.Array]:
  """The metrics of one jitted train step of `objective` (its `init_params` and `loss`, as the
  trainers build them) on `batch`, at learning rate 0 (plain SGD), split into
  `accumulation_steps` micro-batches by vit.training.step as a trainer would; scalars as the
  step returns them (float means, integer counts)."""
  params = nn.unbox(jax.jit(objective.init_params)(jax.random.key(0)))
  tx = optax.sgd(0.0)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     ema_params=None, rng=jax.random.key_data(jax.random.key(1)),
                     skipped_steps=jnp.zeros((), jnp.int32))
  train_step = jax.jit(step_lib.make_train_step(
      objective.loss, tx, optax.constant_schedule(0.0), accumulation_steps=accumulation_steps))
  return train_step(state, batch)[1]
