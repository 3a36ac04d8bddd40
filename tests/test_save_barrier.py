"""vit/save_barrier.py on an in-memory key-value store with jax.distributed's semantics (two
"processes" are two `Barriers` on one store, in two threads). The real thing, two processes of
which one cannot save, is tests/test_full_disk.py's two-process test."""
import inspect
import threading

import jax
import orbax.checkpoint as ocp
import pytest

from vit import save_barrier


class _Store:
  """jax.distributed's client methods that Barriers uses, in memory."""

  def __init__(self):
    self.values, self.changed = {}, threading.Condition()

  def key_value_set(self, key, value, allow_overwrite=False):
    with self.changed:
      assert allow_overwrite or key not in self.values, key
      self.values[key] = value
      self.changed.notify_all()

  def key_value_increment(self, key, increment):
    with self.changed:
      self.values[key] = str(int(self.values.get(key, '0')) + increment)
      self.changed.notify_all()
      return int(self.values[key])

  def key_value_dir_get(self, prefix):
    with self.changed:
      return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]

  def key_value_delete(self, key):  # The key and everything under it, as jax's.
    with self.changed:
      for k in [k for k in self.values if k == key or k.startswith(key + '/')]:
        del self.values[k]

  def blocking_key_value_get(self, key, timeout_ms):
    with self.changed:
      if not self.changed.wait_for(lambda: key in self.values, timeout_ms / 1000):
        raise jax.errors.JaxRuntimeError(f'DEADLINE_EXCEEDED: GetKeyValue() timed out: {key}')
      return self.values[key]


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
  monkeypatch.setattr(save_barrier, '_POLL_MS', 10)


def _pair(store):
  return [save_barrier.Barriers('/w/checkpoints', store, process=i, count=2) for i in range(2)]


def test_barriers_pass_together_and_leave_no_keys():
  store = _Store()
  first, second = _pair(store)
  keys = ['set_value_start', 'async_write_complete.8', 'set_value_start']  # One key reused.
  thread = threading.Thread(target=lambda: [first(key=k, timeout_ms=60_000) for k in keys])
  thread.start()
  for k in keys:
    second(key=k, timeout_ms=60_000)
  thread.join()
  assert store.values == {}


def test_a_published_failure_ends_the_waits_of_the_others():
  store = _Store()
  waiting, failed = _pair(store)
  assert waiting.failure() is None
  failed.publish(8, 'File too large')
  with pytest.raises(save_barrier.SaveAborted, match='^process 1 could not save step 8$') as e:
    waiting(key='async_write_complete.8', timeout_ms=60_000)
  assert (e.value.process, e.value.step, e.value.reason) == (1, 8, 'File too large')
  with pytest.raises(save_barrier.SaveAborted):  # The failed process's own barriers too.
    failed(key='set_value_start', timeout_ms=60_000)


def test_a_barrier_nobody_joins_times_out():
  alone, _ = _pair(_Store())
  with pytest.raises(TimeoutError, match='barrier set_value_start: not every process arrived'):
    alone(key='set_value_start', timeout_ms=50)


def test_orbax_finalizes_as_checkpoints_manager_expects():
  """vit/checkpoints.py `Manager` overrides two of orbax's own methods: a save's finalize thread
  must wait for the writes (where a failure is published) before its barrier of all processes.
  A newer orbax that changes this fails here, not by hanging a two-process run."""
  source = inspect.getsource(ocp.CheckpointManager._finalize)
  assert 0 < source.index('self._wait_for_checkpointers()') < source.index(
      'self._save_progress_tracker.set(False)')
  assert 'self._finalize' in inspect.getsource(ocp.CheckpointManager.save)
