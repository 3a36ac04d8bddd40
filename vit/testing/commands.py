"""The project's commands run in tests as a user runs them: `python -m MODULE` from the
repository root, on the CPU, output captured (tests read its lines and its exit status)."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A ViT small enough that a trainer runs a few steps in seconds: width 16, one block of 2 heads.
TINY_BACKBONE = ('--config.model.hidden_size=16', '--config.model.transformer.num_layers=1',
                 '--config.model.transformer.mlp_dim=32', '--config.model.transformer.num_heads=2')

# A learning rate that does not depend on --config.total_steps (one warmup step, then constant):
# runs of one command that differ only in their length, as a run and its resumption often do,
# compile the same train step, which the next one then reads from the compilation cache.
FIXED_RATE = ('--config.optimizer.warmup_steps=1', '--config.optimizer.decay=constant')

# A supervised run's evaluation at the end scores 16 held-out training images in one batch, not
# the 10,000 of the test split: about 1.3 of a tiny run's 4.7 CPU-s (warm compilation cache)
# went to reading them. For runs whose outputs under test are not the accuracy.
SMALL_EVAL = ('--config.data.holdout=16', '--config.data.eval_split=holdout',
              '--config.eval_batch_size=16')

# supervised.train on 8 px Fashion-MNIST with the TINY_BACKBONE (a 2x2 grid), batches of 8, no
# evaluation during training: checkpoints and their faults in seconds. Tests add the cadence.
TINY_SUPERVISED = ('--config=configs/supervised/fashion_mnist.py', '--config.image_size=8',
                   '--config.batch_size=8', '--config.model.patches.size=(4,4)', *TINY_BACKBONE,
                   '--config.eval_every=0', *SMALL_EVAL, *FIXED_RATE)


def paused_train(step: int) -> str:
  """A program for `python -c`: supervised.train (its flags as usual) that, at `step`, waits
  until its checkpoints are complete, prints 'paused at step STEP' and waits to be killed, so
  that a test acts at a known point whatever the machine's load."""
  return f"""
import time
from supervised import train
from vit import checkpoints, cli
check_saves = checkpoints.check_saves
def paused(mngr, step, sync):
  check_saves(mngr, step, sync)
  if step == {step}:
    mngr.wait_until_finished()
    print('paused at step {step}', flush=True)
    while True:
      time.sleep(1)
checkpoints.check_saves = paused
cli.define_config_flags('configs/supervised/fashion_mnist.py')
cli.run(train.main)
"""


def run_module(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
  """`python -m module *args` in ROOT with JAX_PLATFORMS=cpu, stdout and stderr as text.
  Raises subprocess.TimeoutExpired after `timeout` seconds."""
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, env=dict(os.environ, JAX_PLATFORMS='cpu'))


def train_tiny(objective: str, workdir: str, *extra: str) -> subprocess.CompletedProcess:
  """`python -m <objective>.train` on configs/<objective>/fashion_mnist.py into `workdir`: the
  TINY_BACKBONE, batches of 16, the held-out loss on 64 images (config.<objective>.eval_examples),
  a log line every step, the FIXED_RATE; `extra` flags last (e.g. --config.total_steps=2)."""
  return run_module(
      f'{objective}.train', f'--config=configs/{objective}/fashion_mnist.py',
      f'--workdir={workdir}', *TINY_BACKBONE, '--config.batch_size=16',
      '--config.eval_batch_size=64', f'--config.{objective}.eval_examples=64',
      '--config.log_every=1', *FIXED_RATE, *extra)


def signal_at_line(command: list, stream: str, is_cue, sig: int, **popen) -> tuple:
  """Starts `command` from the repository root, reads its `stream` ('stdout' or 'stderr') up
  to the first line for which `is_cue(line)` holds, sends `sig`, and returns (returncode,
  stdout, stderr). The cue is a line the child prints at a known point, so the signal meets it
  there whatever the load. AssertionError for a child that ends without the cue; a failed case
  leaves no process behind."""
  proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **popen)
  try:
    for line in getattr(proc, stream):
      if is_cue(line):
        break
    else:
      raise AssertionError(f'the child ended without its cue line on {stream}: '
                           f'{proc.stderr.read()[-2000:]}')
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=900)  # Bounds a hang only.
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()
  return proc.returncode, out, err


# Child-program lines (after `from vit import checkpoints`) that list in `handled` each signal
# the training loop's stop handler has taken: a child paused at a known step waits on it, so the
# parent's signal meets that step whatever the load.
COUNT_HANDLED_SIGNALS = """
handled = []
handle = checkpoints.StopSignal._handle
def counted(self, signum, frame):
  handle(self, signum, frame)
  handled.append(signum)
checkpoints.StopSignal._handle = counted
"""
