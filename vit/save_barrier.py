"""orbax's barriers for a run of several processes, which give up once one process's save failed.

orbax completes an asynchronous save in background threads that wait, at barriers, for every
process's writes (`AsyncOptions.barrier_sync_fn`). A process whose write failed (its own disk
full or failing, its own file size limit, no permission) never arrives at the first of them, and
jax's barrier would hold the other processes until its timeout, 20 minutes. Here the failed
process publishes its failure on jax.distributed's key-value store (`Barriers.publish`,
vit/checkpoints.py `Manager`), and a barrier that waits checks that store every `_POLL_MS` and
raises `SaveAborted` once a failure is there: every process's save threads end within a second,
and the training loop stops all of them at one step (vit/checkpoints.py `check_saves`).
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Optional

import jax
# The coordination service's client, which jax does not export; orbax reaches it the same way.
from jax._src import distributed

_POLL_MS = 500  # How long a barrier waits before it looks for a published failure again.


class SaveAborted(Exception):
  """Raised at a barrier: process `process` could not save `step` (`reason`), so it will never
  arrive."""

  def __init__(self, process: int, step: int, reason: str):
    super().__init__(f'process {process} could not save step {step}')
    self.process, self.step, self.reason = process, step, reason


class Barriers:
  """orbax's BarrierSyncFn (`__call__`) for the saves into one checkpoint directory, and the
  failures published for them; the keys live under `vit_saves<directory>` on the store.

  A barrier is a counter that each process increments on arrival; the last one to arrive sets
  `<name>/done`, which the others wait for, and the last one to leave deletes the keys. orbax
  passes the same key at every save for some barriers: a per-key round numbers them.
  """

  def __init__(self, directory: str, client=None, process: Optional[int] = None,
               count: Optional[int] = None):
    """`client`, `process`, `count`: jax.distributed's client, this process's index and the
    process count, unless given (tests)."""
    self._client = client or distributed.global_state.client
    self._process = jax.process_index() if process is None else process
    self._count = jax.process_count() if count is None else count
    self._root = f'vit_saves{directory}'
    self._rounds = collections.Counter()
    self._lock = threading.Lock()  # orbax calls barriers from its threads and the main one.

  def publish(self, step: int, reason: str) -> None:
    """This process's save of `step` failed: every barrier waiting now or later gives up."""
    self._client.key_value_set(f'{self._root}/failed/{self._process}',
                               f'{step} {reason}', allow_overwrite=True)

  def failure(self) -> Optional[SaveAborted]:
    """The published failure of the lowest process index, or None."""
    published = {int(key.rsplit('/', 1)[1]): value for key, value in
                 self._client.key_value_dir_get(f'{self._root}/failed/')}
    if not published:
      return None
    process = min(published)
    step, reason = published[process].split(' ', 1)
    return SaveAborted(process, int(step), reason)

  def __call__(self, *, key: str, timeout_ms: int) -> None:
    with self._lock:
      self._rounds[key] += 1
      name = f'{self._root}/barrier/{key}/{self._rounds[key]}'
    if self._client.key_value_increment(name, 1) == self._count:
      self._client.key_value_set(f'{name}/done', '')
    deadline = time.monotonic() + timeout_ms / 1000
    while not self._done(name):
      failure = self.failure()
      if failure is not None:
        raise failure
      if time.monotonic() > deadline:
        raise TimeoutError(f'barrier {key}: not every process arrived within '
                           f'{timeout_ms / 1000:.0f} s')
    if self._client.key_value_increment(f'{name}/left', 1) == self._count:
      self._client.key_value_delete(name)  # With its `done` and `left`.

  def _done(self, name: str) -> bool:
    try:
      self._client.blocking_key_value_get(f'{name}/done', _POLL_MS)
      return True
    except jax.errors.JaxRuntimeError as e:
      if 'DEADLINE_EXCEEDED' not in str(e):
        raise
      return False
