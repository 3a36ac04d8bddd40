"""The one training loop shared by mpp/ and supervised/.

An objective describes itself as a `Task` (model init, loss, data, evaluators); `train` does the
rest: mesh, sharded state creation, resume, the jitted step, logging, evaluation, checkpoints.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import signal
import tempfile
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from vit import atomic_write, checkpoints, class_names, sharding
from vit.errors import ConfigError, UserError, require_directory, write_reason
from vit.training import events, optimizers
from vit.training.sharded import Task, abstract_state, create_state, jit_train_step
from vit.training.state import TrainState

logger = logging.getLogger(__name__)


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
      # The schedule is float32: its shortest decimal (0.001, not 0.0010000000474974513).
      learning_rate_at_step_0=float(str(np.float32(schedule(0)))),
      warmup_steps=optimizers.warmup_steps(config.optimizer, config.total_steps),
      total_steps=int(config.total_steps),
  )
  logger.info('batch contract: %s', ', '.join(f'{k}={v}' for k, v in contract.items()))
  _warn_if_warmup_fills_run(config, schedule)
  if jax.process_index() == 0:
    path = os.path.join(workdir, 'batch_contract.json')
    with atomic_write.file(path) as partial, open(partial, 'w') as f:
      json.dump(contract, f, indent=2)
  return contract


def _warn_if_warmup_fills_run(config, schedule) -> None:
  """One warning when the warmup is as long as the run: the schedule cuts it to the run's
  length (optimizers.warmup_steps), so the learning rate rises from 0 for the whole run and the
  peak the config names is never used (a 1-step run trains at learning rate 0)."""
  configured, total = int(config.optimizer.warmup_steps), int(config.total_steps)
  if total <= 0 or configured < total:
    return
  logger.warning(
      'config.optimizer.warmup_steps=%d is not below config.total_steps=%d: the learning rate '
      'rises from 0 for the whole run and never reaches config.optimizer.learning_rate=%g (its '
      'last step trains at %.3g); shorten the warmup or lengthen the run', configured, total,
      float(config.optimizer.learning_rate), float(schedule(total - 1)))


def _check_workdir(workdir: str) -> None:
  """UserError naming --workdir when it is empty, a file, not writable, inside another run's
  checkpoints folder, or holds a `checkpoints` that is not a directory."""
  if not workdir.strip():
    raise UserError(f'--workdir {workdir!r}: empty; name the directory of the run')
  run = checkpoints.run_holding_checkpoints(workdir)
  if run is not None:
    # `--workdir runs/sup/checkpoints/600`, meant as "resume at step 600", started a new run
    # from scratch inside the saved step's folder.
    raise UserError(f'--workdir {workdir}: inside the checkpoints folder of the run {run}, '
                    f'which holds only its saved steps; to resume that run give --workdir {run} '
                    '(it resumes from its newest step), or start a new run elsewhere')
  try:
    os.makedirs(workdir, exist_ok=True)
    # A file of this process's own (no name at all with O_TMPFILE): two runs started at once
    # never remove each other's probe, and the second is refused by the lock, naming the first.
    with tempfile.TemporaryFile(dir=workdir) as probe:
      probe.write(b'ok')
      probe.flush()
  except OSError as e:
    if os.path.isfile(workdir):
      raise UserError(f'--workdir {workdir}: a file, not a directory') from None
    raise UserError(f'--workdir {workdir}: not writable ({write_reason(e)})') from None
  # Orbax would fail on it only after the lock, the batch contract and the events file exist.
  saved = os.path.join(workdir, 'checkpoints')
  if os.path.lexists(saved):
    require_directory(saved, saved)


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


class Trained(NamedTuple):
  """What `train` returns: the final state, and the metrics of the last evaluation this call
  ran, keyed as in TensorBoard ('eval/accuracy', 'eval_ema/accuracy' with config.ema_decay;
  floats; {} when the run was already complete and nothing was evaluated)."""
  state: TrainState
  metrics: dict[str, float]


def train(config: ml_collections.ConfigDict, workdir: str, task: Task) -> Trained:
  """Trains to `config.total_steps`, resuming from `workdir` when it holds a checkpoint.

  The mesh is the task's (the one its evaluators were built on), else `config.mesh`'s.
  Raises `checkpoints.Preempted` (exit status 0) after saving when SIGTERM/SIGINT arrives, and
  `NonFiniteError` when a step's loss or gradient norm is not finite (unless skipped), and a
  UserError naming the holder when another run holds `workdir` (`checkpoints.workdir_lock`).
  A checkpoint at or past `total_steps` trains nothing: one line says so, and it returns.
  Nothing is written into `workdir` (batch_contract.json, class_names.json, TensorBoard events)
  before a resume is accepted with steps left to train: a refused or finished rerun leaves every
  file as it was (only the lock file `.lock` names its latest holder).
  """
  _check_workdir(workdir)
  with checkpoints.workdir_lock(workdir):  # A second run on this workdir is refused.
    return _train(config, workdir, task)


def _train(config: ml_collections.ConfigDict, workdir: str, task: Task) -> Trained:
  _check_best_metric_source(config, task)
  mesh = task.mesh if task.mesh is not None else sharding.make_mesh(config.mesh)
  tx, schedule = optimizers.build(config.optimizer, config.total_steps)
  build, state_shardings = create_state(task, tx, config, mesh)
  mngr = checkpoints.manager(workdir, keep=config.keep_checkpoints,
                             best_metric=config.get('best_metric'),
                             best_mode=config.get('best_mode', 'max'))
  data_iter = iter(task.train_data)

  # Its line for a signal says when no step is left to stop at before the last (`_steps`).
  stop_signal = checkpoints.StopSignal(config.total_steps, sync_every=config.log_every)
  with jax.set_mesh(mesh), stop_signal as stop:
    writer = None
    try:
      state, start = _initial_state(mngr, data_iter, config, workdir, build, state_shardings)
      stop.start = start
      if start >= config.total_steps:
        _nothing_to_train(workdir, start, config.total_steps)
        return Trained(state, {})
      # Only now, the resume accepted and steps to train, does the run write into the workdir:
      # a refused rerun (another config, nothing left to train) leaves its files as they were.
      writer = _start_writing(config, workdir, task, mesh, schedule, mngr, start)
      run = _Run(config, workdir, task, mesh, mngr, data_iter, stop, writer)
      train_step = jit_train_step(task.loss_fn, tx, schedule, config, state_shardings, mesh)
      try:
        return _steps(run, train_step, state, start)
      except atomic_write.NotWritten as e:
        raise _output_failed(run, e) from None
    finally:
      # Whatever ends the loop (the last step, a signal, a non-finite step, an error), a save
      # in flight is completed: the last good checkpoint must be whole.
      try:
        checkpoints.wait_for_saves(mngr)
      finally:
        if writer is not None:
          writer.close()


def _start_writing(config, workdir: str, task: Task, mesh, schedule, mngr, start: int):
  """The files a training run keeps beside its checkpoints (batch_contract.json, the task's
  class_names.json) and its TensorBoard writer, which creates an events file at once (on the
  first process only). Its file marks a restart at step `start` + 1 (events.EventWriter's
  first_step): what a killed run logged past its last checkpoint, which the steps from there
  log again, is then read once, with the new values."""
  write_batch_contract(config, workdir, mesh, schedule)
  class_names.write_class_names(workdir, task.class_names)
  return checkpoints.stop_on_failed_write(
      events.EventWriter(workdir if jax.process_index() == 0 else None, first_step=start + 1),
      mngr, workdir)


def _output_failed(run: _Run, e: atomic_write.NotWritten) -> checkpoints.SaveFailed:
  """The stop for an output that a step could not write (a hook's picture, an evaluator's
  curve, an export; a full disk): one line naming it, the reason, the step and the last
  complete checkpoint, told once the save in flight has ended (its own failure is told
  instead, by `wait_for_saves`)."""
  checkpoints.wait_for_saves(run.mngr)
  return checkpoints.SaveFailed(run.mngr, None, run.step, e.reason, what=f'{e.path}: not written')


def _nothing_to_train(workdir: str, step: int, total_steps: int) -> None:
  # A finished run rerun (or total_steps lowered) trains no step: said, not silently done.
  logger.info('note: workdir %s already holds step %d >= total_steps %d; nothing to train '
              '(raise --config.total_steps to continue)', workdir, step, total_steps)


@dataclasses.dataclass
class _Run:
  """What the steps of one run share."""
  config: ml_collections.ConfigDict
  workdir: str
  task: Task
  mesh: Any
  mngr: Any
  data_iter: Any
  stop: checkpoints.StopSignal
  writer: Any
  step: int = 0  # The step under way.


def _initial_state(mngr, data_iter, config, workdir: str, build, state_shardings
                   ) -> tuple[TrainState, int]:
  if mngr.latest_step() is None:
    checkpoints.tell_interrupted(mngr, workdir, 0)
    return build(), 0
  # The abstract state of a fresh init: resuming never needs the fine-tuning source weights.
  abstract = abstract_state(jax.eval_shape(lambda: build(pretrained=False)), state_shardings)
  state, start = checkpoints.resume(mngr, abstract, data_iter, config)
  checkpoints.tell_interrupted(mngr, workdir, start)
  init = config.get('init')  # A fine-tune's origin, the same as its saved config's.
  logger.info('resumed from %s at step %d%s', workdir, start,
              f' (initialised from {init})' if init else '')
  return state, start


def _steps(run: _Run, train_step, state: TrainState, start: int) -> Trained:
  config, task = run.config, run.task
  last_eval = {}
  progress = _Progress(config.total_steps, start, config.batch_size)
  window = _Window(skip_nonfinite=config.get('skip_nonfinite_steps', False))
  in_flight = _InFlight(_STEPS_IN_FLIGHT)
  for step in range(start + 1, config.total_steps + 1):
    run.step = step
    batch = sharding.global_batch(next(run.data_iter), run.mesh)
    state, metrics = train_step(state, batch)
    in_flight.add(metrics)
    window.add(step, metrics)
    # Every process asks at every step (the multi-host agreement needs it); a signal during
    # the last step changes nothing, that step's save is the final one anyway (and a stop
    # there would leave a run that a rerun finds complete, never evaluated at its end).
    sync = bool(config.log_every) and step % config.log_every == 0
    checkpoints.check_saves(run.mngr, step, sync)  # A failed save stops the run here.
    stopping = run.stop.should_stop(step, sync=sync)
    stopping = stopping and step < config.total_steps
    due = _due(config, task, step, stopping)
    if any(due.values()):
      window.fetch()  # Raises on a non-finite step before it is logged, evaluated or saved.
    if due['log']:
      _log(run.writer, progress, step, config.total_steps, window.summary())
    if due['hook']:
      task.periodic_hook(state, step, run.writer)
    eval_metrics = _evaluate(task.evaluators, state, step, run.writer) if due['eval'] else None
    if due['save']:
      checkpoints.save(run.mngr, step, state, run.data_iter, config, eval_metrics)
    if eval_metrics is not None:
      _check_best_metric(config, eval_metrics)  # After the save: a typo loses no training.
      last_eval = eval_metrics
    if stopping:
      checkpoints.wait_for_saves(run.mngr)
      logger.info('stopped after step %d (%s); saved %s/%d; rerun the same command to resume',
                  step, _signal_name(run.stop), run.mngr.directory, step)
      raise checkpoints.Preempted(step)
  return Trained(state, last_eval)


def _due(config, task: Task, step: int, stopping: bool) -> dict[str, bool]:
  """What happens after `step`; any of it needs the step's metrics on the host first."""
  last = step == config.total_steps
  every = lambda n: bool(n) and step % n == 0
  return dict(log=every(config.log_every) or last or stopping,
              hook=bool(task.periodic_hook) and (every(task.hook_every) or last),
              eval=(every(config.eval_every) or last) and not stopping,
              save=every(config.checkpoint_every) or last or stopping)


def _check_best_metric_source(config, task: Task) -> None:
  """Before training: a `best_metric` that no evaluator of the run can produce (its prefix
  names none of them, nothing is evaluated, or the evaluator's `metric_names` lack it) would
  only be found after the first evaluation, which with eval_every=0 is the last step. An
  evaluator that states no `metric_names` has the metric's own name checked then."""
  best = config.get('best_metric')
  if not best:
    return
  sources = [(f'{ev.name}/', ev) for ev in task.evaluators]
  if config.get('ema_decay'):
    sources += [(f'{ev.name}_ema/', ev) for ev in task.evaluators]
  matches = [(p, ev) for p, ev in sources if best.startswith(p)]
  if not matches:
    raise ConfigError('best_metric', best, 'names no evaluation of this run: its metrics are '
                      + (', '.join(p + '...' for p, _ in sources) or
                         f'none (it evaluates nothing{_evaluations_off(config)})'))
  prefix, ev = max(matches, key=lambda m: len(m[0]))
  names = getattr(ev, 'metric_names', None)
  if names is not None and best[len(prefix):] not in names:
    raise ConfigError('best_metric', best, 'not among the metrics of this run\'s evaluation '
                      + ', '.join(prefix + n for n in names))


def _evaluations_off(config) -> str:
  """': mae.eval_examples=0', the objective section's key that turned its evaluation off
  (and fewshot.enabled, off), for the message of a best_metric no evaluation makes; '' when
  no section has one."""
  off = [f'{name}.eval_examples=0' for name, section in config.items()
         if isinstance(section, ml_collections.ConfigDict)
         and section.get('eval_examples', None) == 0]
  return f': {off[0]} and fewshot.enabled=False' if off else ''


def _check_best_metric(config, eval_metrics: dict) -> None:
  best = config.get('best_metric')
  if best and best not in eval_metrics:
    raise ConfigError('best_metric', best, 'not among the evaluation metrics: '
                      + (', '.join(sorted(eval_metrics)) or 'none'))


def _signal_name(stop: checkpoints.StopSignal) -> str:
  return signal.Signals(stop.received).name if stop.received else 'preemption notice'


class NonFiniteError(FloatingPointError):
  """A step's loss or gradient norm was not finite, and config.skip_nonfinite_steps is off; the
  message names the step and the values, `step` keeps it. `vit.cli.run` prints it in one line,
  exit status 3."""

  def __init__(self, step: int, metrics: dict):
    bad = [f'{k}={float(metrics[k])}' for k in ('loss', 'grad_norm')
           if not np.isfinite(metrics[k])] or ['finite=0']
    super().__init__(f'step {step}: non-finite {", ".join(bad)}; set '
                     'config.skip_nonfinite_steps=True to skip such steps')
    self.step = step


# Steps the host may dispatch ahead of the device. Unbounded, the host ran up to the next log
# step ahead (every step with log_every=0), each queued step holding its batch, and a stop
# signal waited for all of them before its save: SIGTERM to exit 8.2 s unbounded, 1.9 s with
# this bound (configs/mae/fashion_mnist.py, log_every=0, the loaded 2-core CPU), and more for
# a large model within a preemption's grace period. Two keep the device fed: one step runs
# while the next waits, dispatched.
_STEPS_IN_FLIGHT = 2


class _InFlight:
  """The outputs of the last steps dispatched; `add` waits, once more than `limit` are held,
  for the oldest to be computed."""

  def __init__(self, limit: int):
    self.limit, self.queue = limit, collections.deque()

  def add(self, outputs) -> None:
    self.queue.append(outputs)
    if len(self.queue) > self.limit:
      jax.block_until_ready(self.queue.popleft())


class _Window:
  """The step metrics since the last log line, moved to the host only when something needs
  them (a log, evaluation, hook or save step), so the loop does not sync every step."""

  def __init__(self, skip_nonfinite: bool):
    self.skip_nonfinite = skip_nonfinite
    self.on_device: list[tuple[int, dict]] = []
    self.on_host: list[dict] = []

  def add(self, step: int, metrics: dict) -> None:
    self.on_device.append((step, metrics))

  def fetch(self) -> None:
    fetched = jax.device_get([m for _, m in self.on_device])
    steps = [s for s, _ in self.on_device]
    self.on_device = []
    for step, m in zip(steps, fetched):
      if not m['finite'] and not self.skip_nonfinite:
        raise NonFiniteError(step, m)
    self.on_host += fetched

  def summary(self) -> dict[str, float]:
    """Means over the steps that were applied; skipped (non-finite) steps only count."""
    applied = [m for m in self.on_host if m['finite']]
    keys = [k for k in self.on_host[-1] if k not in ('finite', 'skipped_steps')]
    scalars = {k: float(np.mean([m[k] for m in applied])) for k in keys} if applied else {}
    scalars['skipped_steps'] = float(self.on_host[-1]['skipped_steps'])
    self.on_host = []
    return scalars


def _log(writer, progress: _Progress, step: int, total: int, scalars: dict) -> None:
  images_per_s, eta = progress.rate(step)
  scalars['images_per_s'] = images_per_s
  writer.write_scalars(step, scalars)
  shown = ' '.join(f'{k} {v:.4g}' for k, v in scalars.items()
                   if k != 'skipped_steps' or v > 0)
  logger.info('step %d/%d %s eta %.0fs', step, total, shown, eta)


def _evaluate(evaluators, state: TrainState, step: int, writer) -> dict:
  results = {}
  for ev in evaluators:
    results.update({f'{ev.name}/{k}': v for k, v in ev.evaluate(state.params).items()})
    if state.ema_params is not None:
      results.update({f'{ev.name}_ema/{k}': v for k, v in ev.evaluate(state.ema_params).items()})
  if results:
    writer.write_scalars(step, results)
    logger.info('eval step %d: %s', step, ' '.join(f'{k} {v:.4f}' for k, v in results.items()))
  return results
