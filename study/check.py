"""The study's config checked before any run starts: `python -m study.run` validates it, and
the trainer config of every run it may run, in the parent process, so that a bad override is
one line on its stderr (exit status 2), not an error in a worker's log once that run's turn
comes (hours later, or in every worker at once).

Nothing here changes a run's config or digest: each trainer config is built as `study.run`
builds it and validated as a copy.

`python -m study.check [--config configs/study/demo.py] [--config.x=...]` does only that check
(`study.run.preflight`) and writes nothing.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Callable

import ml_collections
from absl import flags
from ml_collections import config_flags

from configs.study import converged
from study import protocol
from study.protocol import Run
from vit import cli, config as config_lib
from vit.errors import ConfigError, UserError

# Study sections that are whole trainer configs: an error in one names the study's own key
# (`config.pretrainer.mpp.target`), the flag the user typed.
TRAINER_SECTIONS = ('classifier', 'pretrainer')


def check(study: ml_collections.ConfigDict,
          config_of: Callable[[Run, dict, list[str]], ml_collections.ConfigDict],
          results: dict) -> int:
  """Raises a ConfigError (a study key) or UserError (naming the run) at the first config that
  does not validate; returns the number of distinct trainer configs checked (seeds aside).

  `config_of(run, results, order)` builds a run's trainer config (`study.run._config`). A run
  whose choices are not made yet (a sweep unfinished) is checked at a stand-in point of its
  grid: its keys are the same, only the chosen learning rate, padding, length and settings
  would differ.
  """
  check_study_keys(study)
  for section in TRAINER_SECTIONS:
    try:
      validate(study[section])
    except ConfigError as e:
      raise ConfigError(f'{section}.{e.key}', e.value, e.problem) from None
  every = protocol.runs(study)
  order = [r.name for r in every]
  cells = protocol.cells_of(study)
  seen = set()
  for run in every:
    if run.cell not in cells or run.priority > study.only_priority or run.kind in (
        'export', 'figures'):
      continue
    try:
      config = _built(study, run, config_of, results, order)
      for trainer in _trainer_configs(run, config):
        recipe = _unseeded(trainer)
        if recipe not in seen:
          validate(trainer)
          seen.add(recipe)
    except UserError as e:
      raise UserError(f'study run {run.name}: {e}') from None
  return len(seen)


# Study keys the protocol indexes or loops over: empty, each would be an IndexError in
# protocol.runs, a cell with no runs, or no worker at all (and a study that does nothing).
NON_EMPTY = ('seeds', 'sweep.learning_rates', 'sweep.crop_padding')


def check_complete(study: ml_collections.ConfigDict, source: str = '--config') -> None:
  """UserError naming every top-level key of the protocol's config (configs/study/converged.py)
  that `study` lacks. A partial study file (one that sets only `seeds`, say) would otherwise
  stop at the first key read, as an AttributeError with no file or key named. A trainer's
  config (one with every top-level key of vit.config.defaults()) is named as such: its list of
  missing study keys was two dozen long and missed the point. `source` names the config in
  the message ('--config FILE')."""
  missing = [key for key in converged.get_config() if key not in study]
  if missing and all(key in study for key in config_lib.defaults()):
    raise UserError(f'{source}: a trainer\'s config, not a study config; a study runs '
                    'configs/study/converged.py or configs/study/demo.py')
  if missing:
    raise UserError(
        f'{source}: the study config has no {", ".join(f"config.{k}" for k in missing)}; a '
        f'study config starts from configs/study/converged.py\'s get_config() and changes keys '
        f'(as configs/study/demo.py does)')


def check_study_keys(study: ml_collections.ConfigDict) -> None:
  """ConfigError naming the key where `seeds`, `sweep.learning_rates` or `sweep.crop_padding`
  is empty, `workers` is not an integer >= 1, or `only_priority` not an integer >= 0."""
  for key in NON_EMPTY:
    value = _get(study, key)
    if not isinstance(value, (tuple, list)) or not value:
      raise ConfigError(key, value, 'must be a non-empty tuple')
  for key, least in (('workers', 1), ('only_priority', 0)):
    value = _get(study, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
      raise ConfigError(key, value, f'must be an integer >= {least}')


def _get(study, dotted: str):
  for part in dotted.split('.'):
    study = study[part]
  return study


def validate(config: ml_collections.ConfigDict) -> None:
  """`vit.config.validate` on a copy (validation fills resolved keys in)."""
  config_lib.validate(ml_collections.ConfigDict(config.to_dict()))


def _unseeded(config: ml_collections.ConfigDict) -> str:
  """The config as JSON without its seeds, which validation does not read: the seeds of one
  recipe are checked once (the study's 571 trainer configs are 1xx recipes)."""
  d = config.to_dict()
  d.pop('seed', None)
  if isinstance(d.get('data'), dict):
    d['data'].pop('subset_seed', None)
  return json.dumps(d, sort_keys=True, default=repr)


def _built(study, run: Run, config_of, results: dict, order: list[str]):
  try:
    return config_of(run, results, order)
  except UserError:  # A choice not made yet (choices.best): a stand-in point of its grid.
    return config_of(_stand_in(study, run), results, order)


def _stand_in(study, run: Run) -> Run:
  """`run` at its grid's first learning rate, padding 0, and a length of one evaluation
  interval where a choice would add its length to none."""
  return dataclasses.replace(
      run, choose=None, pad_from=None, length_from=None, settings_from=None, steps_from=None,
      lr=run.lr if run.lr is not None else float(study.sweep.learning_rates[0]),
      pad=run.pad if run.pad is not None else 0, steps=run.steps or run.eval_every or 1)


def _trainer_configs(run: Run, config) -> list[ml_collections.ConfigDict]:
  """The trainer configs a run's config holds: a probe's without its `probe` section, both
  pretrainings a wall-time run times, or the config itself."""
  if run.kind == 'walltime':
    return [ml_collections.ConfigDict(config.mpp.to_dict()),
            ml_collections.ConfigDict(config.mae.to_dict())]
  if run.kind == 'probe':
    return [ml_collections.ConfigDict({k: v for k, v in config.to_dict().items()
                                       if k != 'probe'})]
  return [config]


def main(argv):
  del argv
  from study import run  # study.run imports this module.
  path = config_flags.get_config_filename(flags.FLAGS['config'])
  checked = run.preflight(flags.FLAGS.config, source=f'--config {path}')
  print(f'{path}: the study config and its {checked} distinct trainer configs validate')


if __name__ == '__main__':
  cli.define_config_flags('configs/study/converged.py', workdir=False)
  cli.run(main)
