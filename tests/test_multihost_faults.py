"""Faults in a run of two real processes (jax.distributed, gloo on 127.0.0.1): both agree on
what they resume from, and a lost process is told in one line, not waited for.
"""
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from vit.testing import commands, ports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
# A tiny supervised run on Fashion-MNIST (8 px, one block): checkpoints every 4 steps.
TINY = [*commands.TINY_SUPERVISED, '--config.log_every=2', '--config.checkpoint_every=4']


# Process 1 stops at step 10 once its checkpoint of step 8 is complete and waits there to be
# killed: a kill that lands at a known point, however loaded the machine (the other process, at
# step 11's first collective, cannot run ahead of it).
_PAUSED_AT_10 = commands.paused_train(10)


def _start(workdir, total_steps, port, paused=None, extra=()):
  """`supervised.train` as processes 0 and 1 of one job on the coordinator `port`, with the
  flags `extra`; process `paused` (if any) runs _PAUSED_AT_10."""
  return [subprocess.Popen(
      [sys.executable, *(['-c', _PAUSED_AT_10] if i == paused else ['-m', 'supervised.train']),
       *TINY, f'--workdir={workdir}', f'--config.total_steps={total_steps}',
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}',
       *extra],
      cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]


def _finish(procs, timeout=900):
  """Both processes' CompletedProcess; a hang (the fault under test) ends at `timeout`."""
  try:
    outputs = [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return [subprocess.CompletedProcess(p.args, p.returncode, *out)
          for p, out in zip(procs, outputs)]


def _train(workdir, total_steps):
  with ports.reserved() as port:  # Held until both have ended: no other process takes it.
    return _finish(_start(workdir, total_steps, port))


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """(workdir, both processes' CompletedProcess) of an uninterrupted run of 16 steps that
  started below a save cut short (orbax's temporary folder of step 2, no step folder): the
  reference the killed run's resumption must end at, and the run whose warning and checksums
  the damaged step's test reads, then copies. One run for both: each is ~10 CPU-s of imports and
  tracing, where the steps themselves cost little."""
  workdir = tmp_path_factory.mktemp('straight') / 'run'
  (workdir / 'checkpoints' / '2.orbax-checkpoint-tmp' / 'state').mkdir(parents=True)
  return workdir, _train(workdir, 16)


def test_a_step_damaged_for_one_process_only_is_skipped_by_both(straight, tmp_path):
  """Each process reads its own data iterator file: with process 1's cut short, process 0 could
  restore the newest step while process 1 fell back to the previous one, and the two then waited
  for each other at their first collective forever. Both skip the step, and process 0 names
  process 1's reason. (A step with its checksums fails the check on both: the case is a step
  saved without them.)

  Its first run also starts below a save cut short (orbax's temporary folder, no step folder),
  told in one warning: every process of a job said it, naming the same folder, which process 0
  alone removes (orbax's primary host). Process 0 says it now, once; process 1 not at all."""
  original, (first, second) = straight
  partial = original / 'checkpoints' / '2.orbax-checkpoint-tmp'  # A first save killed half-way.
  for proc in (first, second):
    assert proc.returncode == 0, proc.stderr[-3000:]
  warning = (f'warning: {original}: its newest checkpoint step 2 was never completed (its save '
             f'was interrupted, leaving {partial}, which orbax now removes); starting from step '
             '0, as no step was saved before it')
  assert first.stderr.splitlines().count(warning) == 1, first.stderr[-3000:]
  assert 'never completed' not in second.stderr, second.stderr[-3000:]
  assert sorted(os.listdir(original / 'checkpoints')) == ['12', '16', '8']  # The 3 kept.
  # Process 0 saved the CRC-32s of both processes' files (vit/step_checksums.py), which each
  # process checks whole: a damaged file named there fails both at once.
  listed = json.loads((original / 'checkpoints' / '16' / 'checksums.json').read_text())['files']
  assert {'data/process_0-of-2.json', 'data/process_1-of-2.json'} <= set(listed)
  assert {name.split('/')[1] for name in listed if name.startswith('state/ocdbt.')} == {
      'ocdbt.process_0', 'ocdbt.process_1'}
  # A copy to damage: the killed run's test compares with the original's parameters.
  workdir = tmp_path / 'run'
  shutil.copytree(original, workdir)
  checkpoints = workdir / 'checkpoints'
  shutil.copytree(checkpoints / '16', checkpoints / '18')  # A newer step, damaged for process 1,
  os.remove(checkpoints / '18' / 'checksums.json')  # saved without checksums, as before them:
  own = checkpoints / '18' / 'data' / 'process_1-of-2.json'
  own.write_bytes(own.read_bytes()[:own.stat().st_size // 2])
  first, second = _train(workdir, 20)
  reason = 'data/process_1-of-2.json is not valid JSON (cut short or overwritten)'
  for proc, told in ((first, f'process 1: {reason}'), (second, reason)):
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (f'warning: checkpoint {checkpoints}/18 is unreadable ({told}); trying the previous '
            f'one') in proc.stderr
    assert f'resumed from {workdir} at step 16' in proc.stdout and 'step 20/20' in proc.stdout
  assert sorted(os.listdir(checkpoints)) == ['12', '16', '20']
  assert [n.split('.')[0] for n in os.listdir(f'{checkpoints}.damaged')] == ['18']


def test_a_killed_process_stops_the_other_in_one_line_and_the_rerun_resumes(straight, tmp_path):
  """SIGKILL of process 1 mid-run: process 0 learns of it at its next collective (gloo's
  connection closes) or, waiting at a save's barrier, when process 1 has shown no sign of life
  for 60 s (vit/distributed.py `watch_processes`). It said so in a traceback and then hung in
  jax's exit until the heartbeat timeout aborted it with a stack dump (exit -6, ~90 s); now it is
  one line, exit 2. The rerun resumes from the last complete checkpoint and ends bitwise where
  an uninterrupted run does."""
  import jax
  import numpy as np
  from vit import checkpoints
  straight, procs = straight
  workdir = tmp_path / 'run'
  for proc in procs:
    assert proc.returncode == 0, proc.stderr[-3000:]
  with ports.reserved() as port:
    survivor, victim = _start(workdir, 16, port, paused=1)
    for line in victim.stdout:  # Process 1 waits at step 10, its checkpoint of step 8 complete.
      if line.strip() == 'paused at step 10':
        break
    else:
      _finish([survivor, victim])
      raise AssertionError(f'process 1 ended before step 10 (exit {victim.returncode})')
    victim.kill()
    survivor_done, _ = _finish([survivor, victim], timeout=900)
  stderr = survivor_done.stderr
  assert survivor_done.returncode == 2, stderr[-3000:]
  assert 'Traceback' not in stderr and 'Fatal Python error' not in stderr, stderr[-3000:]
  told = [line for line in stderr.splitlines() if line.startswith('error:')]
  assert len(told) == 1 and told[0] == stderr.strip().splitlines()[-1], stderr[-3000:]
  saved = sorted(int(n) for n in os.listdir(workdir / 'checkpoints') if n.isdigit())
  assert saved[-1] == 8, saved
  assert told[0].startswith('error: process 1 of this 2-process job is gone (')
  assert told[0].endswith(
      f'); process 0 stopped; the last complete checkpoint is {workdir}/checkpoints/{saved[-1]}; '
      f'restart every process with the same command to resume')
  for proc in _train(workdir, 16):
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'resumed from {workdir} at step {saved[-1]}' in proc.stdout
  resumed, expected = checkpoints.restore_params(str(workdir)), checkpoints.restore_params(
      str(straight))
  assert jax.tree.structure(resumed) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)


def test_a_frozen_process_is_told_by_the_watch_once_silent_for_lost_process_after(tmp_path):
  """A process that is stopped (SIGSTOP: its sockets stay open, so no collective fails) leaves
  process 0 waiting at step 11's collective: the watch of signs of life ends process 0 in one
  line once process 1 has been silent for --lost_process_after seconds."""
  import signal
  workdir = tmp_path / 'run'
  with ports.reserved() as port:
    procs = _start(workdir, 16, port, paused=1, extra=['--lost_process_after=20'])
    survivor, victim = procs
    try:
      for line in victim.stdout:  # Process 1 waits at step 10, its checkpoint of step 8 complete.
        if line.strip() == 'paused at step 10':
          break
      victim.send_signal(signal.SIGSTOP)
      survivor_done = _finish([survivor], timeout=900)[0]
    finally:
      victim.kill()
      _finish([victim])
  stderr = survivor_done.stderr
  assert survivor_done.returncode == 2, stderr[-3000:]
  assert 'Traceback' not in stderr, stderr[-3000:]
  assert stderr.strip().splitlines()[-1] == (
      'error: process 1 of this 2-process job is gone (no sign of life for 20 s: killed, crashed '
      f'or its host lost); process 0 stopped; the last complete checkpoint is '
      f'{workdir}/checkpoints/8; restart every process with the same command to resume'), stderr


def test_a_held_workdir_refuses_both_processes_naming_its_holder(tmp_path):
  """Process 0 takes the workdir's lock for the job; every process stops in one line naming
  the holder (process 1 said only 'the run that process 0 found there')."""
  from vit import checkpoints
  workdir = tmp_path / 'run'
  workdir.mkdir()
  fd, refused = checkpoints._acquire(str(workdir / checkpoints.LOCK_FILE))  # Held by this test.
  assert refused is None
  try:
    procs = _train(workdir, 4)
  finally:
    os.close(fd)
  holder = f'process {os.getpid()} on {socket.gethostname()}'
  for proc in procs:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f'error: --workdir {workdir}: in use by {holder}; a second run on it would overwrite '
        f'its checkpoints'), proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
  assert not (workdir / 'checkpoints').exists()


def test_the_watch_of_lost_processes_is_set_by_its_flag():
  # Library use (no flags parsed): the default; a negative time is one line naming the flag; 0
  # (and a single-process job, as here) starts no thread.
  import threading

  from vit import distributed
  from vit.errors import UserError
  with pytest.raises(UserError, match=r'^--lost_process_after=-1.0: must be 0'):
    distributed.watch_processes(None, -1.0)
  before = threading.active_count()
  distributed.watch_processes(None, 0.0)
  distributed.watch_processes(None)
  assert threading.active_count() == before


def test_the_stop_line_says_resume_only_when_a_checkpoint_is_there(tmp_path):
  """No step saved yet: the restart starts from step 0, so the line does not promise a resume."""
  from vit import distributed
  line = distributed._stopped('process 1', 'killed', str(tmp_path))
  assert line.endswith(f'no complete checkpoint is in {tmp_path}/checkpoints; restart every '
                       'process with the same command to start again'), line
  (tmp_path / 'checkpoints' / '4').mkdir(parents=True)
  line = distributed._stopped('process 1', 'killed', str(tmp_path))
  assert line.endswith(f'the last complete checkpoint is {tmp_path}/checkpoints/4; restart every '
                       'process with the same command to resume'), line
