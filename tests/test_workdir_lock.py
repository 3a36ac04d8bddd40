"""Two runs on one workdir: the second start is refused in one line naming the workdir and the
process holding it; the lock of a killed process never blocks a resume.

Real processes: run A is `supervised.train` paused at step 3 (it says so on stdout, after its
step-2 checkpoint), so the second start meets it in a known state, whatever the machine's load.
"""
import os
import signal
import socket
import subprocess
import sys

import pytest

from vit import checkpoints
from vit.errors import UserError
from vit.testing import commands

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
ARGS = [*commands.TINY_SUPERVISED, '--config.log_every=2', '--config.checkpoint_every=2',
        '--config.total_steps=6']

# supervised.train, paused after step 3 until killed, once its step-2 checkpoint is complete
# (the save runs in the background: on a loaded machine it could still be a temporary folder).
_PAUSED_TRAIN = commands.paused_train(3)


def test_a_second_run_is_refused_and_a_killed_runs_lock_is_not(tmp_path):
  workdir = str(tmp_path / 'run')
  first = subprocess.Popen([sys.executable, '-c', _PAUSED_TRAIN, f'--workdir={workdir}', *ARGS],
                           cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
  try:
    for line in first.stdout:
      if line.strip() == 'paused at step 3':
        break
    else:
      raise AssertionError(first.communicate(timeout=900)[1][-3000:])
    second = subprocess.run([sys.executable, '-m', 'supervised.train', f'--workdir={workdir}',
                             *ARGS], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=900)
    assert second.returncode == 2 and 'Traceback' not in second.stderr, second.stderr[-3000:]
    assert second.stderr.strip().splitlines() == [
        f'error: --workdir {workdir}: in use by process {first.pid} on {socket.gethostname()}; '
        f'a second run on it would overwrite its checkpoints: wait for it to end or stop it '
        f'(its lock goes with it), or use another --workdir']
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2']
  finally:
    first.send_signal(signal.SIGKILL)  # No handler runs: its lock file stays behind.
    first.communicate(timeout=60)
  assert f'pid {first.pid}' in open(os.path.join(workdir, checkpoints.LOCK_FILE)).read()
  resumed = subprocess.run([sys.executable, '-m', 'supervised.train', f'--workdir={workdir}',
                            *ARGS], cwd=ROOT, env=ENV, capture_output=True, text=True,
                           timeout=900)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'resumed from {workdir} at step 2' in resumed.stdout
  assert '6' in os.listdir(os.path.join(workdir, 'checkpoints'))
  # The same command once more, on the finished run: nothing to train, said in one line, exit 0.
  done = subprocess.run([sys.executable, '-m', 'supervised.train', f'--workdir={workdir}', *ARGS],
                        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0 and 'Traceback' not in done.stderr, done.stderr[-3000:]
  assert (f'note: workdir {workdir} already holds step 6 >= total_steps 6; nothing to train '
          f'(raise --config.total_steps to continue)') in done.stdout.splitlines()
  assert 'step 6/6' not in done.stdout


def test_the_lock_is_held_for_the_block_only(tmp_path):
  with checkpoints.workdir_lock(str(tmp_path)):
    with pytest.raises(UserError, match=rf'^--workdir {tmp_path}: in use by process '
                                        rf'{os.getpid()} on '):
      with checkpoints.workdir_lock(str(tmp_path)):
        pass
  with checkpoints.workdir_lock(str(tmp_path)):  # Released: a later run takes it.
    pass


def test_without_flock_a_live_holders_pid_refuses_and_a_dead_ones_does_not(tmp_path,
                                                                            monkeypatch):
  import errno
  import fcntl

  def no_flock(fd, operation):
    raise OSError(errno.ENOLCK, 'No locks available')  # As on some network file systems.

  holder = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.readline()'],
                            stdin=subprocess.PIPE)
  try:
    (tmp_path / checkpoints.LOCK_FILE).write_text(
        f'pid {holder.pid}\nhost {socket.gethostname()}\n')
    monkeypatch.setattr(fcntl, 'flock', no_flock)
    with pytest.raises(UserError, match=rf'in use by process {holder.pid} on .* \(per '
                                        rf'{tmp_path}/\.lock, as this file system has no flock\)'):
      with checkpoints.workdir_lock(str(tmp_path)):
        pass
  finally:
    holder.kill()
    holder.wait()
  with checkpoints.workdir_lock(str(tmp_path)):  # Its process is gone: the run goes ahead.
    assert f'pid {os.getpid()}' in (tmp_path / checkpoints.LOCK_FILE).read_text()


def test_a_reader_of_a_run_that_has_saved_nothing_yet_is_told_it_is_training(tmp_path):
  """A fine-tune or export aimed at a run that is training but has no step yet said only 'no
  checkpoint found'; it now says that the run is training and when it will have a step. A
  workdir whose lock names no live process is a run stopped before its first save, and its line
  says what a reader expected."""
  other = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.readline()'],
                           stdin=subprocess.PIPE)
  lock = tmp_path / checkpoints.LOCK_FILE
  lock.write_text(f'pid {other.pid}\nhost {socket.gethostname()}\n'
                  f'started {checkpoints._started(other.pid)}\n')
  plain = f'{tmp_path}: no checkpoint found under {tmp_path}/checkpoints'
  try:
    with pytest.raises(UserError) as error:
      checkpoints.read_params(str(tmp_path))
    assert str(error.value) == (
        f'{plain} yet; its run is training now (process {other.pid} on '
        f'{socket.gethostname()}): use it once it has saved its first step '
        '(config.checkpoint_every)')
  finally:
    other.kill()
    other.wait()
  with pytest.raises(UserError) as error:
    checkpoints.read_params(str(tmp_path))
  assert str(error.value) == (
      f'{plain} (its run stopped before saving a step); expected a run directory, the --workdir '
      'of a trainer, holding its saved steps (checkpoints/STEP/)')


def test_a_reused_pid_is_not_taken_for_the_lock_holder(tmp_path):
  """The lock names its holder's start time: a later process given the same pid (here: a live
  process whose start time differs from the one written) is not 'training now'; a lock file of
  an older version (no start time) still takes the live pid for its holder."""
  other = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.readline()'],
                           stdin=subprocess.PIPE)
  lock = tmp_path / checkpoints.LOCK_FILE
  named = f'pid {other.pid}\nhost {socket.gethostname()}\n'
  try:
    started = checkpoints._started(other.pid)
    boot, ticks = started.split(':')
    lock.write_text(named + f'started {started}\n')
    assert checkpoints.training_now(str(tmp_path)) == (f'process {other.pid} on '
                                                       f'{socket.gethostname()}')
    lock.write_text(named + f'started {boot}:{int(ticks) - 1}\n')
    assert checkpoints.training_now(str(tmp_path)) is None
    lock.write_text(named)
    assert checkpoints.training_now(str(tmp_path)) is not None
  finally:
    other.kill()
    other.wait()
  assert checkpoints.training_now(str(tmp_path)) is None
  with checkpoints.workdir_lock(str(tmp_path)):
    assert lock.read_text() == (f'pid {os.getpid()}\nhost {socket.gethostname()}\n'
                                f'started {checkpoints._started(os.getpid())}\n')


def test_two_starts_at_once_never_touch_each_others_write_probe(tmp_path):
  """Before the lock, a start checks that the workdir can be written; another start may be at
  that very check: its probe file stays as it is, so that the later start is refused by the
  lock (naming the first), not by a probe that vanished under it."""
  from vit.training import loop
  probe = tmp_path / '.write_probe_0'  # Another start's, written and not yet removed.
  probe.write_text('theirs')
  loop._check_workdir(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ['.write_probe_0'] and probe.read_text() == 'theirs'
