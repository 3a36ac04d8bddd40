"""Chaos trials: training killed with SIGKILL at random moments and resumed must end with a state
bitwise identical to an uninterrupted run's.

    python -m benchmarks.chaos --trials 5 --kills 2

Each trial runs a tiny `python -m supervised.train` in a fresh --workdir, kills it `--kills`
times at a random step plus a random delay (so kills land inside steps, logging and
asynchronous checkpoint writes alike), reruns the same command each time, and compares the final
checkpoint (params, optimiser state, step, rng) with an uninterrupted reference run's. Prints
JSON: trials, identical (trials whose final state matched bit for bit), kills (that landed
before the run finished), steps_redone (steps computed again after resuming), seconds, and the
events (the step each killed run had logged, the step its rerun resumed at) per trial.
`--workdir` keeps the runs' folders; it must be new or empty, as the trainer would resume from
checkpoints a folder already holds.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from vit.testing import commands

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECKPOINT_EVERY = 5
# A model small enough that process start-up, not training, dominates a run. The evaluation at
# the end is the SMALL_EVAL: the trials compare the final train state, not the accuracy.
TINY_FLAGS = ('--config.model.hidden_size=16', '--config.model.transformer.mlp_dim=32',
              '--config.model.transformer.num_layers=1', '--config.model.transformer.num_heads=2',
              '--config.batch_size=16', *commands.SMALL_EVAL,
              '--config.optimizer.warmup_steps=5', '--config.log_every=1',
              f'--config.checkpoint_every={CHECKPOINT_EVERY}')

_STEP = re.compile(r'^step (\d+)/\d+ ')
_RESUMED = re.compile(r'^resumed from .* at step (\d+)')
# A kill that lands after the final checkpoint is complete (while the run exits, or before the
# parent, slowed by a loaded machine, has read the last lines) leaves nothing to train: the
# rerun says so, and resumes at that step all the same.
_DONE = re.compile(r'^note: workdir .* already holds step (\d+) ')


def resumed_step(line: str) -> int | None:
  """The step a rerun starts from, when `line` is the trainer's word on it."""
  m = _RESUMED.match(line) or _DONE.match(line)
  return int(m.group(1)) if m else None


def command(workdir: str, steps: int, extra=()) -> list[str]:
  return [sys.executable, '-m', 'supervised.train', f'--workdir={workdir}',
          f'--config.total_steps={steps}', *TINY_FLAGS, *extra]


def _env() -> dict:
  return dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', PYTHONUNBUFFERED='1')


def run(workdir: str, steps: int, *, stop_after: int | None = None, delay: float = 0.0,
        sig: int = signal.SIGKILL, extra=(), timeout: float = 600) -> dict:
  """Runs the trainer; after it prints step `stop_after` (and `delay` seconds), sends `sig`.

  Returns rc, output, resumed (the step it resumed from, 0 for a fresh start), last_step (the
  last step it logged) and signalled (whether the signal was sent before it exited).
  """
  proc = subprocess.Popen(command(workdir, steps, extra), cwd=ROOT, env=_env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.time() + timeout
  lines, resumed, last_step, signalled = [], 0, 0, False
  try:
    for line in proc.stdout:
      lines.append(line)
      if (step := resumed_step(line)) is not None:
        resumed = last_step = step
      if m := _STEP.match(line):
        last_step = int(m.group(1))
        if not signalled and stop_after is not None and last_step >= stop_after:
          time.sleep(delay)
          proc.send_signal(sig)
          signalled = True
      if time.time() > deadline:
        raise TimeoutError(f'{" ".join(command(workdir, steps, extra))} ran past {timeout}s')
    rc = proc.wait(timeout=max(deadline - time.time(), 1))
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  return dict(rc=rc, output=''.join(lines), resumed=resumed, last_step=last_step,
              signalled=signalled)


def final_state(workdir: str, step: int) -> dict[str, np.ndarray]:
  """Every array of the train state saved at `step`, by path."""
  import jax
  import orbax.checkpoint as ocp
  from vit import checkpoints
  mngr = checkpoints.manager(workdir, read_only=True)
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
  leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(state))
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
  """Bit for bit: NaN payloads and signed zeros count, dtypes and shapes must agree."""
  return a.keys() == b.keys() and all(
      a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes()
      for k in a)


def kill_point(steps: int, rng: random.Random) -> tuple[int, float]:
  """Half the kills aim at an asynchronous checkpoint write (just after a save step is logged),
  half at any moment of a random step."""
  save_steps = list(range(CHECKPOINT_EVERY, steps, CHECKPOINT_EVERY))
  if save_steps and rng.random() < 0.5:
    return rng.choice(save_steps), rng.uniform(0.0, 0.05)
  return rng.randint(1, steps - 1), rng.uniform(0.0, 0.4)


def _failed(what: str, workdir: str, out: dict) -> SystemExit:
  """One line for a training run that failed on its own (not by our kill): the child's own
  `error:` line where it printed one (another process holding --workdir, a full disk), else its
  last line of output; exit status 2, as the vit.cli entry points."""
  lines = out['output'].strip().splitlines() or ['(no output)']
  reason = next((ln[len('error: '):] for ln in reversed(lines) if ln.startswith('error: ')),
                lines[-1])
  print(f'error: chaos: the {what} run in {workdir} exited {out["rc"]}: {reason}', file=sys.stderr)
  return SystemExit(2)


def trial(workdir: str, steps: int, kills: int, rng: random.Random) -> dict:
  """Kills a fresh run up to `kills` times at random points, then lets it finish."""
  events, killed_at = [], None  # killed_at: the last step the killed run logged.
  for attempt in range(kills + 1):
    stop_after, delay = kill_point(steps, rng) if attempt < kills else (None, 0.0)
    out = run(workdir, steps, stop_after=stop_after, delay=delay)
    if killed_at is not None:
      events.append(dict(killed_after=killed_at, resumed_at=out['resumed']))
    if out['signalled'] and out['rc'] == -signal.SIGKILL:
      killed_at = out['last_step']
      continue
    if out['rc'] != 0:
      raise _failed('trial', workdir, out)
    break  # Finished, possibly before a kill could land.
  redone = sum(max(e['killed_after'] - e['resumed_at'], 0) for e in events)
  return dict(kills=len(events), steps_redone=redone, events=events)


def not_fresh(path: str) -> str | None:
  """Why `path` cannot hold a trial's runs, or None for a new or empty folder.

  The trainer resumes from whatever checkpoints a folder holds: a previous invocation's would
  make a rerun resume at its last step (no kill lands, yet its state matches the reference) or,
  with another --steps, look for a step that was never saved. Deleting them is not ours to do.
  """
  if not os.path.isdir(path):
    return None  # New; or a file, which the reference run's own one-line error names.
  try:
    entries = os.listdir(path)
  except OSError as e:
    return f'cannot be read ({e.strerror})'
  if not entries:
    return None
  shown = ', '.join(sorted(entries)[:3]) + (', ...' if len(entries) > 3 else '')
  return f'not empty (it holds {shown})'


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(
      description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog='example:\n    python -m benchmarks.chaos --trials 5 --kills 2\n\nThe module\'s '
             'docstring says more (python -m pydoc benchmarks.chaos);\n'
             'docs/guides/fault_tolerance.md describes the test.')
  parser.add_argument('--trials', type=int, default=3,
                      help='killed-and-resumed runs, each compared with the reference (default: 3)')
  parser.add_argument('--kills', type=int, default=2,
                      help='SIGKILLs per trial, each followed by a rerun (default: 2)')
  parser.add_argument('--steps', type=int, default=30,
                      help='config.total_steps of every run, at least 2; a checkpoint every '
                           f'{CHECKPOINT_EVERY} (default: 30)')
  parser.add_argument('--seed', type=int, default=0,
                      help='seed of the kill points (step and delay) (default: 0)')
  parser.add_argument('--workdir', default=None, help='a new or empty folder, kept; a temporary '
                      'directory otherwise')
  args = parser.parse_args(argv)
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # This process only reads checkpoints.
  if args.trials < 1 or args.kills < 0 or args.steps < 2:
    parser.error('need --trials >= 1, --kills >= 0 and --steps >= 2')
  if args.workdir and (reason := not_fresh(args.workdir)):
    parser.error(f'--workdir {args.workdir}: {reason}; use a new or empty folder (this one was '
                 'left as it is)')
  root = args.workdir or tempfile.mkdtemp(prefix='chaos_')
  start, rng = time.time(), random.Random(args.seed)
  try:
    reference_dir = os.path.join(root, 'reference')
    out = run(reference_dir, args.steps)
    if out['rc'] != 0:
      raise _failed('reference', reference_dir, out)
    reference = final_state(reference_dir, args.steps)
    results = []
    for i in range(args.trials):
      workdir = os.path.join(root, f'trial_{i}')
      result = trial(workdir, args.steps, args.kills, rng)
      result['identical'] = identical(final_state(workdir, args.steps), reference)
      results.append(result)
  finally:
    if args.workdir is None:
      shutil.rmtree(root, ignore_errors=True)
  summary = dict(trials=len(results), identical=sum(r['identical'] for r in results),
                 kills=sum(r['kills'] for r in results),
                 steps_redone=sum(r['steps_redone'] for r in results),
                 seconds=round(time.time() - start, 1),
                 events=[r['events'] for r in results])
  print(json.dumps(summary))
  return summary


if __name__ == '__main__':
  main()
