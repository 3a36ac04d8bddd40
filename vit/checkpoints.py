"""Orbax checkpoints of the train state, the grain iterator state and the config; the policy of
what is kept, what is restored, and when a run stops early.

A step directory holds three items: `state` (params, optimiser state, EMA, step, rng, skipped
steps), `data` (the grain iterator's position, so a resumed run sees exactly the batches it would
have seen) and `config` (JSON), and the size and CRC-32 of each of their files (`checksums.json`,
vit/step_checksums.py), which every read checks after orbax's. Orbax writes a step into a temporary
directory and renames it when complete, so a partly written checkpoint (a save cut by `kill -9`) is
never listed; the temporary directories it leaves are removed when the next run opens the manager,
which says so (`tell_interrupted`; a reader names them too, and removes nothing).

Kept: the last `keep` steps (for resuming) plus the best one by `best_metric` (for using).

A save runs in the background while training goes on. `check_saves`, called at every step,
stops the run at the first step after a save failed on any OSError (a full disk, no permission,
a read-only or failing volume): `SaveFailed` names the step, the reason and the last complete
checkpoint; orbax's own tracebacks of that failure (from its threads, and at shutdown) are not
printed. A checkpoints folder that cannot take the next step's directory stops the run at that
save (`_check_writable`). With several processes, a save that failed on one of them only (its
own disk) stops them all at one step too: vit/save_barrier.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import gc
import glob
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
import warnings
from typing import Any, Callable, Iterator, NamedTuple, Optional

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
# The coordination service's client, which jax does not export (as in vit/save_barrier.py).
from jax._src import distributed
from orbax.checkpoint import checkpoint_managers as policies

import vit
from vit import atomic_write, config as config_lib, save_barrier, step_checksums
from vit.errors import UserError

logger = logging.getLogger(__name__)

# Config keys that can shape the saved state (its arrays' shapes, the optimiser's and the EMA's
# trees). When a checkpoint does not fit, the error names these as the cause, after a changed
# objective and before the objective section's own keys; the other keys (lengths, intervals, the
# data pipeline, the learning rate, the mesh) change no array and are named only when none of
# these changed. Resuming with any key changed but a fitting state is allowed, and noted.
_STATE_SHAPING = ('image_size', 'data.channels', 'model.', 'ema_decay', 'optimizer.name',
                  'optimizer.momentum', 'optimizer.grad_clip_norm', 'optimizer.weight_decay')
# Model keys of arithmetic only: the same parameters whatever their values.
_MODEL_ARITHMETIC = ('model.transformer.dropout_rate', 'model.transformer.attention_dropout_rate',
                     'model.gelu_approximate', 'model.layer_norm', 'model.pixels.',
                     'model.attention_kernel', 'model.dtype', 'model.remat')


def _metric_fn(best_metric: str, best_mode: str):
  # Checkpoints saved without an evaluation rank last, so only evaluated steps can be "best".
  worst = -math.inf if best_mode == 'max' else math.inf
  return lambda metrics: float((metrics or {}).get(best_metric, worst))


class DataIteratorHandler(grain.checkpoint.CheckpointHandler):
  """grain's orbax handler (the same files: `data/process_I-of-N.json`, one per process) whose
  restore also reads a checkpoint saved by another process count.

  This process's own file restores as grain does (an iterator from `pipeline.train_dataset`
  also takes another worker count). When the process count changed, there is no such file: an
  iterator that can re-derive its position (`iterator_state.LayoutIterator.resume_from`) gets
  every saved process's state; any other iterator is a `UserError` naming both counts.
  Raises ValueError when the saved files are incomplete (a damaged checkpoint).
  """

  def restore(self, directory: epath.Path, item=None, args=None):
    item = item or args.item
    index, count = jax.process_index(), jax.process_count()
    own = directory / f'process_{index}-of-{count}.json'
    if own.exists():
      item.set_state(json.loads(own.read_text()))
    else:
      states = _saved_iterator_states(directory)
      if not hasattr(item, 'resume_from'):
        raise UserError(
            f'{directory}: the data iterator was saved by {len(states)} processes and this run '
            f'has {count}; this task\'s iterator restores only into as many processes: resume '
            f'with {len(states)} processes')
      item.resume_from(states)
    # Unlike grain's handler, no `start_prefetch` here: a fallback to an older step sets the
    # state again, and grain 0.2.18's workers, once started, can hang on a later `set_state`
    # (seen: start_prefetch, a few seconds, set_state, then next() never returned). `resume`
    # starts them once a step has restored.
    return item


def _saved_iterator_states(directory: epath.Path) -> list[dict]:
  """Every process's saved iterator state, in process order."""
  names = {p.name: p for p in directory.glob('process_*-of-*.json')}
  counts = {int(n.rsplit('-of-', 1)[1][:-len('.json')]) for n in names}
  if len(counts) != 1:
    raise ValueError(f'{directory}: expected the iterator states of one process count, found '
                     f'{sorted(names) or "none"}')
  count, = counts
  missing = [f'process_{i}-of-{count}.json' for i in range(count)
             if f'process_{i}-of-{count}.json' not in names]
  if missing:
    raise ValueError(f'{directory}: {", ".join(missing)} missing')
  return [json.loads(names[f'process_{i}-of-{count}.json'].read_text()) for i in range(count)]


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
  """orbax args that save `item`, a grain iterator's state, with `DataIteratorHandler`."""
  item: Any


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
  """orbax args that restore `item`, a grain iterator, in place with `DataIteratorHandler`, also
  from a checkpoint saved by another process count."""
  item: Any


class Manager(ocp.CheckpointManager):
  """orbax's manager, which also remembers the step whose save is still in flight and, with
  several processes, publishes this process's failed save before orbax waits for the others.

  orbax's finalize thread runs `_finalize(step, ...)`: it waits for the save's writes
  (`_wait_for_checkpointers`, which raises their error) and then at a barrier of all processes.
  A write that failed (any OSError: `atomic_write.failure_reason`) is published in between, so
  that no process waits for this one (vit/save_barrier.py). These two are orbax 0.12's own
  methods, overridden.
  """
  pending: Optional[int] = None
  # The saves that a killed or crashed run left unfinished when this manager opened (`manager`,
  # before orbax's clean-up removes them): (step, folder), newest first.
  interrupted: tuple[tuple[int, str], ...] = ()
  # Several processes: this one's failed save (step, reason), set by the finalize thread (or by
  # `_check_writable`) and kept until the loop's next sync step or save.
  failed: Optional[tuple[int, str]] = None
  reported: bool = False  # A SaveFailed was raised: a failure seen later is the same one.
  barriers: Optional[save_barrier.Barriers] = None  # Several processes.
  _finalizing: Optional[int] = None

  def _finalize(self, step: int, steps_to_remove: list[int]):
    self._finalizing = step
    super()._finalize(step, steps_to_remove)
    if jax.process_index() == 0:
      _write_checksums(os.path.join(str(self.directory), str(step)))

  def _get_metrics(self, step: int):
    """orbax 0.12's own method (the metrics saved with a step, read for every step when the
    manager opens), which raised the JSON parser's traceback from every trainer and reader of a
    `best_metric` run when a step's `metrics/metrics` was cut short or overwritten. A metrics
    file that does not read, or differs from its saved CRC-32 (a best step that is not), is no
    metrics here; the step and the reason are kept in `damaged_metrics` (`manager` moves such
    steps aside in a run, as `resume` does)."""
    try:
      metrics = super()._get_metrics(step)
      if metrics is not None:
        step_checksums.check(os.path.join(str(self.directory), str(step)), under='metrics')
      return metrics
    except Exception as e:  # noqa: BLE001 (JSON, TensorStore and OS errors alike)
      step_dir = os.path.join(str(self.directory), str(step))
      self.__dict__.setdefault('damaged_metrics', {})[step] = unreadable_reason(step_dir, e)
      return None

  def close(self):
    """orbax's close, which also waits for the clean-up of unfinished step folders
    (`*.orbax-checkpoint-tmp`) that a writable manager starts in a background thread when it
    opens: orbax's own close does not, so a manager closed before its first save left that
    thread running, and a folder could still be there after the close returned. A clean-up
    that fails (no permission) is one warning naming the folder: what was saved is intact."""
    try:
      self._maybe_await_cleanup_tmp_directory()  # orbax 0.12's own method.
    except Exception as e:
      reason = atomic_write.failure_reason(e)
      if reason is None:
        raise
      logger.warning('could not remove the unfinished checkpoint folders in %s (%s)',
                     self.directory, reason)
    super().close()

  def restore(self, step, *args, **kwargs):
    """orbax's restore, which ends at a barrier of all processes, reached here even when this
    process's reading failed (a damaged file that only it reads, e.g. its data iterator's):
    the error is raised after the barrier, so that the others are not left waiting there, or
    matched with a later restore of another step (`resume` then agrees on the outcome)."""
    if jax.process_count() == 1:
      return super().restore(step, *args, **kwargs)
    checkpointer, failed = self._checkpointer, []  # orbax 0.12's own attribute and method.
    read = checkpointer._restore

    def read_or_fail(directory, args):
      try:
        return read(directory, args=args)
      except Exception as e:
        failed.append(e)
        return None

    checkpointer._restore = read_or_fail
    try:
      restored = super().restore(step, *args, **kwargs)
    finally:
      del checkpointer._restore  # The class's method again.
    if failed:
      raise failed[0]
    return restored

  def _wait_for_checkpointers(self):
    try:
      super()._wait_for_checkpointers()
    except Exception as e:
      reason = atomic_write.failure_reason(e)
      if reason is not None and self.barriers is not None:
        self.barriers.publish(self._finalizing, reason)
        self.failed = (self._finalizing, reason)  # After: the others find the reason published.
      raise


def _write_checksums(step_dir: str) -> None:
  """The complete step's `checksums.json` (vit/step_checksums.py). A step that cannot have one
  (a full disk) is complete all the same and reads unchecked: one warning line says so, and
  the run goes on (the next save meets the same disk and stops the run if it fails)."""
  if not os.path.isdir(step_dir):  # Removed meanwhile (by another manager's retention).
    return
  try:
    step_checksums.write(step_dir)
  except (OSError, atomic_write.NotWritten) as e:
    reason = (e.reason if isinstance(e, atomic_write.NotWritten)
              else atomic_write.failure_reason(e) or _one_line(e))
    logger.warning('no %s for the checkpoint %s (%s); the step is complete and will be read '
                   'without that check', step_checksums.FILE, step_dir,
                   reason.replace(step_dir + os.sep, ''))


def manager(workdir: str, *, keep: int = 3, best_metric: Optional[str] = None,
            best_mode: str = 'max', read_only: bool = False) -> Manager:
  """The `Manager` of WORKDIR/checkpoints, with the items `state`, `data` and `config`.

  Keeps the last `keep` steps plus the best one by the evaluation metric `best_metric`
  (highest or lowest by `best_mode`, 'max' or 'min'; a step saved without that metric ranks
  last). With several processes their saves meet at a barrier (vit/save_barrier.py).
  `read_only` (a reader of the run's weights): it creates, deletes and cleans up nothing.
  """
  keep_policy = [policies.LatestN(n=keep)]
  if best_metric:
    keep_policy.append(policies.BestN(get_metric_fn=_metric_fn(best_metric, best_mode),
                                      reverse=best_mode == 'min', n=1,
                                      keep_checkpoints_without_metrics=False))
  # A reader never saves, so it never deletes; orbax's own read_only mode would only add
  # warnings on every use.
  directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  barriers = (save_barrier.Barriers(directory) if jax.process_count() > 1 and not read_only
              else None)
  options = ocp.CheckpointManagerOptions(
      preservation_policy=None if read_only else policies.AnyPreservationPolicy(keep_policy),
      best_fn=_metric_fn(best_metric, best_mode) if best_metric else None,
      best_mode=best_mode,
      cleanup_tmp_directories=not read_only,
      enable_async_checkpointing=not read_only,
      create=not read_only,
      async_options=ocp.AsyncOptions(barrier_sync_fn=barriers) if barriers else None,
  )
  handlers = {'state': ocp.StandardCheckpointHandler(),
              'data': DataIteratorHandler(),
              'config': ocp.JsonCheckpointHandler()}
  if not read_only:
    _quiet_failed_saves()
  _quiet_abandoned_reads()
  # Seen before the manager opens: a writable one removes them at once, in a background thread.
  interrupted = () if read_only else interrupted_saves(directory)
  mngr = Manager(directory, options=options, item_handlers=handlers)
  mngr.barriers, mngr.interrupted = barriers, interrupted
  if not read_only:  # A reader reads no metrics; a damaged newest step it skips by its CRC-32s.
    for step, reason in sorted(mngr.__dict__.pop('damaged_metrics', {}).items()):
      # Unranked, retention would delete it at the next save: kept aside instead.
      logger.warning('checkpoint %s/%d is unreadable (%s); moved it to %s', directory, step,
                     reason, _move_aside(mngr, step))
  return mngr


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_iterator,
         config: ml_collections.ConfigDict, metrics: Optional[dict] = None) -> None:
  """Starts an asynchronous save; the device->host copy happens before this returns, so the
  caller may donate `state` to the next step. A step already on disk is not written again.
  SaveFailed when the previous save failed, or the checkpoints folder cannot be written."""
  if step in mngr.all_steps():
    return
  _check_writable(mngr, step)
  args = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config.to_dict()))
  if data_iterator is not None:
    args['data'] = DataIteratorSave(data_iterator)
  metrics = {k: float(v) for k, v in metrics.items()} if metrics else {}
  running = set(threading.enumerate())
  try:
    mngr.save(step, args=ocp.args.Composite(**args), metrics=metrics, force=True)
  except Exception as e:  # The previous save's failure, raised when this one waits for it.
    pending, mngr.pending = mngr.pending, None
    failure = _failure(mngr, e, pending if pending is not None else step)
    if failure is None:
      _await_abandoned_tasks(running)
      raise
    raise SaveFailed(mngr, failure[0], step, failure[1]) from None
  mngr.pending = step


def _await_abandoned_tasks(running: set, timeout_s: float = 60.0) -> None:
  """Waits (bounded) for the background tasks that orbax started for a save that then raised a
  bug (a state orbax cannot write: ValueError "Unsupported type").

  orbax starts the step directory's creation and the JSON item's write in non-daemon threads
  (`_SignalingThread`) before the state's handler raises, and nothing awaits them. Left alone,
  the caller's `close` shuts down the executor the creation needs, the JSON thread then waits
  for a signal that never comes, and the process hangs at exit for orbax's coordination timeout
  (300 s) after its traceback. Joined here, they finish into the step's temporary directory,
  which the next manager removes. `running`: the threads alive before the save."""
  deadline = time.monotonic() + timeout_s
  for thread in set(threading.enumerate()) - running:
    if type(thread).__module__.startswith('orbax.'):
      # Thread's own join: orbax's re-raises the task's error, which is not this bug's.
      threading.Thread.join(thread, timeout=max(0.0, deadline - time.monotonic()))


def _check_writable(mngr: Manager, step: int) -> None:
  """SaveFailed at `step` when the checkpoints folder cannot take a new directory (no
  permission, a read-only volume, a file in its place, a full disk), before orbax starts there:
  orbax creates the step's directory in a thread, and when that fails, its other threads and
  the data iterator's handler (a blocking one) wait 5 minutes (orbax's coordination timeout)
  for it, then fail with tracebacks. Several processes agree here on whether any failed."""
  reason = None
  try:
    os.makedirs(str(mngr.directory), exist_ok=True)  # Gone: orbax would make it again too.
    os.rmdir(tempfile.mkdtemp(prefix='.writable-', dir=str(mngr.directory)))
  except OSError as e:
    reason = atomic_write.failure_reason(e)
  if jax.process_count() > 1:
    if reason is not None and mngr.failed is None:
      mngr.barriers.publish(step, reason)
      mngr.failed = (step, reason)  # After: the others find the reason published.
    _agree_on_saves(mngr, step)
  elif reason is not None:
    wait_for_saves(mngr)  # The save in flight ends first, or its own failure is told.
    raise SaveFailed(mngr, step, step, reason)


class SaveFailed(UserError):
  """A checkpoint could not be written (a full disk, a quota, no permission, a read-only or
  failing volume): the run stops at once."""

  def __init__(self, mngr: ocp.CheckpointManager, failed: Optional[int], now: Optional[int],
               reason: str, what: Optional[str] = None):
    _AbandonedTaskFilter.save_failed = True  # Before the collection, which logs them.
    gc.collect()  # The failed writes' coroutines, closed now rather than noisily at exit.
    mngr.reported = True  # Told in this one line; `wait_for_saves` says nothing more.
    if failed is not None and jax.process_count() == 1:
      _remove_unfinished(mngr, failed)
    mngr.reload()  # The steps on disk: orbax forgets the ones it meant to delete next.
    last = mngr.latest_step()
    complete = (f'the last complete checkpoint is {mngr.directory}/{last}' if last is not None
                else f'no complete checkpoint is in {mngr.directory}')
    stopped = f'stopped at step {now}; ' if now is not None and now != failed else ''
    what = what or f'checkpoint step {failed} could not be saved'
    # Room cures a full disk or a quota; no permission, a read-only or failing volume (EROFS,
    # EIO), a file in a folder's place need another fix first.
    cure = ('free space and rerun' if atomic_write.room_would_help(reason) else
            f'once {os.path.dirname(str(mngr.directory))} can be written again, rerun')
    # With no checkpoint the rerun starts from step 0: nothing to resume.
    again = 'to resume' if last is not None else 'to start again'
    super().__init__(f'{what} ({reason}); {stopped}{complete}; {cure} the same command {again}')


def interrupted_saves(directory: str) -> tuple[tuple[int, str], ...]:
  """(step, folder) of each save begun in `directory` (WORKDIR/checkpoints) that never finished,
  newest first. orbax writes a step into `STEP.orbax-checkpoint-tmp` (older versions add
  `-TIMESTAMP`) and renames it to STEP once complete; a save cut short (kill -9, a crash, the
  machine lost) leaves that folder, which orbax's listing of steps passes over without a word,
  so that the previous step is read as if it were the newest."""
  try:
    names = os.listdir(directory)
  except OSError:  # No checkpoints folder (a new workdir), or not a directory.
    return ()
  found = []
  for name in names:
    step, suffix, _ = name.partition(ocp.path.step.TMP_DIR_SUFFIX)
    if suffix and step.isdigit():
      found.append((int(step), os.path.join(directory, name)))
  return tuple(sorted(found, reverse=True))


def interrupted_words(interrupted: tuple[tuple[int, str], ...], aside: str = '') -> str:
  """'step 6 was never completed (its save was interrupted, leaving FOLDER)', the words of every
  warning about `interrupted` ((step, folder), newest first: `interrupted_saves`); `aside` ends
  the parenthesis."""
  if len(interrupted) == 1:
    step, folder = interrupted[0]
    return f'step {step} was never completed (its save was interrupted, leaving {folder}{aside})'
  return (f'steps {", ".join(str(s) for s, _ in interrupted)} were never completed (their saves '
          f'were interrupted, leaving {", ".join(f for _, f in interrupted)}{aside})')


def tell_interrupted(mngr: Manager, workdir: str, step: int) -> None:
  """One warning when the run starts at `step` (0: from scratch) below a step whose save was
  interrupted (`mngr.interrupted`): the run looked like one stopped at `step`. orbax removes
  the unfinished folder (a writable manager's clean-up): it can never be read, and the run
  trains and saves that step again. In a job of several processes process 0 alone says it, as
  it alone removes the folder (orbax's primary host): every process said the same line."""
  newer = tuple((s, f) for s, f in mngr.interrupted if s > step)
  if not newer or jax.process_index() != 0:
    return
  start = (f'resuming from step {step}, the newest complete one' if step else
           'starting from step 0, as no step was saved before it')
  logger.warning('%s: its newest checkpoint %s; %s', workdir,
                 interrupted_words(newer, ', which orbax now removes'), start)


def _remove_unfinished(mngr: ocp.CheckpointManager, step: int, settle_s: float = 0.2,
                       timeout_s: float = 10.0) -> None:
  """Removes what the failed save of `step` wrote (`STEP.orbax-checkpoint-tmp*`), so that the
  space a full disk needs back is not held by a checkpoint that can never be read; orbax would
  remove it only when the next run opens the folder. Called once orbax has reported the save
  failed; TensorStore's writes of it, in C++ threads nothing awaits, may still land for a moment
  after that (a 977-byte data file written after the removal left the folder behind in one test
  run), so the removal repeats until the folder has stayed absent for `settle_s` seconds, for at
  most `timeout_s`. Several processes keep theirs for that next run: another may still be
  writing. A removal refused (no permission, a read-only volume) leaves it to that run too."""
  unfinished = f'{step}{ocp.path.step.TMP_DIR_SUFFIX}*'
  pattern = os.path.join(glob.escape(str(mngr.directory)), unfinished)
  deadline, absent_since = time.monotonic() + timeout_s, None
  while time.monotonic() < deadline:
    partials = glob.glob(pattern)
    if partials:
      absent_since = None
      if not all(_remove_tree(partial) for partial in partials):
        return
    elif absent_since is None:
      absent_since = time.monotonic()
    elif time.monotonic() - absent_since >= settle_s:
      return
    time.sleep(0.02)


def _remove_tree(path: str) -> bool:
  """shutil.rmtree of `path`; False when a removal was refused (an OSError other than the
  races of a write landing meanwhile: a file gone already, a folder not empty any more)."""
  refused = []

  def on_error(function, failed, exc_info):
    del function, failed
    error = exc_info[1]
    if getattr(error, 'errno', None) not in (errno.ENOENT, errno.ENOTEMPTY):
      refused.append(error)

  shutil.rmtree(path, onerror=on_error)
  return not refused


class _StopOnFailedWrite:
  """A metric writer whose failure to write (a full disk, no permission: an OSError) stops the
  run in one line."""

  def __init__(self, writer, mngr: ocp.CheckpointManager, workdir: str):
    self._writer, self._mngr, self._workdir = writer, mngr, workdir
    self._failed = False  # Once reported, later calls (the final flush) stay quiet.

  def __getattr__(self, name):
    method = getattr(self._writer, name)
    if not callable(method):
      return method

    def call(*args, **kwargs):
      try:
        return method(*args, **kwargs)
      except Exception as e:
        reason = atomic_write.failure_reason(e)
        if reason is None:
          raise
        if self._failed:
          return None
        self._failed = True
        step = args[0] if args and isinstance(args[0], (int, np.integer)) else None
        raise SaveFailed(self._mngr, None, step, reason,
                         what=f'{self._workdir}: the TensorBoard events could not be '
                              f'written') from None
    return call


def stop_on_failed_write(writer, mngr: ocp.CheckpointManager, workdir: str):
  """`writer` (a `vit.training.events.EventWriter`, or a clu metric writer: clu reports its
  thread's error at the next call), whose writes that fail (a full disk, no permission) raise
  SaveFailed naming the step."""
  return _StopOnFailedWrite(writer, mngr, workdir)


def wait_for_saves(mngr: ocp.CheckpointManager) -> None:
  """Blocks until the save in flight is complete; SaveFailed when it failed (an OSError)."""
  pending, mngr.pending = mngr.pending, None
  try:
    mngr.wait_until_finished()
  except Exception as e:
    failure = _failure(mngr, e, pending)
    if failure is not None and getattr(mngr, 'reported', False):
      # Several processes: this one stopped on another's word (check_saves) before its own
      # save had failed or given up; the SaveFailed on its way out says it already.
      return
    if failure is None or failure[0] is None:
      raise
    raise SaveFailed(mngr, failure[0], None, failure[1]) from None


def _failure(mngr: ocp.CheckpointManager, e: Exception,
             pending: Optional[int]) -> Optional[tuple[Optional[int], str]]:
  """(the failed step, the reason to tell) when orbax raised `e` because a save failed (an
  OSError), here or on another process (`pending`: the step of this process's save in flight);
  None for any other error (a bug)."""
  if getattr(mngr, 'failed', None):  # Several processes: this one's own.
    return mngr.failed
  aborted = _in_chain(e, save_barrier.SaveAborted)
  if aborted is not None:
    return aborted.step, f'process {aborted.process}: {aborted.reason}'
  reason = atomic_write.failure_reason(e)
  return None if reason is None else (pending, reason)


def _in_chain(e: Optional[BaseException], kind) -> Optional[BaseException]:
  """`e`, or the first exception it was raised from or during, that is a `kind` (a type, or a
  predicate of the exception)."""
  matches = kind if not isinstance(kind, type) else lambda x: isinstance(x, kind)
  seen = set()
  while e is not None and id(e) not in seen and not matches(e):
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return e if e is not None and matches(e) else None


def check_saves(mngr: ocp.CheckpointManager, step: int, sync: bool) -> None:
  """Raises SaveFailed once the save in flight has failed (an OSError); call at every step.

  One process: a finished save is checked at every step (no device sync: the state of a thread).
  Several: at the loop's sync steps only, all processes agree through an all-gather, so that
  every process stops at the same step whichever one's write failed (`Manager.failed`); the
  others name that process and its reason, published when it failed (vit/save_barrier.py).
  """
  if jax.process_count() > 1:
    if sync:
      _agree_on_saves(mngr, step)
    return
  pending = mngr.pending
  if pending is None or mngr.is_saving_in_progress():
    return
  mngr.pending = None
  try:
    mngr.wait_until_finished()
  except Exception as e:
    reason = atomic_write.failure_reason(e)
    if reason is None:
      raise
    raise SaveFailed(mngr, pending, step, reason) from None


def _agree_on_saves(mngr: ocp.CheckpointManager, step: int) -> None:
  mine = mngr.failed
  votes = multihost_utils.process_allgather(np.int32(-1 if mine is None else mine[0]))
  if not np.any(votes >= 0):
    return
  if mine:
    raise SaveFailed(mngr, mine[0], step, mine[1])
  told = mngr.barriers.failure()  # Published before that process voted.
  raise SaveFailed(mngr, told.step, step, f'process {told.process}: {told.reason}')


class _FailedSaveFilter(logging.Filter):
  """Drops the error records of a failed write (`atomic_write.failure_reason`), logged by
  orbax's and clu's threads, and of orbax's saves that gave up on another process's failed one
  (save_barrier.SaveAborted): `check_saves` and `stop_on_failed_write` report it in one line.
  Once a save has failed (SaveFailed), also orbax's threads' 'cannot schedule new futures after
  shutdown': a write still in flight when the process stops on that line meets the executor
  that Python's exit has shut down (a traceback after the line, seen under load in a
  two-process run, tests/test_full_disk.py)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR or not any(
        f'{os.sep}{package}{os.sep}' in record.pathname for package in ('orbax', 'clu')):
      return True
    error = record.exc_info[1] if record.exc_info else None
    if error is None:
      return True
    if _AbandonedTaskFilter.save_failed and _in_chain(error, _exit_shut_the_executor):
      return False
    return (atomic_write.failure_reason(error) is None and
            _in_chain(error, save_barrier.SaveAborted) is None)


def _exit_shut_the_executor(e: BaseException) -> bool:
  return isinstance(e, RuntimeError) and str(e) == 'cannot schedule new futures after shutdown'


class _AbandonedTaskFilter(logging.Filter):
  """Once a save has failed (SaveFailed), drops asyncio's records of what the failed save left
  behind, logged when they are collected: 'Task was destroyed but it is pending!' of orbax's
  coroutines and '... exception was never retrieved' of its writes that failed (seen on a
  loaded machine and in two-process runs, tests/test_full_disk.py)."""
  save_failed = False

  def filter(self, record: logging.LogRecord) -> bool:
    if not _AbandonedTaskFilter.save_failed:
      return True
    message = record.getMessage()
    if message.startswith('Task was destroyed but it is pending'):
      return f'{os.sep}orbax{os.sep}' not in message
    error = record.exc_info[1] if record.exc_info else None
    return error is None or atomic_write.failure_reason(error) is None


def _quiet_failed_saves() -> None:
  """After a failed write, orbax logs it from several threads, and TensorStore's callbacks of
  the writes still in flight meet the closed event loop of the failed save ('Event loop is
  closed', reported as unraisable); asyncio reports the orbax tasks it abandoned at exit;
  none says more than `check_saves` does."""
  for name, kind in (('absl', _FailedSaveFilter), ('asyncio', _AbandonedTaskFilter)):
    target = logging.getLogger(name)
    if not any(isinstance(f, kind) for f in target.filters):
      target.addFilter(kind())
  _drop_unraisable(_closed_loop_callback)


def _closed_loop_callback(unraisable) -> bool:
  return (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) ==
          'Event loop is closed' and any(frame.name == 'call_soon_threadsafe' for frame in
                                         traceback.extract_tb(unraisable.exc_traceback)))


class _MissingMetadataFilter(logging.Filter):
  """Drops orbax's 'Metadata file does not exist: STEP/_CHECKPOINT_METADATA' (absl, warning),
  logged for a step folder that is empty or was cut short before its metadata, and its 'Failed
  to read Metadata file: ...' (absl, error) for one whose bytes were changed, which orbax then
  reads as having no metadata: the reader's own line names that step and why it was skipped
  (`unreadable_reason`; the file's saved CRC-32 tells the second, vit/step_checksums.py)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(('Metadata file does not exist:',
                                               'Failed to read Metadata file:'))


def _quiet_abandoned_reads() -> None:
  """When one array of a step does not read, orbax abandons the reads of the others; each,
  closed when collected, raises orbax's 'Encountered error while reading array index' (from
  GeneratorExit, with TensorStore's whole store spec), reported as unraisable on stderr, and
  TensorStore's callbacks of the reads still in flight meet the closed event loop ('Event loop
  is closed', two dozen tracebacks when `state/array_metadatas/` is cut short). The failed read
  itself is reported in one line (`unreadable_reason`); these say nothing more. The reads
  that failed too, and that no one awaited once the first failure ended the restore, asyncio
  logs when they are collected ('Task / Future / _GatheringFuture exception was never
  retrieved', with TensorStore's OUT_OF_RANGE errors: from none to
  thousands of lines, by timing, when every step's data files are damaged; seen in 2 of 4
  runs before these filters, none of 14 after)."""
  _drop_unraisable(_abandoned_read)
  _drop_unraisable(_closed_loop_callback)
  absl_logger = logging.getLogger('absl')
  if not any(isinstance(f, _MissingMetadataFilter) for f in absl_logger.filters):
    absl_logger.addFilter(_MissingMetadataFilter())
  # The same reads, never started, are collected as coroutines never awaited (RuntimeWarning).
  warnings.filterwarnings('ignore', category=RuntimeWarning, message=(
      r"coroutine '(_read_shard|_read_array_index_and_device_put|_read_and_create_array|"
      r"async_deserialize)' was never awaited"))
  asyncio_log = logging.getLogger('asyncio')
  if not any(isinstance(f, _UnretrievedReadFilter) for f in asyncio_log.filters):
    asyncio_log.addFilter(_UnretrievedReadFilter())


class _UnretrievedReadFilter(logging.Filter):
  """Drops asyncio's '... exception was never retrieved' records of orbax's array reads."""

  def filter(self, record: logging.LogRecord) -> bool:
    if not record.getMessage().split('\n', 1)[0].endswith('exception was never retrieved'):
      return True
    error = record.exc_info[1] if record.exc_info else None
    return error is None or _in_chain(error, _orbax_read_error) is None


def _orbax_read_error(error: BaseException) -> bool:
  """Whether `error` is TensorStore's failed read (a plain future's, no traceback) or went
  through orbax's code."""
  text = str(error)
  return (text.startswith('Encountered error while reading array index')
          or ('Error reading "' in text and ' database at ' in text)
          or any(f'{os.sep}orbax{os.sep}' in frame.filename
                 for frame in traceback.extract_tb(error.__traceback__)))


def _abandoned_read(unraisable) -> bool:
  error = unraisable.exc_value
  return (isinstance(error, Exception) and isinstance(error.__cause__, GeneratorExit)
          and str(error).startswith('Encountered error while reading array index'))


_DROPPED_UNRAISABLE = []  # Predicates of the one hook `_drop_unraisable` installs.


def _drop_unraisable(predicate) -> None:
  """Python's unraisable reports that `predicate` matches are dropped, others passed on. One
  hook for every predicate, installed once: managers are made many times per process."""
  if predicate not in _DROPPED_UNRAISABLE:
    _DROPPED_UNRAISABLE.append(predicate)
  if getattr(sys.unraisablehook, 'vit_drops', False):
    return
  previous = sys.unraisablehook

  def unraisablehook(unraisable):
    if not any(p(unraisable) for p in _DROPPED_UNRAISABLE):
      previous(unraisable)

  unraisablehook.vit_drops = True
  sys.unraisablehook = unraisablehook


def restore(mngr: ocp.CheckpointManager, abstract_state: Any, data_iterator=None,
            step: Optional[int] = None) -> tuple[Any, int]:
  """Restores `abstract_state` (ShapeDtypeStructs with shardings) and the iterator in place."""
  step = mngr.latest_step() if step is None else step
  args = dict(state=ocp.args.StandardRestore(abstract_state))
  if data_iterator is not None:
    args['data'] = DataIteratorRestore(data_iterator)
  restored = mngr.restore(step, args=ocp.args.Composite(**args))
  return restored['state'], step


def resume(mngr: ocp.CheckpointManager, abstract_state: Any, data_iterator,
           config: ml_collections.ConfigDict) -> tuple[Any, int]:
  """The newest usable checkpoint, after checking that it fits the current config.

  A step that cannot be read (a truncated or missing file, or one whose bytes differ from their
  saved CRC-32) is skipped with a warning for the previous one; once one restores, the unreadable
  newer steps are moved to `checkpoints.damaged/` so that the run can save those steps again.
  Nothing is moved when no step is usable. An incompatible config is an error, never a fallback
  (unless the step's saved config differs from its CRC-32: then it is damage, and skipped).
  """
  problems = []
  for step in sorted(mngr.all_steps(), reverse=True):
    def check():
      saved = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
      try:
        return check_compatible(saved['config'], mngr.item_metadata(step)['state'],
                                abstract_state, config, where=f'{mngr.directory}/{step}')
      except UserError:
        # A saved config changed in place (a flipped byte of its config.init) reads as another
        # run's: a step whose files differ from their saved CRC-32s is damaged, and skipped.
        step_checksums.check(os.path.join(str(mngr.directory), str(step)))
        raise
    changed, reason = _read_together(mngr, step, 'config', check)
    if reason is None:
      restored, reason = _read_together(
          mngr, step, 'state', lambda: _checked(mngr, step, lambda: restore(
              mngr, abstract_state, data_iterator, step)))
    if reason is not None:
      problems.append((step, reason))
      logger.warning('checkpoint %s/%d is unreadable (%s); trying the previous one',
                     mngr.directory, step, reason)
      continue
    for bad, _ in problems:
      logger.warning('moved the unreadable checkpoint step %d to %s', bad,
                     _move_aside(mngr, bad))
    if changed:
      logger.info('note: resuming with changed config keys: %s', '; '.join(changed))
    if getattr(data_iterator, 'resume_note', None):
      logger.info('note: %s', data_iterator.resume_note)
    if data_iterator is not None:
      data_iterator.start_prefetch()
    return restored
  reasons = '; '.join(f'{mngr.directory}/{s}: {r}' for s, r in problems)
  raise UserError(f'{mngr.directory}: no checkpoint step could be restored ({reasons}); nothing '
                  'was moved; to start afresh instead, use another --workdir')


def _checked(mngr: ocp.CheckpointManager, step: int, read: Callable[[], Any]) -> Any:
  """`read()` of `step`, then the check of the step's files against their saved CRC-32s
  (vit/step_checksums.py), which raises step_checksums.Mismatch. After, not before: a file that
  orbax finds cut short or missing is named in its terms; the CRC-32s add what orbax reads
  without noticing, bytes changed in place."""
  value = read()
  step_checksums.check(os.path.join(str(mngr.directory), str(step)))
  return value


def _read_together(mngr: ocp.CheckpointManager, step: int, what: str,
                   read: Callable[[], Any]) -> tuple[Any, Optional[str]]:
  """(`read()`, None), or (None, why `step` is unusable) when `read` failed on any process.

  Each process reads its own part of a step (its data iterator's file, the shards of its
  devices), so a damaged file can fail one process only; a job whose processes resumed from
  different steps would wait for each other at the first collective forever. With several
  processes a failed process publishes its reason on jax.distributed's key-value store before
  an all-gather of the outcomes, and the others name the first failed process and its reason
  (`process 1: data/process_1-of-2.json is not valid JSON ...`). A UserError (a config that does
  not fit, which every process reads alike) is raised as is.
  """
  value, reason = None, None
  try:
    value = read()
  except UserError:
    raise
  except Exception as e:  # Any read failure makes this step unusable; try an older one.
    reason = unreadable_reason(f'{mngr.directory}/{step}', e)
  if jax.process_count() == 1:
    return value, reason
  client = distributed.global_state.client
  key = lambda process: f'vit_restore{mngr.directory}/{step}/{what}/{process}'
  if reason is not None:
    client.key_value_set(key(jax.process_index()), reason, allow_overwrite=True)
  failed = multihost_utils.process_allgather(np.int32(reason is not None))
  if reason is not None or not np.any(failed):
    return value, reason
  first = int(np.argmax(failed))
  return None, f'process {first}: {client.blocking_key_value_get(key(first), 60_000)}'


def _one_line(e: Exception) -> str:
  return ' '.join(f'{type(e).__name__}: {e}'.split())


def _shorten(reason: str, limit: int = 240) -> str:
  return reason if len(reason) <= limit else reason[:limit] + ' ...'


# The files of a step that orbax and grain write as JSON (the rest is TensorStore's binary
# OCDBT data, `d/` and `manifest.ocdbt`, and orbax's `commit_success.txt`).
_JSON_NAMES = ('_CHECKPOINT_METADATA', '_METADATA', '_sharding', 'metadata', 'metrics')


def unreadable_reason(step_dir: str, e: BaseException) -> str:
  """Why the checkpoint step in `step_dir` did not read, in plain words, naming the file
  (relative to `step_dir`): cut short, damaged or missing (TensorStore's error names the file,
  or only its OCDBT database, whose cut-short data file is then found by its size; the store
  spec and status codes are left out), or a JSON file that does not parse (found by reading
  them: Python's JSON error names none), or a file that differs from its saved size or CRC-32
  (step_checksums.Mismatch's own words); else the error's own line, shortened, without orbax's
  TensorStore details."""
  chain, seen = [], set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    chain.append(e)
    e = e.__cause__ or e.__context__
  relative = lambda path: os.path.relpath(path, step_dir)
  for error in chain:
    if isinstance(error, step_checksums.Mismatch):
      return str(error)
  for error in chain:
    text = str(error).split(' [tensorstore_spec=')[0]
    files = [f for f in re.findall(r'local file "([^"]+)"', text) if not f.endswith('/')]
    if files:
      return f'{relative(files[-1])} {_tensorstore_problem(text)}'
    database = re.search(r'OCDBT database at local file "([^"]+)"', text)
    if database:  # TensorStore names the database, not its data file: find that by its size.
      return f'{_ocdbt_data_file(database[1], text, relative)} {_tensorstore_problem(text)}'
  for error in chain:
    if isinstance(error, FileNotFoundError) and error.filename:
      return f'{relative(os.fsdecode(error.filename))} is missing'
    missing = _orbax_missing(error, step_dir)
    if missing:
      return missing
  # Bytes that are not UTF-8 fail before the JSON parser: Python's error names no file either.
  if any(isinstance(error, (json.JSONDecodeError, UnicodeDecodeError)) for error in chain):
    damaged = _damaged_json(step_dir)
    if damaged:
      return damaged
  line = _one_line(chain[0]).split('. See full TensorStore details')[0]
  return _shorten(line.replace(step_dir + os.sep, ''))


def _orbax_missing(error: BaseException, step_dir: str) -> Optional[str]:
  """'FILE is missing', 'ITEM/ is missing' or 'the step folder is empty' when `error` is orbax's
  word for a missing file or item of the step, which names it in its text only ('File PATH not
  found.', 'Metadata file (named NAME) does not exist at DIR.', 'Item "NAME" was not found in
  the checkpoint'); else None."""
  text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  found = (re.fullmatch(r'File (.+) not found\.', text) or
           re.fullmatch(r'Metadata file \(named (\S+)\) does not exist at (.+)\.', text))
  if found and isinstance(error, FileNotFoundError):
    path = found[1] if found.lastindex == 1 else os.path.join(found[2], found[1])
    return f'{os.path.relpath(path, step_dir)} is missing'
  item = re.match(r'Item "(\w+)" was not found in the checkpoint', text)
  if item and isinstance(error, KeyError):
    if not os.path.isdir(step_dir) or not os.listdir(step_dir):
      return 'the step folder is empty'
    return f'{item[1]}/ is missing'
  return None


def _ocdbt_data_file(database: str, text: str, relative) -> str:
  """The data file (relative to the step) of the OCDBT `database` directory that TensorStore
  found shorter than its index says, told by the size the error gives: orbax keeps each
  process's arrays in `ocdbt.process_<i>/d/` below the step's `state/`, beside `state/d/`.
  When several files have that size, the first is named and they are counted; when none has,
  the database's folder is named. A database without its `manifest.ocdbt` is named by that."""
  manifest = os.path.join(database, 'manifest.ocdbt')
  if not os.path.exists(manifest):  # The database's index: without it no array is found.
    return relative(manifest)
  short = re.search(r'not valid for value of size (\d+)', text)
  files = glob.glob(os.path.join(database, '**', 'd', '*'), recursive=True) if short else []
  found = sorted(f for f in files if os.path.isfile(f) and os.path.getsize(f) == int(short[1]))
  if not found:
    return f'a data file under {relative(database)}/'
  more = f' (or another of the {len(found)} files of that size)' if len(found) > 1 else ''
  return relative(found[0]) + more


def _tensorstore_problem(text: str) -> str:
  short = re.search(r'not valid for value of size (\d+)', text)
  if short:
    return f'is cut short ({short[1]} bytes, fewer than its index says)'
  if 'Invalid JSON' in text:
    return 'is not valid JSON (cut short or overwritten)'
  if 'NOT_FOUND' in text:
    return 'is missing'
  if 'DATA_LOSS' in text or 'Error decoding' in text:
    return 'is damaged (its contents do not decode)'
  if 'Truncated' in text:  # A data file of the index deleted reads as an empty stream.
    return 'is cut short or missing'
  return 'could not be read'


def _damaged_json(step_dir: str) -> Optional[str]:
  """'FILE is empty' or 'FILE is not valid JSON ...' for the first JSON file of the step
  (_JSON_NAMES, grain's `data/*.json`, orbax's `array_metadatas/`) that does not parse; None
  when all do."""
  for folder, dirs, files in sorted(os.walk(step_dir)):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(folder, name)
      if not (name in _JSON_NAMES or name.endswith('.json')
              or os.path.basename(folder) == 'array_metadatas'):
        continue
      try:
        with open(path, 'rb') as f:
          json.loads(f.read())
      except ValueError:
        size = os.path.getsize(path)
        return (f'{os.path.relpath(path, step_dir)} is '
                + ('empty' if size == 0 else 'not valid JSON (cut short or overwritten)'))
  return None


def _move_aside(mngr: ocp.CheckpointManager, step: int) -> str:
  """Keeps the unreadable step for inspection, out of the manager's sight, so that the resumed
  run can save that step again."""
  source = os.path.join(str(mngr.directory), str(step))
  target = os.path.join(f'{mngr.directory}.damaged', f'{step}.{int(time.time())}')
  if jax.process_index() == 0 and os.path.exists(source):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(source, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'checkpoint_move_aside_{step}')
  mngr.reload()
  return target


def _flat(tree) -> dict[str, Any]:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {'/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))))
                   for k in path): leaf for path, leaf in leaves}


def _flat_config(d: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in d.items():
    if isinstance(value, dict):
      out.update(_flat_config(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def steps_on_disk(workdir: str) -> list[int]:
  """The step numbers of WORKDIR/checkpoints' step folders, ascending, whether they read or
  not (what a reader skipped as unreadable too); [] without the folder."""
  try:
    names = os.listdir(os.path.join(workdir, 'checkpoints'))
  except OSError:  # No checkpoints directory (a new workdir), or not a directory.
    return []
  return sorted(int(n) for n in names if n.isdigit())


def has_steps(workdir: str) -> bool:
  """Whether `workdir` holds a checkpoint step (readable or not), so that a run on it resumes;
  a cheap look at the directory names, for what a trainer says before the loop starts."""
  return bool(steps_on_disk(workdir))


def check_compatible(saved_config: dict, saved_state_metadata, abstract_state,
                     config: ml_collections.ConfigDict, where: str) -> list[str]:
  """Raises UserError when the checkpoint's state does not have the current state's structure,
  naming first what makes it so (another objective, then the config keys that shape the state:
  `_incompatible_keys`), then the differing arrays; else returns the changed config keys."""
  saved, now = _flat_config(saved_config), _flat_config(config.to_dict())
  objectives = (sorted(config_lib.sections(ml_collections.ConfigDict(saved_config))),
                sorted(config_lib.sections(config)))
  if objectives[0] == objectives[1]:
    # Another objective's run (a fine-tune aimed at its MAE pretraining workdir) is refused
    # below, naming the objective: the origin's cure ('rerun without config.init') cannot
    # resume it.
    _check_origin(saved, now, where, objectives[0])
  # Keys on one side only come from a newer or older schema, not from the user's config.
  keys = sorted(k for k in set(saved) & set(now) if _comparable(saved[k]) != _comparable(now[k]))
  changed = [f'{k}: {saved.get(k)!r} -> {now.get(k)!r}' for k in keys]
  old = {p: (tuple(m.shape), str(np.dtype(m.dtype)))
         for p, m in _flat(saved_state_metadata).items()}
  new = {p: (tuple(s.shape), str(np.dtype(s.dtype))) for p, s in _flat(abstract_state).items()}
  # Arrays of both sides with other shapes point at the cause better than absent ones.
  order = lambda p: (p not in old or p not in new, not p.startswith('params/'), p)
  shapes = [f'{p}: {_show(old.get(p))} -> {_show(new.get(p))}'
            for p in sorted(set(old) | set(new), key=order) if old.get(p) != new.get(p)]
  if shapes:
    if objectives[0] != objectives[1]:
      raise UserError(_other_objective(*objectives, where, saved.get('init')))
    differing = _incompatible_keys(saved_config, config, keys, changed)
    raise UserError(
        f'{where} was saved with another config and cannot be resumed: config keys differ: '
        f'{"; ".join(differing[:10]) or "none"}; {len(shapes)} state arrays differ: '
        f'{"; ".join(shapes[:5])}{" ..." if len(shapes) > 5 else ""}; use another --workdir')
  return changed


def _other_objective(saved: list[str], now: list[str], where: str,
                     init: Optional[str] = None) -> str:
  """The refusal of another objective's run (mae.train on a SimMIM workdir), given the saved
  and the current config's objective sections: they name the cause, and the saved run's
  trainer the cure, in place of a hundred differing arrays."""
  name = lambda secs: ' and '.join(f'config.{s}' for s in secs) or 'no objective section'
  cure = f'resume it with {_trainers(saved, init)}'
  return (f'{where} holds a run of another objective ({name(saved)}; this config has '
          f'{name(now)}) and cannot be resumed here; {cure}, or use another --workdir')


def _trainers(sections: list[str], init: Optional[str] = None) -> str:
  """The command that trains a run of these objective sections ('python -m mpp.train'; none:
  a classifier's: supervised.finetune with its `init` when it had one, else supervised.train),
  or 'its trainer' when not one."""
  if not sections:
    return (f'python -m supervised.finetune --config.init={init}' if init else
            'python -m supervised.train')
  found = [f'python -m {s}.train' for s in sections if importlib.util.find_spec(f'{s}.train')]
  return found[0] if len(found) == 1 else 'its trainer'


def _check_origin(saved: dict, now: dict, where: str, sections: list[str]) -> None:
  """UserError when config.init differs from the saved run's: the resumed weights descend from
  the old init, and the config saved from then on would record the new one. The same weights
  named by another path spelling (relative, absolute, a trailing '/') are the same init. The
  cure names the program that resumes it: supervised.finetune for a run with an init (the one
  trainer that reads it), else the trainer of the saved `sections`."""
  if 'init' not in saved or 'init' not in now or _same_init(saved['init'], now['init']):
    return
  old, new = saved['init'], now['init']
  cure = (f'rerun python -m supervised.finetune with --config.init={old}' if old else
          f'rerun {_trainers(sections)} without config.init')
  raise UserError(
      f'{where}: config.init {old!r} -> {new!r}: this run was initialised from '
      f'{old or "a random initialisation"}, and resuming it with another config.init would '
      f'record an origin its weights do not have; {cure} to resume it, or use another '
      f'--workdir to start from {new or "a random initialisation"}')


def _same_init(a: Optional[str], b: Optional[str]) -> bool:
  """Whether two config.init specs ('FORMAT:PATH') name the same weights: equal, or of one
  format with paths that resolve to the same file or directory from here, or moved: the old
  path exists no more and the new one, of the same name, does (a checkout or run carried to
  another machine or folder, as the study's runs in flight are: docs/study/README.md)."""
  if not a or not b:
    return not a and not b
  (fa, _, pa), (fb, _, pb) = a.partition(':'), b.partition(':')
  name = lambda p: os.path.basename(os.path.normpath(p))
  moved = not os.path.exists(pa) and os.path.exists(pb) and name(pa) == name(pb)
  return a == b or (fa == fb and (os.path.realpath(pa) == os.path.realpath(pb) or moved))


def _incompatible_keys(saved_config: dict, config: ml_collections.ConfigDict,
                       keys: list[str], changed: list[str]) -> list[str]:
  """The config differences that can make a saved state not fit, surest first: an objective's
  section on one side only (another objective's checkpoint: 'config.mpp: present -> absent'),
  the state-shaping keys (`_STATE_SHAPING`), then the keys of an objective section both sides
  share (its head's size, e.g. mpp.bits). Every changed key when none of these changed."""
  ours = set(config_lib.sections(config))
  theirs = set(config_lib.sections(ml_collections.ConfigDict(saved_config)))
  objective = [f'config.{name}: {"present" if name in theirs else "absent"} -> '
               f'{"present" if name in ours else "absent"}' for name in sorted(ours ^ theirs)]
  shaping = [c for k, c in zip(keys, changed)
             if k.startswith(_STATE_SHAPING) and not k.startswith(_MODEL_ARITHMETIC)]
  sections = [c for k, c in zip(keys, changed) if k.split('.')[0] in ours & theirs]
  return objective + shaping + sections or changed


def _comparable(value):
  # JSON turns tuples into lists; compare the values, not the containers.
  return list(value) if isinstance(value, tuple) else value


def _show(shape_dtype) -> str:
  return 'absent' if shape_dtype is None else f'{shape_dtype[1]}{list(shape_dtype[0])}'


def best_step(mngr: ocp.CheckpointManager, best_metric: str, best_mode: str = 'max'
              ) -> Optional[int]:
  """The kept step with the best `best_metric`, or None when no kept step was evaluated."""
  scored = [(mngr.metrics(s) or {}).get(best_metric) for s in mngr.all_steps()]
  candidates = [(v, s) for v, s in zip(scored, mngr.all_steps()) if v is not None]
  if not candidates:
    return None
  return (max if best_mode == 'max' else min)(candidates)[1]


def saved_config(workdir: str) -> dict:
  """The config a run saved with its newest readable step (`read_params`'s)."""
  return read_params(workdir)[0]


def saved_configs(workdir: str) -> Iterator[tuple[int, dict]]:
  """(step, the config saved with it) for each step of WORKDIR/checkpoints, newest first,
  through one read-only manager (closed when the loop ends or stops). Only the configs are
  read; a step whose config does not read or differs from its saved CRC-32s is passed over
  (the readers of its weights name what is wrong with it)."""
  with contextlib.closing(manager(workdir, read_only=True)) as mngr:
    for step in sorted(mngr.all_steps(), reverse=True):
      try:
        saved = mngr.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore()))['config']
        step_checksums.check(os.path.join(str(mngr.directory), str(step)), under='config')
      except Exception:  # noqa: BLE001 (orbax and TensorStore raise many types for damage)
        continue
      yield step, saved


def restore_params(workdir: str, step: Optional[int] = None, *, use_ema: bool = False) -> dict:
  """Only the parameters of a saved train state, on the host, for fine-tuning or inspection
  (the newest readable step by default)."""
  if step is None:
    return read_params(workdir, use_ema=use_ema)[1]
  with contextlib.closing(manager(workdir, read_only=True)) as mngr:
    try:
      return _checked(mngr, step, lambda: _read_params_at(mngr, step, use_ema))
    except step_checksums.Mismatch as e:
      raise UserError(f'{mngr.directory}/{step}: {e}') from None


def read_params(workdir: str, *, use_ema: bool = False) -> tuple[dict, dict, int]:
  """(saved config, parameters, step) of the newest step that reads, for the readers of a
  workdir (export, prediction, fine-tuning, few-shot, inspection).

  As `resume`, a step that cannot be read (a truncated file, a half-copied step) is skipped with
  a one-line warning naming it, for the previous one; nothing is moved (a reader changes no
  workdir). Only the parameters are read (the EMA ones with `use_ema` when the run kept them),
  never the optimiser's moments. UserError naming every step when none reads, or saying that
  the workdir has no step (yet, when its run is training now on this host; its only saves
  interrupted, naming them) and what it should hold (`read_newest`).
  """
  newest = read_newest(workdir, use_ema=use_ema)
  for _, folder in newest.interrupted:
    logger.warning('skipped the unfinished checkpoint %s (its save was interrupted); reading '
                   'step %d', folder, newest.step)
  for bad, reason in newest.skipped:
    logger.warning('skipped the unreadable checkpoint %s/%d (%s); reading step %d',
                   newest.directory, bad, reason, newest.step)
  return newest.config, newest.params, newest.step


class Newest(NamedTuple):
  """What `read_newest` read: the newest step that reads, and the newer ones that did not."""
  config: dict
  params: dict
  step: int
  skipped: tuple[tuple[int, str], ...]  # (step, why it did not read), newest first.
  directory: str  # WORKDIR/checkpoints, as orbax names it.
  # (step, folder) of the newer saves that never finished (`interrupted_saves`), newest first.
  interrupted: tuple[tuple[int, str], ...] = ()


def read_newest(workdir: str, *, use_ema: bool = False, label: Optional[str] = None,
                trainer: str = 'a trainer') -> Newest:
  """`read_params` without its warnings: the steps it skipped are returned, for a reader that
  says so in its own words (`vit.init_spec`, naming the init spec). UserError as
  `read_params`'s; the line of a workdir without a step starts with `label` (how the user gave
  it: 'mae:DIR'; `workdir` when None) and says it should be the --workdir of `trainer` ('mae
  training')."""
  with contextlib.closing(manager(workdir, read_only=True)) as mngr:
    return _newest_readable(mngr, workdir, use_ema, label or workdir, trainer)


def _newest_readable(mngr: Manager, workdir: str, use_ema: bool, label: str,
                     trainer: str) -> Newest:
  """`read_newest` through `mngr` (WORKDIR/checkpoints' read-only manager)."""
  steps = sorted(mngr.all_steps(), reverse=True)
  if not steps:
    raise UserError(_no_step_line(workdir, label, trainer))
  problems = []
  for step in steps:
    try:
      config, params = _checked(mngr, step, lambda: (mngr.restore(
          step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config'],
          _read_params_at(mngr, step, use_ema)))
    except Exception as e:  # Any read failure makes this step unusable; try an older one.
      problems.append((step, unreadable_reason(f'{mngr.directory}/{step}', e)))
      continue
    interrupted = tuple((s, f) for s, f in interrupted_saves(str(mngr.directory)) if s > step)
    if interrupted and training_now(workdir):
      interrupted = ()  # The save in progress of a run still training, not an interrupted one.
    return Newest(config, params, step, tuple(problems), str(mngr.directory), interrupted)
  reasons = '; '.join(f'{mngr.directory}/{s}: {r}' for s, r in problems)
  raise UserError(f'{mngr.directory}: no checkpoint step could be read ({reasons})')


def _no_step_line(workdir: str, label: str, trainer: str) -> str:
  """Why `workdir` has no step to read, starting with `label`: its run is training now on this
  host (it will have one; a save folder there is its first save in progress), its only saves
  were interrupted (named, as `interrupted_words` names them: the run looked as if it had
  stopped before saving anything), or else what the folder should hold, since the line that
  named only the folder left an empty or a wrong directory, or a run stopped before its first
  save, unexplained."""
  running = training_now(workdir)
  if running:
    return (f'{label}: no checkpoint found under {workdir}/checkpoints yet; its run is training '
            f'now ({running}): use it once it has saved its first step (config.checkpoint_every)')
  interrupted = interrupted_saves(os.path.join(workdir, 'checkpoints'))
  if interrupted:
    many = len(interrupted) > 1
    return (f'{label}: no finished checkpoint step under {workdir}/checkpoints, as its '
            f'{"" if many else "only "}checkpoint {interrupted_words(interrupted)}; rerun its '
            f'training command with the same --workdir to train and save {"them" if many else "it"}'
            ' again, from step 0')
  stopped = ' (its run stopped before saving a step)' if is_run(workdir) else ''
  return (f'{label}: no checkpoint found under {workdir}/checkpoints{stopped}; expected a run '
          f'directory, the --workdir of {trainer}, holding its saved steps (checkpoints/STEP/)')


def _read_params_at(mngr: ocp.CheckpointManager, step: int, use_ema: bool) -> dict:
  """`params` (or `ema_params`) of one step's state, alone, onto this host's first device
  whatever mesh saved it: a pod checkpoint must load on a workstation (orbax refuses the saved
  shardings on another topology)."""
  directory = epath.Path(mngr.directory) / str(step) / 'state'
  handler = ocp.PyTreeCheckpointHandler()
  try:
    tree = handler.metadata(directory).tree
    key = 'ema_params' if use_ema and tree.get('ema_params') is not None else 'params'
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {key: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local),
                                tree[key], is_leaf=lambda m: hasattr(m, 'shape'))}
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=local), target)
    item = handler.restore(directory, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))
  finally:
    handler.close()
  return jax.device_get(item[key])


LOCK_FILE = '.lock'


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
  """Holds `workdir` for one run: a second start on it is a UserError naming the process that
  holds it.

  The lock is an flock(2) on `WORKDIR/.lock`, which also states the holder's pid, host and
  start time for that message: the kernel releases it when the holder exits in any way (kill
  -9 included), so a lock left by a dead process never blocks a resume. Several processes of
  one job: process 0 alone takes it, and all processes learn the outcome (they share one
  workdir or each has its own copy; either way a second job's process 0 is refused, and with
  it the whole job).
  """
  fd, holder = None, None
  if jax.process_index() == 0:
    fd, holder = _acquire(os.path.join(workdir, LOCK_FILE))
  if jax.process_count() > 1:
    client, key = distributed.global_state.client, f'vit_lock{os.path.abspath(workdir)}'
    if holder is not None:  # Published before the broadcast: the others name it too.
      client.key_value_set(key, holder, allow_overwrite=True)
    refused = multihost_utils.broadcast_one_to_all(np.int32(holder is not None))
    if int(refused) and holder is None:
      holder = client.blocking_key_value_get(key, 60_000)
  if holder is not None:
    raise UserError(f'--workdir {workdir}: in use by {holder}; a second run on it would '
                    f'overwrite its checkpoints: wait for it to end or stop it (its lock goes '
                    f'with it), or use another --workdir')
  try:
    yield
  finally:
    if fd is not None:
      os.close(fd)  # Releases the flock; the file stays (deleting it would race a new holder).


def refuse_inside_checkpoints(out: Optional[str], advice: str, folder: str,
                              flag: str = '--out') -> None:
  """UserError when the output `out` (of the command-line `flag`) is, or lies under,
  WORKDIR/checkpoints of a run (`run_holding_checkpoints`): every reader would take a folder
  there for a damaged step, the next training would move it aside, and the run's retention
  deletes a step with whatever was written into it. The line ends with `advice` ('export
  elsewhere') and WORKDIR/`folder` as an example. None or '' (no output asked for): nothing."""
  workdir = run_holding_checkpoints(out) if out else None
  if workdir is not None:
    raise UserError(f'{flag} {out}: inside the checkpoints folder of the run {workdir}, '
                    'which holds only its saved steps (the run deletes old steps with what '
                    f'they hold); {advice} (e.g. {workdir}/{folder})')


def refuse_a_run(out: Optional[str], advice: str, folder: str, flag: str = '--out') -> None:
  """UserError when the output folder `out` (of the command-line `flag`) is a training run's
  workdir (`is_run`): files written there would sit beside its checkpoints and logs, and the
  next reader of the run would take them for its own. The line ends with `advice` ('export
  elsewhere') and WORKDIR/`folder` as an example. None or '': nothing."""
  if out and is_run(out):
    raise UserError(f'{flag} {out}: the workdir of a training run; {advice} (e.g. '
                    f'{os.path.join(out, folder)})')


def run_holding_checkpoints(path: str) -> Optional[str]:
  """The workdir of the run whose WORKDIR/checkpoints folder `path` is or lies under, spelt as
  `path` spells it where that shows the folder, else as its real path (`path` reaching the
  folder through a symbolic link); None when no run holds it (a folder only named
  `checkpoints`, `is_run`). The deepest such folder is taken."""
  for spelt in (os.path.normpath(path), os.path.realpath(path)):
    head, tail = os.path.split(spelt)
    while tail:
      workdir = head or os.curdir
      if tail == 'checkpoints' and is_run(workdir):
        return workdir
      head, tail = os.path.split(head)
  return None


def is_run(workdir: str) -> bool:
  """Whether `workdir` is a training run's: it holds the lock or the batch contract that every
  trainer writes before its first step (a folder of saved steps alone may be anyone's)."""
  return any(os.path.exists(os.path.join(workdir, f)) for f in (LOCK_FILE, 'batch_contract.json'))


def training_now(workdir: str) -> Optional[str]:
  """'process PID on HOST' when the process `WORKDIR/.lock` names (its last holder) still runs
  on this host, else None. Reads only, without locking: a reader (export, fine-tuning) must
  never make a trainer starting at that moment find the workdir in use."""
  try:
    with open(os.path.join(workdir, LOCK_FILE), encoding='utf-8', errors='replace') as f:
      text = f.read(4096).split()
  except OSError:
    return None
  holder = dict(zip(text[::2], text[1::2]))
  return f'process {holder["pid"]} on {holder["host"]}' if _alive_here(holder) else None


def _alive_here(holder: dict) -> bool:
  """Whether the lock file's holder {'pid', 'host', 'started'} is another process running on
  this host. 'started' (`_started`) tells the holder from a later process given its pid again;
  a lock file without it (or a host without /proc) takes any process with that pid for it."""
  pid = holder.get('pid', '')
  if not (holder.get('host') == socket.gethostname() and pid.isdigit()
          and int(pid) != os.getpid() and atomic_write.process_alive(int(pid))):
    return False
  now = _started(int(pid))
  return 'started' not in holder or now is None or now == holder['started']


def _started(pid: int) -> Optional[str]:
  """'BOOT_ID:TICKS', when process `pid` started (proc(5): /proc/PID/stat's 22nd field, clock
  ticks since boot, and the boot's id): the same pair only for the same process. None where
  /proc does not say."""
  try:
    with open(f'/proc/{pid}/stat', encoding='ascii', errors='replace') as f:
      fields = f.read().rsplit(')', 1)[1].split()  # The name, in parentheses, may hold spaces.
    with open('/proc/sys/kernel/random/boot_id', encoding='ascii') as f:
      boot = f.read().strip()
    return f'{boot}:{fields[19]}'
  except (OSError, IndexError):
    return None


def _acquire(path: str) -> tuple[Optional[int], Optional[str]]:
  """(open descriptor holding the lock, None), or (None, 'process PID on HOST') when held."""
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  text = os.pread(fd, 4096, 0).decode(errors='replace').split()
  holder = dict(zip(text[::2], text[1::2]))
  named = f'process {holder.get("pid", "?")} on {holder.get("host", "?")}'
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    return None, named
  except OSError:
    # A file system without flock (some network mounts): the pid it names, when that process
    # still runs on this host, holds it (a reused pid can refuse wrongly: the path says where).
    if _alive_here(holder):
      os.close(fd)
      return None, f'{named} (per {path}, as this file system has no flock)'
  os.ftruncate(fd, 0)
  started = _started(os.getpid())
  stamp = f'started {started}\n' if started else ''
  os.pwrite(fd, f'pid {os.getpid()}\nhost {socket.gethostname()}\n{stamp}'.encode(), 0)
  return fd, None


class Preempted(SystemExit):
  """Raised after the preemption save: a SystemExit with status 0, so an entry point stops
  without further work (no final evaluation or export) and reports success."""

  def __init__(self, step: int):
    super().__init__(0)
    self.step = step


class StopSignal:
  """SIGTERM/SIGINT -> stop after the current step, on the same step on every process.

  One process: a Python handler sets a flag. Several processes: SIGTERM is left to JAX's
  preemption service (`jax.distributed` installs its own notifier, which a Python handler would
  replace), whose sync point is the same step on all hosts; a SIGINT flag is agreed on with an
  all-gather at the steps the loop names as sync steps (its logging steps), so every process
  sees the same answer at the same step. A second signal restores the default behaviour.

  The loop never stops at its last step (`total_steps`): a signal with no step left to stop at
  before it lets the run finish as usual, final evaluation and save included, and its line says
  so. `sync_every` is the loop's sync interval (0: none), where a SIGINT of several processes
  can stop. Either may be None (not known): the line then says nothing of the last step.

  A signal the loop did not stop for (the block ends without an exception: the run finished)
  is passed on to the handler this one replaced when that is a program's own, such as the
  study's worker, which runs one training after another and must not start the next one; a
  second signal passes the first on to it too before it has the second. Python's and vit's
  defaults (`_passes_on`) are not given it: a plain trainer still finishes and exits 0.
  """

  def __init__(self, total_steps: Optional[int] = None, sync_every: Optional[int] = None):
    self.received: Optional[int] = None
    self.total_steps, self.sync_every = total_steps, sync_every
    self.start: Optional[int] = None  # The step restored (0: a new run), once the loop knows.
    self._previous = {}
    self._stepped: Optional[int] = None  # The last step asked about (None: none has run).
    self._passed_on = False  # Whether the first signal went on to the replaced handler.

  def __enter__(self) -> 'StopSignal':
    signals = [signal.SIGINT]
    if jax.process_count() == 1:
      signals.append(signal.SIGTERM)
    try:
      for sig in signals:
        previous = signal.signal(sig, self._handle)
        # vit.cli's one line for a SIGTERM of the start-up is for the start-up only: after the
        # loop, and for a second signal, the default ends the process (at once, even one stuck
        # in native code).
        self._previous[sig] = (signal.SIG_DFL if getattr(previous, 'vit_start_up', False)
                               else previous)
    except ValueError:  # Not the main thread (e.g. a test runner's worker): no handlers.
      pass
    if vit.interrupted:  # A Ctrl-C of the start-up that Python dropped (vit/__init__.py).
      vit.interrupted = False
      self._handle(signal.SIGINT, None)
    return self

  def __exit__(self, exc_type, *exc) -> None:
    previous, self._previous = self._previous, {}
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    if exc_type is None and self.received is not None:
      self._pass_on(previous, self.received, None)

  @staticmethod
  def _passes_on(handler) -> bool:
    """Whether `handler`, replaced by this one, is given a signal the loop did not stop for:
    a program's own Python handler, not SIG_DFL or SIG_IGN, nor Ctrl-C's KeyboardInterrupt
    (Python's, or vit/__init__.py's that also records it), nor vit/__init__.py's line for a
    SIGTERM of the imports (vit.cli's start-up handler is already SIG_DFL here)."""
    return (callable(handler) and handler is not signal.default_int_handler
            and handler is not vit._record_ctrl_c
            and not getattr(handler, 'vit_while_importing', False))

  def _pass_on(self, previous: dict, signum: int, frame) -> None:
    """The first signal to the handler it replaced (`_passes_on`), once."""
    handler = previous.get(signum)
    if self._passes_on(handler) and not self._passed_on:
      self._passed_on = True
      handler(signum, frame)

  def _handle(self, signum, frame) -> None:
    if self.received is not None:  # A second signal: the user insists.
      self._pass_on(self._previous, self.received, frame)  # The first, which it has not seen.
      signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
      os.kill(os.getpid(), signum)
      return
    self.received = signum
    total = self.total_steps
    if self._no_stop_left():
      when = (f'the run is at its last step ({total} of {total}): it finishes as usual, final '
              'evaluation and save included' if jax.process_count() == 1 else
              f'no logging step, where every process can agree to stop, is left before the last '
              f'({total}): the run finishes as usual, final evaluation and save included')
    elif self._stepped is None:  # Restoring or compiling: the first step still runs, then saves.
      when = 'start-up is not over: the first step runs (once compiled), then the run saves'
    elif jax.process_count() > 1:  # SIGINT is agreed on at the loop's sync (logging) steps.
      when = 'stopping at the next logging step, on which every process agrees, then saving'
    else:
      when = 'finishing the current step, then saving'
    # The leading newline ends a line the terminal began with '^C'.
    logger.info('\n%s received: %s', signal.Signals(signum).name, when)

  def _no_stop_left(self) -> bool:
    """Whether no step the loop can stop at is left: those from the next it asks about up to
    the one before the last, of several processes only the sync steps. False when unknown."""
    first = self._stepped if self._stepped is not None else self.start
    if self.total_steps is None or first is None:
      return False
    first += 1
    if jax.process_count() == 1:
      return first >= self.total_steps
    if self.sync_every is None:
      return False
    if not self.sync_every:
      return True
    next_sync = -(-first // self.sync_every) * self.sync_every
    return next_sync >= self.total_steps

  def should_stop(self, step: int, sync: bool) -> bool:
    """Call at every step on every process."""
    self._stepped = step
    if jax.process_count() == 1:
      return self.received is not None
    if multihost_utils.reached_preemption_sync_point(step):
      return True
    if not sync:
      return False
    flags = multihost_utils.process_allgather(np.int32(self.received is not None))
    return bool(np.any(flags))
