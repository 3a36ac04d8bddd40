"""The train state: everything a step changes, as one pytree."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  """Everything a train step changes, as one pytree (the loop donates it to each step): the step,
  parameters, optimiser state, Polyak average, base key and count of skipped steps."""
  step: jax.Array          # int32 scalar: optimiser updates applied so far.
  params: Any
  opt_state: Any
  ema_params: Any          # Polyak average of params; None when config.ema_decay == 0.
  rng: jax.Array           # Base key; step keys are fold_in(rng, step), so resuming is exact.
  skipped_steps: jax.Array  # int32 scalar: non-finite steps skipped (skip_nonfinite_steps).
