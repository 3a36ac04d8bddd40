"""The §4.6 study at small scale, its protocol fixed before any test number is seen
(`python -m mpp.study`).

Protocol (docs/results.md states it beside the numbers):
- Validation: the last `holdout` training images (5k of Fashion-MNIST's 60k) are held out
  (vit/data/subsets.py). Every choice is made on them: the fine-tuning learning rate and weight
  decay of every variant at every label fraction (a `sweep` on the first seed, the best
  held-out accuracy wins) and the L2 strength of every linear probe. The test split is only
  reported.
- Label efficiency: scratch, and MPP with each target at each corruption rate, fine-tuned on a
  class-balanced fraction of the labels (1% = 600 images, the same images for every variant of
  a seed), every seed at the chosen hyper-parameters; a verdict at 2 standard errors per cell.
- Pretraining length: the first target and rate pretrained for each of `length_epochs`.
- Frozen features: k-shot and full linear probes of the class token, the mean patch token and
  block `probe.block`'s mean patch token (vit/evaluators/linear_probe.py), beside raw pixels
  and (the scratch row) a random initialisation.
- Transfer inside Fashion-MNIST: pretrain on `transfer.pretrain_classes` (supervised with their
  labels, or MPP without), fine-tune on `transfer.finetune_classes` with few labels; scratch is
  the floor.

Every run has its own directory under --workdir and ends by writing `result.json` there;
rerunning skips finished runs and resumes an interrupted one from its last checkpoint.
`--config.only=name,...` runs only those variants (the others are only read): a study split
over processes or machines sharing the workdir.

    python -m mpp.study --config configs/study/fashion_mnist.py --workdir runs/study
    python -m mpp.study --config configs/study/fashion_mnist.py --config.quick=True ...
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from typing import Callable, Optional

import flax.linen as nn
import jax
import ml_collections
from absl import flags

from mpp import objective, report, train as mpp_train
from supervised import finetune as finetune_lib, objective as supervised_objective
from supervised import train as supervised_train
from vit import atomic_write, cli, config as config_lib, init_spec
from vit.data import pipeline, subsets
from vit.errors import ConfigError, UserError
from vit.evaluators import linear_probe
from vit.evaluators.classification import ClassificationEvaluator
from vit.training import loop

FLAGS = flags.FLAGS
RESULT_FILE = 'result.json'
RUN_CONFIG_FILE = 'run_config.json'
PIXELS = 'pixels'  # The raw-pixel baseline's name for config.only.


@dataclasses.dataclass(frozen=True)
class Variant:
  """One pretraining (or none) and its fine-tunings; `group` names its table in the report."""
  name: str
  kind: str                    # 'scratch' | 'mpp' | 'supervised': how the backbone starts.
  group: str = 'labels'        # 'labels' | 'length' | 'transfer'
  target: Optional[str] = None
  rate: float = 0.5
  epochs: float = 0.0          # Pretraining epochs over its training images.
  fractions: tuple = ()        # Label fractions it is fine-tuned at.
  pretrain_classes: Optional[tuple] = None  # None: all classes.
  finetune_classes: Optional[tuple] = None
  probe: bool = False          # Frozen-feature probes of its backbone (scratch: the init).

  @property
  def label(self) -> str:
    if self.kind == 'scratch':
      return 'from scratch'
    where = f' on classes {self.pretrain_classes}' if self.pretrain_classes else ''
    if self.kind == 'supervised':
      return f'supervised, {self.epochs:g} epochs{where}'
    return f'MPP {self.target}, {self.rate:.0%} corrupted, {self.epochs:g} epochs{where}'


def settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The study config with `quick_settings` applied when `quick` is set (dicts are merged)."""
  config = ml_collections.ConfigDict(config.to_dict())
  if config.quick:
    for key, value in config.quick_settings.items():
      if isinstance(value, ml_collections.ConfigDict):
        config[key].update(value.to_dict())
      else:
        config[key] = value
  return config


def variants(study) -> list[Variant]:
  fractions, first = tuple(study.label_fractions), study.targets[0] if study.targets else None
  out = []
  if fractions or study.probe.enabled:  # Else nothing to measure here: e.g. transfer only.
    out.append(Variant('scratch', 'scratch', fractions=fractions, probe=study.probe.enabled))
    for target in study.targets:
      for rate in study.rates:
        name = f'mpp_{target}' + ('' if rate == 0.5 else f'_rate{round(rate * 100)}')
        out.append(Variant(name, 'mpp', 'labels', target, rate, study.pretrain_epochs,
                           fractions, probe=study.probe.enabled))
    if first:
      out += [Variant(f'mpp_{first}_epochs{e:g}', 'mpp', 'length', first, study.rates[0], e,
                      tuple(study.length_fractions), probe=study.probe.enabled)
              for e in study.length_epochs if e != study.pretrain_epochs]
  t = study.transfer
  if t.enabled:
    common = dict(group='transfer', fractions=tuple(t.fractions),
                  finetune_classes=tuple(t.finetune_classes))
    out.append(Variant('transfer_scratch', 'scratch', **common))
    out.append(Variant('transfer_supervised', 'supervised', epochs=t.supervised_epochs,
                       pretrain_classes=tuple(t.pretrain_classes), **common))
    if first:
      out.append(Variant(f'transfer_mpp_{first}', 'mpp', target=first, rate=study.rates[0],
                         epochs=t.mpp_epochs, pretrain_classes=tuple(t.pretrain_classes),
                         **common))
  return out


def check(study) -> None:
  """One-line errors for the study's own keys, before any run starts."""
  if not study.seeds:
    raise ConfigError('seeds', study.seeds, 'must name at least one seed')
  if not study.holdout:
    raise ConfigError('holdout', study.holdout, 'must be > 0: every choice is made on it')
  steps = dict(study.finetune_steps)
  for v in variants(study):
    for f in v.fractions:
      if f not in steps:
        raise ConfigError('finetune_steps', study.finetune_steps,
                          f'has no step count for label fraction {f} ({v.name})')
  if not study.sweep.learning_rates or not study.sweep.weight_decays:
    raise ConfigError('sweep', study.sweep.to_dict(), 'needs at least one value of each')
  if study.targets and not study.rates:
    raise ConfigError('rates', study.rates, 'must name at least one corruption rate')


@functools.lru_cache(maxsize=None)
def _train_size(config_json: str) -> int:
  return len(pipeline.make_source(ml_collections.ConfigDict(json.loads(config_json)), 'train'))


def steps_for(config, epochs: float) -> int:
  """Steps of config.batch_size that cover its training images `epochs` times (at least 1)."""
  return max(1, round(epochs * _train_size(config.to_json()) / config.batch_size))


def _with_data(base, study, classes, seed: int) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(base.to_dict())
  config.seed = seed
  config.data.holdout, config.data.classes = study.holdout, classes
  return config


def pretrain_config(study, v: Variant, seed: int) -> ml_collections.ConfigDict:
  base = study.mpp if v.kind == 'mpp' else study.supervised
  config = _with_data(base, study, v.pretrain_classes, seed)
  config.data.eval_split = subsets.HOLDOUT_SPLIT  # Pretraining metrics never see test images.
  config.total_steps = steps_for(config, v.epochs)
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, config.total_steps // 5)
  if v.kind == 'mpp':
    config.mpp.target, config.mpp.corruption_rate = v.target, v.rate
    config.mpp.image_every = 0
  else:
    config.model.num_classes = len(v.pretrain_classes or range(10))
  return config


def finetune_config(study, v: Variant, seed: int, init: Optional[str], fraction: float,
                    learning_rate: float, weight_decay: float) -> ml_collections.ConfigDict:
  config = _with_data(study.finetune, study, v.finetune_classes, seed)
  config.init, config.data.train_fraction = init, fraction
  config.total_steps = dict(study.finetune_steps)[fraction]
  config.optimizer.learning_rate, config.optimizer.weight_decay = learning_rate, weight_decay
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, config.total_steps // 10)
  if v.finetune_classes:
    config.model.num_classes = len(v.finetune_classes)
  if init is None:  # From scratch: the pretraining architecture, freshly initialised.
    for key in init_spec.BACKBONE_KEYS:
      *path, leaf = key.split('.')
      src, dst = study.mpp.model, config.model
      for part in path:
        src, dst = src[part], dst[part]
      dst[leaf] = src[leaf]
  return config


def _train(config, workdir: str, task) -> dict:
  """The final evaluation's metrics ('eval/accuracy', with EMA also 'eval_ema/accuracy')."""
  return loop.train(config, workdir, task).metrics


def pretrain(config, workdir: str) -> dict:
  m = config_lib.validate(config)
  if config.model.num_classes is None:
    return _train(config, workdir, mpp_train.build_task(config, m, workdir))
  supervised_train.check_classes(config, m)
  init_spec.write_class_names(workdir, supervised_train.class_names(config))
  return _train(config, workdir, supervised_train.build_task(config, m))


def finetune(config, workdir: str) -> dict:
  """Fine-tuning evaluated on the held-out split ('holdout/accuracy', which steers the sweep)
  and on the test split ('eval/accuracy', which is reported)."""
  if config.init is None:
    m = config_lib.validate(config)
    task = supervised_train.build_task(config, m)
  else:
    m, ckpt = finetune_lib.prepare(config)
    task = finetune_lib.build_task(config, m, ckpt)
  init_spec.write_class_names(workdir, supervised_train.class_names(config))
  holdout = ClassificationEvaluator(
      supervised_objective.build(config, m).predictions,
      lambda: pipeline.eval_batches(config, split=subsets.HOLDOUT_SPLIT), task.mesh,
      name='holdout')
  return _train(config, workdir, dataclasses.replace(task, evaluators=[*task.evaluators,
                                                                       holdout]))


def init_params(config) -> dict:
  """A random initialisation of the MPP backbone (the scratch row of the probes)."""
  obj = objective.build(config, config_lib.validate(config))
  return obj.backbone(nn.unbox(obj.init_params(jax.random.key(config.seed))))


def probe(config, init: Optional[str]) -> dict:
  """Frozen-feature probes of the backbone at `init` (None: a random initialisation)."""
  if init is None:
    model, params = config_lib.validate(config.backbone), init_params(config.backbone)
  else:
    ckpt = init_spec.load(init)
    model, params = ckpt.model, ckpt.params
  p = config.probe
  return linear_probe.probe_backbone(config.backbone, model, jax.device_put(params), p.block,
                                     tuple(p.shots), p.draws)


def _check_same_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """A finished run is reused only if it ran with this config (a changed budget would not be)."""
  path = os.path.join(workdir, RUN_CONFIG_FILE)
  wanted = json.loads(config.to_json())
  if not os.path.exists(path):
    with open(path, 'w') as f:
      json.dump(wanted, f, indent=1)
    return
  with open(path) as f:
    saved = json.load(f)
  diff = _differences(saved, wanted)
  if diff:
    raise UserError(f'{workdir}: ran with another config (differs in {", ".join(diff[:5])}); '
                    f'use another --workdir or delete that run')


def _differences(saved: dict, wanted: dict) -> list[str]:
  """Keys whose values differ; a key the saved run predates counts as equal at its default
  (a config key added later, e.g. model.attention_kernel, must not orphan finished runs)."""
  old, new = _flat(saved), _flat(wanted)
  defaults = _flat(json.loads(config_lib.defaults().to_json()))
  missing = object()

  def default(key: str):  # A trainer config's key, maybe nested (a probe's 'backbone.*').
    parts = key.split('.')
    return next((defaults[k] for k in ('.'.join(parts[i:]) for i in range(len(parts)))
                 if k in defaults), missing)
  return sorted(k for k in set(old) | set(new) if old.get(k, missing) != new.get(k, missing)
                and not (k not in old and new[k] == default(k)))


def _flat(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f'{prefix}{k}.') if isinstance(v, dict) else {f'{prefix}{k}': v})
  return out


def run_once(workdir: str, title: str, fn: Callable[[], dict], run: bool = True,
             config: Optional[ml_collections.ConfigDict] = None) -> Optional[dict]:
  """The run's result, from its result.json when finished before; None when not `run`."""
  path = os.path.join(workdir, RESULT_FILE)
  if config is not None and (run or os.path.exists(path)):
    os.makedirs(workdir, exist_ok=True)
    _check_same_config(workdir, config)
  if os.path.exists(path):
    with open(path) as f:
      result = json.load(f)
    print(f'{title}: done before, skipped', flush=True)
    return result
  if not run:
    return None
  print(f'{title}: running in {workdir}', flush=True)
  start, cpu = time.time(), time.process_time()
  # CPU seconds beside wall seconds: on a shared machine the wall clock overstates the cost.
  result = dict(fn(), wall_s=time.time() - start, cpu_s=time.process_time() - cpu)
  os.makedirs(workdir, exist_ok=True)
  with atomic_write.file(path) as partial, open(partial, 'w') as f:  # Complete or absent.
    json.dump(result, f, indent=1)
  return result


def _seed_dir(workdir: str, v: Variant, seed: int) -> str:
  return os.path.join(workdir, v.name, f'seed{seed}')


def _init(workdir: str, v: Variant, seed: int) -> Optional[str]:
  return None if v.kind == 'scratch' else f'{v.kind}:{_seed_dir(workdir, v, seed)}/pretrain'


def _finetune_fraction(study, v: Variant, seed: int, fraction: float, workdir: str,
                       title: str, run: bool) -> tuple[Optional[dict], list]:
  """The first seed sweeps the hyper-parameters; the best held-out accuracy picks them for
  every seed. Returns (result with the choice and the sweep, runs done in this call)."""
  first, key = study.seeds[0], report.fraction_key(fraction)
  sweep, runs = {}, []
  for lr in study.sweep.learning_rates:
    for wd in study.sweep.weight_decays:
      cfg = finetune_config(study, v, first, _init(workdir, v, first), fraction, lr, wd)
      d = os.path.join(_seed_dir(workdir, v, first), f'finetune_{key}', f'lr{lr:g}_wd{wd:g}')
      sweep[(lr, wd)] = run_once(d, f'{title} fine-tuning on {key} of the labels, lr {lr:g}, '
                                 f'wd {wd:g} ({cfg.total_steps} steps)',
                                 lambda cfg=cfg, d=d: finetune(cfg, d), run and seed == first,
                                 cfg)
      runs += [sweep[(lr, wd)]] if seed == first else []
  if None in sweep.values():
    return None, runs
  lr, wd = max(sweep, key=lambda k: sweep[k]['holdout/accuracy'])  # First of ties: the grid's.
  if seed == first:
    result = sweep[(lr, wd)]
  else:
    cfg = finetune_config(study, v, seed, _init(workdir, v, seed), fraction, lr, wd)
    d = os.path.join(_seed_dir(workdir, v, seed), f'finetune_{key}')
    result = run_once(d, f'{title} fine-tuning on {key} of the labels at the chosen lr {lr:g},'
                      f' wd {wd:g} ({cfg.total_steps} steps)', lambda: finetune(cfg, d), run,
                      cfg)
    runs.append(result)
  if result is None:
    return None, runs
  held = {f'lr={a:g},wd={b:g}': r['holdout/accuracy'] for (a, b), r in sweep.items()}
  return dict(result, learning_rate=lr, weight_decay=wd, sweep_holdout=held), runs


def run_variant(study, v: Variant, seed: int, workdir: str, title: str,
                run: bool = True) -> Optional[dict]:
  """Pretraining, probes and fine-tunings of one variant and seed, with `complete` False while
  a part is missing and `run` is False (another process's share); None if none has run."""
  base, result, runs = _seed_dir(workdir, v, seed), {'finetune': {}}, []
  if v.kind != 'scratch':
    cfg = pretrain_config(study, v, seed)
    pre_dir = os.path.join(base, 'pretrain')
    result['pretrain'] = run_once(pre_dir, f'{title} {v.kind} pretraining ({v.epochs:g} epochs,'
                                  f' {cfg.total_steps} steps)', lambda: pretrain(cfg, pre_dir),
                                  run, cfg)
    runs.append(result['pretrain'])
  if v.probe:
    backbone = _with_data(study.mpp, study, None, seed)
    cfg = ml_collections.ConfigDict(dict(backbone=backbone.to_dict(), init=_init(workdir, v, seed),
                                         probe=study.probe.to_dict()))
    what = 'its random initialisation' if v.kind == 'scratch' else 'the pretrained backbone'
    result['probe'] = run_once(os.path.join(base, 'probe'), f'{title} linear probes of {what}',
                               lambda: probe(cfg, cfg.init), run, cfg)
    runs.append(result['probe'])
  for fraction in v.fractions:
    out, done = _finetune_fraction(study, v, seed, fraction, workdir, title, run)
    result['finetune'][report.fraction_key(fraction)], runs = out, runs + done
  complete = None not in runs and None not in result['finetune'].values()
  done = [r for r in runs if r]
  return dict(result, runs=done, complete=complete) if done else None


def run_pixels(study, workdir: str, run: bool) -> Optional[dict]:
  cfg = ml_collections.ConfigDict(dict(data=_with_data(study.mpp, study, None, 0).data.to_dict(),
                                       probe=study.probe.to_dict()))
  full = _with_data(study.mpp, study, None, 0)
  return run_once(os.path.join(workdir, 'baselines', PIXELS),
                  'raw-pixel least squares (full and k-shot)',
                  lambda: linear_probe.probe_pixels(full, tuple(cfg.probe.shots),
                                                    cfg.probe.draws), run, cfg)


def run_study(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or skips) the baselines and every variant x seed; returns
  {'pixels': result or None, 'variants': {name: [result per seed]}}."""
  study = settings(config)
  check(study)
  # Fine-tuning configs name their pretraining's path: one spelling of the workdir (relative,
  # absolute, through a link) lets a rerun recognise its finished runs.
  workdir = os.path.realpath(workdir)
  # --config.only=a,b arrives as one string: split it, so 'mpp_x' does not match 'mpp_x_rate15'.
  only = study.only.split(',') if isinstance(study.only, str) else list(study.only)
  wanted = lambda name: not only or name in only
  plan = [(v, s) for v in variants(study) for s in study.seeds]
  results = {'pixels': None, 'variants': {}}
  start = time.time()
  command = ' '.join(['python -m mpp.study', *sys.argv[1:]])
  if study.probe.enabled:
    results['pixels'] = run_pixels(study, workdir, wanted(PIXELS))
  for i, (v, seed) in enumerate(plan, 1):
    title = f'[{i}/{len(plan)}] {v.name} seed {seed}'
    result = run_variant(study, v, seed, workdir, title, wanted(v.name))
    if result is None or not result['complete']:
      print(f'{title}: left to another process (config.only)', flush=True)
    if result is None:
      continue
    results['variants'].setdefault(v.name, []).append(result)  # Partial ones too.
    _report(study, results, start, len(plan), command)  # An interrupted study still reports.
  table = _report(study, results, start, len(plan), command)
  print(table.markdown(), *(f'- {v}' for v in table.verdicts('labels')), sep='\n', flush=True)
  if study.results_path:
    print(f'wrote {study.results_path}', flush=True)
  return results


def _report(study, results: dict, start: float, planned: int, command: str) -> report.Table:
  table = report.Table(study, variants(study), results, session_s=time.time() - start,
                       planned=planned)
  if study.results_path:
    report.write(table, study.results_path, command)
  return table


def main(argv):
  del argv
  os.makedirs(FLAGS.workdir, exist_ok=True)
  run_study(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  cli.define_config_flags('configs/study/fashion_mnist.py')
  cli.run(main)
