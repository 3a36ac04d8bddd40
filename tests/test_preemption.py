"""Preemption: SIGTERM/SIGINT finish the step, save, exit 0; the same command resumes.

- SIGTERM to a real `python -m supervised.train` (SIGINT and bitwise exactness after the stop
  are in tests/test_checkpoints.py).
- Two JAX processes (`jax.distributed` on CPU with gloo): a signal to one of them stops both at
  the same step, through JAX's preemption service for SIGTERM and the all-gather at sync steps
  for SIGINT. This file is also that worker script (`python tests/test_preemption.py ...`).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from vit.testing import commands, ports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# `python -m supervised.train ARGS` that stops at step STEP (before it asks whether to stop),
# says so, and goes on only once its stop handler has run: the signal meets the trainer at a
# known step, whatever the load (a signal sent on a printed line could land after the run's
# last step).
_PAUSED_AT = """
import time
from supervised import train
from vit import checkpoints, cli
""" + commands.COUNT_HANDLED_SIGNALS + """
check_saves = checkpoints.check_saves
def paused(mngr, step, sync):
  check_saves(mngr, step, sync)
  if step == STEP:
    print('paused at step STEP', flush=True)
    while not handled:  # Until the parent's signal has been handled.
      time.sleep(0.05)
checkpoints.check_saves = paused
cli.define_config_flags('configs/supervised/fashion_mnist.py')
cli.run(train.main)
"""
_PAUSED_AT_7 = _PAUSED_AT.replace('STEP', '7')


def test_sigterm_saves_exits_zero_and_resumes(tmp_path):
  from benchmarks import chaos
  workdir = str(tmp_path)
  args = chaos.command(workdir, 20)[3:]  # After `python -m supervised.train`.
  proc = subprocess.Popen([sys.executable, '-c', _PAUSED_AT_7, *args], cwd=ROOT,
                          env=chaos._env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.strip() == 'paused at step 7':
      proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=900) == 0, ''.join(lines)[-2000:]
  output = ''.join(lines)
  assert 'SIGTERM received: finishing the current step, then saving' in output
  assert f'stopped after step 7 (SIGTERM); saved {workdir}/checkpoints/7; rerun' in output
  assert 'eval step' not in output  # Stopped without the final evaluation.
  assert 'step 8/20' not in output

  again = chaos.run(workdir, 20)
  assert again['rc'] == 0 and again['resumed'] == 7, again['output'][-2000:]
  assert again['last_step'] == 20


def test_a_sigterm_in_the_last_step_says_the_run_finishes_as_usual(tmp_path):
  """A signal in the last step said 'finishing the current step, then saving', and the run then
  evaluated as a finished run does (the loop never stops at its last step: a rerun would find
  the run complete and never evaluate it), which can take long, unsaid. The line says so now."""
  from benchmarks import chaos
  args = chaos.command(str(tmp_path), 3, ['--config.optimizer.warmup_steps=1'])[3:]
  returncode, out, err = commands.signal_at_line(
      [sys.executable, '-c', _PAUSED_AT.replace('STEP', '3'), *args], 'stdout',
      lambda line: line.strip() == 'paused at step 3', signal.SIGTERM, env=chaos._env())
  output = out + err
  assert returncode == 0, output[-2000:]
  assert ('SIGTERM received: the run is at its last step (3 of 3): it finishes as usual, '
          'final evaluation and save included') in output, output[-2000:]
  assert 'eval step 3:' in output and 'stopped after step' not in output
  assert os.listdir(tmp_path / 'checkpoints') == ['3']


def test_the_signal_line_knows_when_no_step_is_left_to_stop_at(caplog, monkeypatch):
  """The loop stops only before its last step, with several processes only at a sync step: a
  signal with none left says the run finishes as usual; one with a step left says it stops."""
  import logging
  import jax
  from vit import checkpoints
  last = ('the run is at its last step (3 of 3): it finishes as usual, final evaluation and '
          'save included')
  with caplog.at_level(logging.INFO, logger=checkpoints.logger.name):
    with checkpoints.StopSignal(3) as stop:
      assert not stop.should_stop(1, sync=False)
      signal.raise_signal(signal.SIGINT)  # During step 2: it stops there.
      assert stop.should_stop(2, sync=False)
    with checkpoints.StopSignal(3) as stop:
      assert not stop.should_stop(2, sync=False)
      signal.raise_signal(signal.SIGINT)  # During step 3, the last.
    with checkpoints.StopSignal(3) as stop:
      stop.start = 2  # Resumed at step 2 and compiling step 3, the last.
      signal.raise_signal(signal.SIGINT)
    with checkpoints.StopSignal(3) as stop:
      assert not stop.should_stop(3, sync=False)
      signal.raise_signal(signal.SIGINT)  # During the final evaluation.
    monkeypatch.setattr(jax, 'process_count', lambda: 2)
    for stepped, sync_every in [(4, 4), (8, 4), (1, 0)]:
      stop = checkpoints.StopSignal(10, sync_every=sync_every)
      stop._stepped = stepped  # Asked at step 4: the sync step 8 is left; at 8, none is.
      stop._handle(signal.SIGINT, None)
  told = [r.getMessage().strip().removeprefix('SIGINT received: ') for r in caplog.records]
  no_sync = ('no logging step, where every process can agree to stop, is left before the last '
             '(10): the run finishes as usual, final evaluation and save included')
  assert told == ['finishing the current step, then saving', last, last, last,
                  'stopping at the next logging step, on which every process agrees, then saving',
                  no_sync, no_sync], told


# `python -m supervised.train ARGS` that stops in its data set-up (opening the training split),
# says so and waits there: a SIGTERM meets the start-up at a known point, whatever the load.
_PAUSED_IN_SET_UP = """
import time
from supervised import objective, train
from vit import cli
from vit.data import pipeline
def paused(*args, **kwargs):
  print('setting up the data', flush=True)
  while True:
    time.sleep(1)
pipeline.make_source = paused
cli.define_config_flags('configs/supervised/fashion_mnist.py', objective=objective.DEFINITION)
cli.run(train.main)
"""


def test_a_sigterm_while_starting_is_one_line(tmp_path):
  """SIGTERM before the loop takes it over (the data set-up, the evaluators' splits, the
  restore) ended the process at once, exit status 143 and not a word; it is one line now,
  naming the run's newest saved step, left as it was, with the same status (a scheduler still
  sees a run that did not finish)."""
  from vit.testing import commands
  step = tmp_path / 'checkpoints' / '4'
  step.mkdir(parents=True)  # A saved step by its name, all the line reads of it.
  returncode, _, err = commands.signal_at_line(
      [sys.executable, '-c', _PAUSED_IN_SET_UP, *commands.TINY_SUPERVISED,
       f'--workdir={tmp_path}'], 'stdout', lambda line: line.strip() == 'setting up the data',
      signal.SIGTERM, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert err.splitlines() == [
      'stopped while starting (SIGTERM): no step was trained, nothing was saved; its newest '
      f'step, {step}, is unchanged; rerun the same command to resume'], err[-2000:]
  assert returncode == 143
  assert os.listdir(tmp_path / 'checkpoints') == ['4'] and os.listdir(step) == []


def test_the_loop_ends_the_start_ups_sigterm_line():
  """The start-up's handler (vit.cli) is not given the signal back after the loop, nor for a
  second signal: the default then ends the process at once, as before, even one stuck in
  native code."""
  from vit import checkpoints, cli
  previous = signal.signal(signal.SIGTERM, cli._terminate)
  try:
    with checkpoints.StopSignal() as stop:
      assert signal.getsignal(signal.SIGTERM) == stop._handle
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
  finally:
    signal.signal(signal.SIGTERM, previous)


_AS_FROM_A_TERMINAL = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)  # Kept across exec, unlike a handler.
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_ctrl_c_while_an_entry_point_imports_is_one_line(tmp_path):
  """Ctrl-C in the seconds an entry point spends importing jax, TF and orbax, before
  vit.cli.run catches it. The child's `-X importtime` lines (about 140 KB after vit's) are read
  up to vit's only: the child then blocks on its full stderr pipe, still importing, whatever the
  load, and the signal meets it there."""
  # A test run started as a background job of a script (`make test &`: bash without job
  # control) starts every child with SIGINT ignored; Python then installs no handler and the
  # signal would be lost (the child went on to train until the timeout). The child is started
  # through an exec that restores what a terminal gives.
  command = [sys.executable, '-X', 'importtime', '-m', 'mpp.train',
             '--config', 'configs/mpp/fashion_mnist.py', '--workdir', str(tmp_path / 'run')]
  # The cue: vit/__init__.py has run, so the hook is in place.
  returncode, out, err = commands.signal_at_line(
      [sys.executable, '-c', _AS_FROM_A_TERMINAL, *command], 'stderr',
      lambda line: re.search(r'\|\s+vit$', line), signal.SIGINT)
  told = [l for l in err.splitlines() if not l.startswith('import time:')]
  assert told == ['interrupted while starting: nothing was written'], err[-2000:]
  assert returncode == -signal.SIGINT  # As Python ends on Ctrl-C: 130 in a shell.
  assert out == '' and not (tmp_path / 'run').exists()


# A Ctrl-C raised inside a garbage-collection callback (jax registers one, run often while it
# is imported): Python drops it ('Exception ignored in ...' and a traceback) and goes on.
_CTRL_C_IN_A_GC_CALLBACK = """
import gc, os, signal, sys
sent = []
def ctrl_c_now(phase, info):
  vit = sys.modules.get('vit')
  if phase == 'start' and not sent and 'jax' in sys.modules and hasattr(vit, '_program_is_ours'):
    sent.append(1)
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(10000):  # The KeyboardInterrupt is raised here, inside the callback.
      pass
gc.callbacks.append(ctrl_c_now)
"""


def test_ctrl_c_that_python_drops_in_a_gc_callback_still_stops(tmp_path):
  """A Ctrl-C that landed in jax's gc callback while it was imported was dropped with a
  traceback, and the run trained to its end; it stops the run as any other Ctrl-C now."""
  (tmp_path / 'hook').mkdir()
  (tmp_path / 'hook' / 'sitecustomize.py').write_text(_CTRL_C_IN_A_GC_CALLBACK)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / 'hook'), ROOT]))
  command = [sys.executable, '-m', 'supervised.train', '--config',
             'configs/supervised/fashion_mnist.py', '--workdir', str(tmp_path / 'run'),
             '--config.total_steps=2', '--config.model.hidden_size=16',
             '--config.model.transformer.num_layers=1', '--config.model.transformer.mlp_dim=32']
  proc = subprocess.run([sys.executable, '-c', _AS_FROM_A_TERMINAL, *command], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=900)  # Bounds a hang.
  assert proc.stderr.splitlines() == ['interrupted while starting: nothing was written'], \
      proc.stderr[-2000:]
  assert proc.returncode == 130 and proc.stdout == '' and not (tmp_path / 'run').exists()


def test_a_dropped_ctrl_c_of_the_start_up_stops_the_loop(monkeypatch):
  """Dropped after vit.cli.run began (building the task, restoring): the loop's stop handler
  takes it as a signal of the start-up, so the run saves after its first step."""
  import vit
  from vit import checkpoints
  monkeypatch.setattr(vit, 'interrupted', True)
  with checkpoints.StopSignal() as stop:
    assert stop.received == signal.SIGINT and not vit.interrupted
    assert stop.should_stop(1, sync=True)


def test_a_library_import_keeps_the_programs_own_excepthook(tmp_path):
  """The one-line hook is for this repository's entry points only: a program that imports vit
  keeps Python's traceback for its own Ctrl-C, run as a script or as `python -m` of another
  package whose __init__ imports vit (as ours do)."""
  (tmp_path / 'other').mkdir()
  (tmp_path / 'other' / '__init__.py').write_text('import vit\n')
  (tmp_path / 'other' / 'tool.py').write_text(
      'import signal, sys\nassert sys.excepthook is sys.__excepthook__\n'
      'assert signal.getsignal(signal.SIGINT) is signal.default_int_handler\n'
      'raise KeyboardInterrupt\n')
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, str(tmp_path)]))
  for program in (['-c', 'import vit, other.tool'], ['-m', 'other.tool']):
    # Through the exec that restores a terminal's SIGINT: under `make test &` the child starts
    # with SIGINT ignored, and Python then installs no default_int_handler to compare with.
    proc = subprocess.run([sys.executable, '-c', _AS_FROM_A_TERMINAL, sys.executable, *program],
                          cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)  # Bounds a hang only.
    assert 'Traceback' in proc.stderr and 'KeyboardInterrupt' in proc.stderr, proc.stderr
    assert 'interrupted while starting' not in proc.stderr


@pytest.mark.parametrize('sig', ['SIGINT', 'SIGTERM'])
def test_two_processes_stop_at_the_same_step(sig):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  with ports.reserved() as port:
    procs = [subprocess.Popen([sys.executable, __file__, str(i), str(port), sig], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
      outputs = [proc.communicate(timeout=900) for proc in procs]  # Bounds a hang only.
    finally:  # A failed case leaves no process behind.
      for proc in procs:
        if proc.poll() is None:
          proc.kill()
          proc.communicate()
  results = []
  for proc, (out, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-2000:]
    results.append(json.loads(out.strip().splitlines()[-1]))
  # Process 1 alone is signalled at step 4; with sync steps every 3, SIGINT is agreed on at 6.
  # SIGTERM's sync point is the step after the largest any process had reached when the
  # notice spread: later, but the same on both.
  assert results[0]['stopped_at'] is not None, results
  assert results[0]['stopped_at'] == results[1]['stopped_at'], results
  if sig == 'SIGINT':
    assert results[0]['stopped_at'] == 6 and results[1]['received'] == signal.SIGINT
    assert results[0]['received'] is None
  else:
    assert results[0]['stopped_at'] >= 4


def _worker(process_id: int, port: int, sig: str) -> None:
  import itertools
  import time
  import jax
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(f'127.0.0.1:{port}', num_processes=2, process_id=process_id)
  from vit import checkpoints
  stopped_at = None
  with checkpoints.StopSignal() as stop:
    # Steps go on until both processes stop (the parent's timeout bounds a hang): SIGTERM's
    # notice reaches process 0 through the coordination service after however long the load
    # makes it, and the agreed step follows; no step count is assumed to be long enough.
    for step in itertools.count(1):
      if process_id == 1 and step == 4:
        os.kill(os.getpid(), getattr(signal, sig))
      time.sleep(0.01)  # Not needed for the outcome; only spares the CPU.
      if stop.should_stop(step, sync=step % 3 == 0):
        stopped_at = step
        break
  print(json.dumps(dict(stopped_at=stopped_at, received=stop.received)))


if __name__ == '__main__':
  _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])


def test_a_signal_during_start_up_says_the_first_step_still_runs(caplog):
  """Ctrl-C while a run restored or compiled said "finishing the current step" before any
  step had begun; it now says the first step runs, then the run saves, which is what happens."""
  import logging
  from vit import checkpoints
  with caplog.at_level(logging.INFO, logger=checkpoints.logger.name):
    with checkpoints.StopSignal() as stop:
      signal.raise_signal(signal.SIGINT)
      assert stop.should_stop(1, sync=False)
    with checkpoints.StopSignal() as stop:
      assert not stop.should_stop(1, sync=False)
      signal.raise_signal(signal.SIGINT)
      assert stop.should_stop(2, sync=False)
  told = [r.getMessage().strip() for r in caplog.records]
  assert told == ['SIGINT received: start-up is not over: the first step runs (once compiled), '
                  'then the run saves',
                  'SIGINT received: finishing the current step, then saving'], told


def test_the_host_dispatches_at_most_two_steps_ahead():
  """A stop signal waits for every step already dispatched before it saves: the loop waits for
  the oldest of the steps it holds once more than two are dispatched and not yet waited for."""
  from vit.training import loop

  class Step:
    waited = []

    def __init__(self, n):
      self.n = n

    def block_until_ready(self):
      Step.waited.append(self.n)
      return self

  in_flight = loop._InFlight(loop._STEPS_IN_FLIGHT)
  for n in range(1, 6):
    in_flight.add({'loss': Step(n)})
    assert Step.waited == list(range(1, n - 1)), (n, Step.waited)
  assert loop._STEPS_IN_FLIGHT == 2


def test_a_signal_the_loop_does_not_stop_for_goes_to_the_programs_own_handler():
  """A signal at the last step (no step left to stop at) was forgotten when the loop ended: a
  program that runs one training after another (the study's worker) started the next. It is
  passed on, once, to the handler the loop replaced when that is the program's own; not after
  a stop (the loop acted on it), and a second signal gives that handler the first one too."""
  from vit import checkpoints
  got = []
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
  try:
    with checkpoints.StopSignal(3) as stop:
      assert not stop.should_stop(2, sync=False)
      signal.raise_signal(signal.SIGTERM)  # During step 3, the last.
      assert not got
    assert got == [signal.SIGTERM]
    with pytest.raises(checkpoints.Preempted):
      with checkpoints.StopSignal(3) as stop:
        signal.raise_signal(signal.SIGTERM)
        assert stop.should_stop(1, sync=False)
        raise checkpoints.Preempted(1)  # As the loop does after its save.
    assert got == [signal.SIGTERM]
    with checkpoints.StopSignal(3) as stop:
      signal.raise_signal(signal.SIGTERM)
      signal.raise_signal(signal.SIGTERM)  # The first, then this one, reach the program's.
      for _ in range(100):  # The second is sent with os.kill: delivered at once, or soon.
        if len(got) == 3:
          break
        time.sleep(0.01)
      assert got == [signal.SIGTERM] * 3
    assert got == [signal.SIGTERM] * 3  # Passed on once only.
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_a_plain_trainers_signal_at_the_last_step_is_not_given_again():
  """A trainer's own previous handlers are the defaults (SIG_DFL for SIGTERM, vit.cli's
  start-up handler being replaced by it; Ctrl-C's KeyboardInterrupt, Python's or vit's that
  records it): the run finishes and the program ends as usual, exit status 0, no signal
  again."""
  import vit
  from vit import checkpoints, cli
  previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    for sig, handler in [(signal.SIGTERM, signal.SIG_DFL), (signal.SIGTERM, cli._terminate),
                         (signal.SIGINT, signal.default_int_handler),
                         (signal.SIGINT, vit._record_ctrl_c)]:
      signal.signal(sig, handler)
      with checkpoints.StopSignal(3) as stop:
        assert not stop.should_stop(2, sync=False)
        signal.raise_signal(sig)  # During step 3, the last.
      time.sleep(0.05)  # Time for a signal sent again to arrive (it would end this process).
      assert stop.received == sig and not vit.interrupted
      assert signal.getsignal(sig) in (handler, signal.SIG_DFL)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
