"""The trainer end to end against its step alone: does the logged images/s match the step's?

    python benchmarks/trainer.py                                  # small-32 and tiny-28, both
    python benchmarks/trainer.py --shapes=small-32 --objectives=supervised --rounds=3

For each shape and objective (supervised, MPP), every round runs, in this one process:
  * the real trainer, `vit.training.loop.train` with the objective's own task (Fashion-MNIST
    through the grain pipeline, logging, the final evaluation and checkpoint) in a fresh
    workdir, for `--windows` + 1 logging windows of `--log-every` steps; the images/s it logs
    for each window but the first (which holds the compilation) are kept;
  * the same step alone (`benchmarks/jax_step.py`: the trainers' jitted step on one fixed
    batch already on the device), for as many steps;
  * the training input pipeline alone (`vit.data.pipeline.train_dataset`), for as many
    batches.
Figures are medians over rounds; `trainer / step` is the issue's measure (goal: >= 0.9). The
trainers' XLA flags, heap trim and compilation cache are set as `vit.cli.run` sets them.
Prints a table, then the JSON (also written to --json).
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

if __package__ in (None, ''):  # Run by its path: make the repository importable.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import train_step  # noqa: E402

SHAPES = ('small-32', 'tiny-28')
_RATE = re.compile(r'^step (\d+)/\d+ .*images_per_s ([0-9.e+]+)')


def trainer_config(shape: train_step.Shape, objective: str, steps: int, log_every: int):
  """The benchmark shape as a complete trainer config (Fashion-MNIST, resized to the shape)."""
  from benchmarks import jax_step
  from vit import objective as objective_lib
  config = objective_lib.with_section(jax_step.make_config(shape, 'base'),
                                      objective_lib.resolve(objective))
  config.data.source = 'fashion_mnist'
  config.total_steps = steps
  config.log_every = log_every
  config.eval_every = 0  # At the end only, after the last logged window.
  config.checkpoint_every = 0
  if objective == 'mpp':
    config.model.num_classes = None
    config.mpp.image_every = 0
  return config


def _build_task(config, objective: str, workdir: str):
  from vit import config as config_lib
  m = config_lib.validate(config)
  if objective == 'mpp':
    from mpp import train as mpp_train
    return mpp_train.build_task(config, m, workdir)
  from supervised import train as supervised_train
  return supervised_train.build_task(config, m)


def logged_rates(output: str, log_every: int) -> list[float]:
  """Images/s the trainer printed, per window, without the first (compilation) window."""
  rates = []
  for line in output.splitlines():
    match = _RATE.match(line)
    if match and int(match.group(1)) > log_every:
      rates.append(float(match.group(2)))
  return rates


def run_trainer(config, objective: str) -> tuple[list[float], float]:
  """(images/s of each logged window after the first, wall seconds of the whole run)."""
  from vit.training import loop
  workdir = tempfile.mkdtemp(prefix='bench_trainer_')
  out = io.StringIO()
  start = time.perf_counter()
  try:
    with contextlib.redirect_stdout(out):
      loop.train(config, workdir, _build_task(config, objective, workdir))
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  return logged_rates(out.getvalue(), config.log_every), time.perf_counter() - start


def pipeline_rate(config, batches: int) -> float:
  from vit.data import pipeline
  iterator = iter(pipeline.train_dataset(config))
  next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * config.batch_size / (time.perf_counter() - start)


def measure(shape_name: str, objective: str, args) -> dict:
  from benchmarks import jax_step
  shape = train_step.SHAPES[shape_name]
  steps = args.windows * args.log_every
  config = trainer_config(shape, objective, steps + args.log_every, args.log_every)
  alone = jax_step.JaxStep(shape, objective)
  alone.train(2)
  trainer, step, data, wall = [], [], [], []
  for r in range(args.rounds):
    rates, seconds = run_trainer(config, objective)
    trainer.append(statistics.median(rates))
    wall.append(seconds)
    step.append(shape.batch * steps / alone.train(steps))
    data.append(pipeline_rate(config, steps))
    print(f'  {shape_name} {objective}: round {r + 1}/{args.rounds}: trainer {trainer[-1]:.0f}, '
          f'step {step[-1]:.0f}, pipeline {data[-1]:.0f} img/s', file=sys.stderr, flush=True)
  median = statistics.median
  return {'shape': shape_name, 'objective': objective, 'batch': shape.batch,
          'trainer_img_s': median(trainer), 'step_img_s': median(step),
          'pipeline_img_s': median(data), 'trainer_over_step': median(trainer) / median(step),
          'trainer_img_s_per_round': trainer, 'step_img_s_per_round': step,
          'pipeline_img_s_per_round': data, 'trainer_wall_s_per_round': wall,
          'trainer_steps_per_round': steps + args.log_every}


def table(report: dict) -> str:
  lines = ['| case | trainer (logged) img/s | step alone img/s | trainer / step '
           '| input pipeline alone img/s |', '|---|---|---|---|---|']
  for r in report['results']:
    lines.append(f'| {r["shape"]} {r["objective"]} | {r["trainer_img_s"]:.1f} | '
                 f'{r["step_img_s"]:.1f} | {r["trainer_over_step"]:.2f} | '
                 f'{r["pipeline_img_s"]:.0f} |')
  return '\n'.join(lines)


def parse_args(argv=None):
  p = train_step.parser(__doc__, 'benchmarks.trainer')
  p.add_argument('--shapes', type=train_step._csv('shape', SHAPES), default=list(SHAPES),
                 help=f'comma-separated, of {", ".join(SHAPES)} (default: both)')
  p.add_argument('--objectives', type=train_step._csv('objective', ('supervised', 'mpp')),
                 default=['supervised', 'mpp'],
                 help='comma-separated, of supervised, mpp (default: both)')
  p.add_argument('--rounds', type=train_step.positive, default=3,
                 help='rounds per shape and objective; the figures are medians over them '
                      '(default: 3)')
  p.add_argument('--windows', type=train_step.positive, default=3,
                 help='logging windows timed per trainer run (one more is run first) '
                      '(default: 3)')
  p.add_argument('--log-every', type=train_step.positive, default=10,
                 help='steps per logging window, the trainer\'s config.log_every (default: 10)')
  p.add_argument('--json', help='also write the JSON report to this file (its folder is checked '
                                 'before the first round)')
  args = p.parse_args(argv)
  train_step.check_json(args.json)
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  # As vit.cli.run starts the trainers: XLA flags before jax starts, heap trim, compile cache.
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  from vit import xla_flags
  xla_flags.apply_defaults()
  from vit import host_memory
  host_memory.release_after_compiles()
  from vit import cli
  cli.log_to_console()  # The trainer's step lines, which run_trainer reads from stdout.
  results = [measure(s, o, args) for s in args.shapes for o in args.objectives]
  report = {'machine': train_step._machine(), 'process': 'shared (trainer, step and pipeline '
            'in this one process)', 'rounds': args.rounds, 'log_every': args.log_every,
            'windows': args.windows, 'results': results}
  print(table(report))
  train_step.emit(report, args.json)


if __name__ == '__main__':
  main()
