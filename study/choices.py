"""Choices made on the held-out split: a sweep's best point, the length of best accuracy.

Every choice reads `holdout_best` (held-out accuracy at the run's held-out-best evaluation),
never a test number; ties go to the first run in the protocol's order (the grid's order).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from study.protocol import Run
from vit.errors import UserError


def best(prefix: str, results: dict, order: list[str]) -> dict:
  """The finished run under `prefix` with the best held-out accuracy (first of ties)."""
  names = [n for n in order if n.startswith(prefix)]
  missing = [n for n in names if n not in results]
  if not names or missing:
    raise UserError(f'choice {prefix!r}: runs not finished: {", ".join(missing) or "none"}')
  top = max(results[n]['result']['holdout_best'] for n in names)
  return results[next(n for n in names if results[n]['result']['holdout_best'] == top)]


def resolve(run: Run, results: dict, order: list[str]) -> Run:
  """`run` with its learning rate, crop padding and length fixed by its choices."""
  lr, pad, steps = run.lr, run.pad, run.steps
  if run.choose:
    chosen = best(run.choose + '/', results, order)['config']
    lr = chosen['optimizer']['learning_rate']
    pad = chosen['data']['crop_padding'] if run.pad_from is None else pad
  if run.pad_from:
    pad = best(run.pad_from + '/', results, order)['config']['data']['crop_padding']
  if run.length_from:
    steps += best(run.length_from + '/length/', results, order)['config']['total_steps']
  return dataclasses.replace(run, lr=lr, pad=pad if pad is not None else 0, steps=steps)


def chosen_name(prefix: str, results: dict, order: list[str]) -> Optional[str]:
  """The name of the best run under `prefix` when all have finished, else None."""
  try:
    return best(prefix, results, order)['name']
  except UserError:
    return None


def resolve_settings(run: Run, results: dict, order: list[str], changes: dict) -> Run:
  """`run` with the trainer config changes of the best point of its choice grid
  (`settings_from`; `changes`: {choice run name: its changes}) and the step count of its
  wall-time run (`steps_from`: an export takes it, a pretraining runs at least that long)."""
  overrides, steps = run.overrides, run.steps
  if run.settings_from:
    overrides = changes[best(run.settings_from + '/', results, order)['name']]
  if run.steps_from:
    if run.steps_from not in results:
      raise UserError(f'choice {run.steps_from!r}: not finished')
    wall = results[run.steps_from]['result']['wall_steps']
    steps = wall if run.kind == 'export' else max(steps, wall)
  return dataclasses.replace(run, overrides=overrides, steps=steps)
