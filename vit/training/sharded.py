"""The train state born sharded and the step jitted with the same shardings.

What a trainer compiles, without the loop's input, logging and checkpoint machinery: so that
`vit.plan` and the benchmarks compile exactly the trainers' step while importing only jax, flax
and optax (a GPU or TPU host needs no TensorFlow, grain or clu to measure it).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vit import sharding
from vit.training import step as step_lib
from vit.training.state import TrainState


@dataclasses.dataclass(frozen=True)
class Task:
  """What an objective contributes to the shared loop (change one with dataclasses.replace).

  Usually from a `vit.objective.Objective`: init_params=obj.init_params, loss_fn=obj.loss.
  """
  init_params: Callable[[jax.Array], Any]  # rng -> params (may be LogicallyPartitioned-boxed)
  loss_fn: step_lib.LossFn
  train_data: Any                          # a grain IterDataset of per-process batches
  evaluators: Sequence[Any] = ()           # objects with .name and .evaluate(params) -> dict
  # Fine-tuning: maps freshly initialised host params to the ones to start from.
  load_params: Optional[Callable[[Any], Any]] = None
  # Called with (state, step, writer) every `hook_every` steps, e.g. MPP's image grids.
  periodic_hook: Optional[Callable[[TrainState, int, Any], None]] = None
  hook_every: int = 0
  # The mesh the evaluators were built on; the loop trains on it (None: config.mesh's).
  mesh: Optional[jax.sharding.Mesh] = None
  # A classifier's label names, stored as WORKDIR/class_names.json (vit.class_names) when the
  # run starts training: never by a run that is refused or has nothing left to train.
  class_names: Optional[Sequence[str]] = None


def create_state(task: Task, tx, config: ml_collections.ConfigDict, mesh
                 ) -> tuple[Callable[[], TrainState], Any]:
  """A jitted init whose outputs are born sharded, and the state's shardings."""
  rng = jax.random.key(config.seed)
  boxed = jax.eval_shape(task.init_params, rng)
  param_shardings = sharding.logical_shardings(boxed, mesh)
  params_abstract = nn.unbox(boxed)
  opt_abstract = jax.eval_shape(tx.init, params_abstract)
  use_ema = config.ema_decay > 0
  state_shardings = TrainState(
      step=sharding.replicated(mesh),
      params=param_shardings,
      opt_state=sharding.like_params(opt_abstract, params_abstract, param_shardings, mesh),
      ema_params=param_shardings if use_ema else None,
      rng=sharding.replicated(mesh),
      skipped_steps=sharding.replicated(mesh),
  )

  def init(params=None):
    if params is None:
      params = nn.unbox(task.init_params(rng))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=params if use_ema else None,
                      rng=jax.random.key_data(jax.random.fold_in(rng, 1)),
                      skipped_steps=jnp.zeros((), jnp.int32))

  def build(pretrained: bool = True) -> TrainState:
    init_fn = jax.jit(init, out_shardings=state_shardings)
    if task.load_params is None or not pretrained:
      state = init_fn()
    else:
      host = task.load_params(jax.device_get(params_abstract))
      state = init_fn(jax.device_put(host, param_shardings))
    # The init program runs once; its compiled code need not stay resident through training
    # (about 100 MiB for ViT-Ti/16 on a CPU, docs/performance.md).
    init_fn.clear_cache()
    return state

  return build, state_shardings


def abstract_state(state_fn_shapes, shardings):
  """Shape-only stand-ins of a state, each leaf carrying its sharding (restore targets)."""
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      state_fn_shapes, shardings)


def jit_train_step(loss_fn, tx, schedule, config, state_shardings, mesh):
  """The step as every trainer runs it (and vit.plan compiles it): sharded, state donated."""
  return jax.jit(
      step_lib.make_train_step(loss_fn, tx, schedule, ema_decay=config.ema_decay,
                               accumulation_steps=config.optimizer.accumulation_steps,
                               skip_nonfinite=config.get('skip_nonfinite_steps', False)),
      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=0)
