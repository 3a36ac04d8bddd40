"""The one training loop shared by mpp/ and supervised/.

An objective describes itself as a `Task` (model init, loss, data, evaluators); `train` does the
rest: mesh, sharded state creation, resume, the jitted step, logging, evaluation, checkpoints.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import metric_writers

from vit import checkpoints, sharding
from vit.errors import UserError
from vit.training import optimizers, step as step_lib
from vit.training.state import TrainState


@dataclasses.dataclass
class Task:
  """What an objective contributes to the shared loop."""
  init_params: Callable[[jax.Array], Any]  # rng -> params (may be LogicallyPartitioned-boxed)
  loss_fn: step_lib.LossFn
  train_data: Any                          # a grain IterDataset of per-process batches
  evaluators: Sequence[Any] = ()           # objects with .name and .evaluate(params, step)
  # Fine-tuning: maps freshly initialised host params to the ones to start from.
  load_params: Optional[Callable[[Any], Any]] = None
  # Called with (state, step, writer) every `hook_every` steps, e.g. MPP's image grids.
  periodic_hook: Optional[Callable[[TrainState, int, Any], None]] = None
  hook_every: int = 0


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

  def build() -> TrainState:
    if task.load_params is None:
      return jax.jit(init, out_shardings=state_shardings)()
    host = task.load_params(jax.device_get(params_abstract))
    params = jax.device_put(host, param_shardings)
    return jax.jit(init, out_shardings=state_shardings)(params)

  return build, state_shardings


def _abstract(state_fn_shapes, shardings):
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


def write_batch_contract(config, workdir: str, mesh, schedule) -> dict:
  """Global vs per-process vs per-device batch and the learning rate: stated once, up front."""
  accum = config.optimizer.accumulation_steps
  data_parallel = mesh.shape['data'] * mesh.shape['fsdp']
  contract = dict(
      global_batch=config.batch_size,
      processes=jax.process_count(),
      per_process_batch=config.batch_size // jax.process_count(),
      devices=jax.device_count(),
      mesh=dict(mesh.shape),
      micro_batches_per_step=accum,
      per_device_micro_batch=config.batch_size // accum // data_parallel,
      peak_learning_rate=float(config.optimizer.learning_rate),
      learning_rate_at_step_0=float(schedule(0)),
      warmup_steps=int(config.optimizer.warmup_steps),
      total_steps=int(config.total_steps),
  )
  logging.info('batch contract: %s', json.dumps(contract))
  print('batch contract:', ', '.join(f'{k}={v}' for k, v in contract.items()), flush=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'batch_contract.json'), 'w') as f:
      json.dump(contract, f, indent=2)
  return contract


def _check_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_probe_{jax.process_index()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise UserError(f'--workdir {workdir}: not writable ({e.strerror})') from None


class _Progress:
  """Console line with step, rate and ETA; host sync only every `log_every` steps."""

  def __init__(self, total: int, start: int, batch: int):
    self.total, self.batch = total, batch
    self.last_time, self.last_step, self.t0, self.s0 = time.time(), start, time.time(), start

  def rate(self, step: int) -> tuple[float, float]:
    now = time.time()
    images_per_s = (step - self.last_step) * self.batch / max(now - self.last_time, 1e-9)
    steps_per_s = (step - self.s0) / max(now - self.t0, 1e-9)
    eta = (self.total - step) / max(steps_per_s, 1e-9)
    self.last_time, self.last_step = now, step
    return images_per_s, eta


def train(config: ml_collections.ConfigDict, workdir: str, task: Task) -> TrainState:
  _check_workdir(workdir)
  mesh = sharding.make_mesh(config.mesh)
  tx, schedule = optimizers.build(config.optimizer, config.total_steps)
  build, state_shardings = create_state(task, tx, config, mesh)
  mngr = checkpoints.manager(workdir, keep=config.keep_checkpoints)
  data_iter = iter(task.train_data)
  write_batch_contract(config, workdir, mesh, schedule)

  with mesh:
    if mngr.latest_step() is not None:
      abstract = _abstract(jax.eval_shape(build), state_shardings)
      state, start = checkpoints.restore(mngr, abstract, data_iter)
      logging.info('resumed from step %d', start)
      print(f'resumed from {workdir} at step {start}', flush=True)
    else:
      state, start = build(), 0

    train_step = jit_train_step(task.loss_fn, tx, schedule, config, state_shardings, mesh)

    writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=True)
    progress = _Progress(config.total_steps, start, config.batch_size)
    pending = []
    for step in range(start + 1, config.total_steps + 1):
      batch = sharding.global_batch(next(data_iter), mesh)
      state, metrics = train_step(state, batch)
      pending.append(metrics)
      last = step == config.total_steps
      if step % config.log_every == 0 or last:
        _log(writer, progress, step, config.total_steps, pending)
        pending = []
      if task.periodic_hook and task.hook_every and (step % task.hook_every == 0 or last):
        task.periodic_hook(state, step, writer)
      eval_metrics = None
      if (config.eval_every and step % config.eval_every == 0) or last:
        eval_metrics = _evaluate(task.evaluators, state, step, writer)
      if (config.checkpoint_every and step % config.checkpoint_every == 0) or last:
        checkpoints.save(mngr, step, state, data_iter, config, eval_metrics)
    mngr.wait_until_finished()
    writer.flush()
  return state


def _log(writer, progress: _Progress, step: int, total: int, pending: list) -> None:
  host = jax.device_get(pending)  # The loop's only host sync outside evaluation.
  scalars = {k: float(np.mean([m[k] for m in host])) for k in host[-1]}
  if not all(np.isfinite(v) for v in scalars.values()):
    bad = sorted(k for k, v in scalars.items() if not np.isfinite(v))
    raise FloatingPointError(f'non-finite {", ".join(bad)} by step {step}')
  images_per_s, eta = progress.rate(step)
  scalars['images_per_s'] = images_per_s
  writer.write_scalars(step, scalars)
  shown = ' '.join(f'{k} {v:.4g}' for k, v in scalars.items() if k not in ('finite',))
  print(f'step {step}/{total} {shown} eta {eta:.0f}s', flush=True)


def _evaluate(evaluators, state: TrainState, step: int, writer) -> dict:
  results = {}
  for ev in evaluators:
    results.update({f'{ev.name}/{k}': v for k, v in ev.evaluate(state.params).items()})
    if state.ema_params is not None:
      results.update({f'{ev.name}_ema/{k}': v for k, v in ev.evaluate(state.ema_params).items()})
  if results:
    writer.write_scalars(step, results)
    print(f'eval step {step}: ' + ' '.join(f'{k} {v:.4f}' for k, v in results.items()),
          flush=True)
  return results
