"""A small-scale reproduction of §4.6: does MPP help, and which target? (`python -m mpp.study`).

Every run (a pretraining, a fine-tuning, a few-shot evaluation) has its own directory under
--workdir and ends by writing `result.json` there; rerunning the command skips finished runs
and resumes an interrupted one from its last checkpoint. At the end the table is printed and,
when `config.results_path` is set, written as Markdown with a plot beside it.

    python -m mpp.study --config configs/study/fashion_mnist.py --workdir runs/study
    python -m mpp.study --config configs/study/fashion_mnist.py --config.quick=True ...
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from absl import flags

from mpp import objective, report, train as mpp_train
from supervised import finetune as finetune_lib, train as supervised_train
from vit import cli, config as config_lib, init_spec, sharding
from vit.errors import UserError
from vit.evaluators import fewshot
from vit.training import loop

FLAGS = flags.FLAGS
RESULT_FILE = 'result.json'
RUN_CONFIG_FILE = 'run_config.json'


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  target: Optional[str]  # None: no pretraining (fine-tuning budget from scratch).
  rate: float = 0.5
  steps: int = 0          # MPP pretraining steps.

  @property
  def label(self) -> str:
    if self.target is None:
      return 'from scratch'
    return f'MPP {self.target}, {self.rate:.0%} corrupted, {self.steps} steps'


def settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The study config with `quick_settings` applied when `quick` is set."""
  config = ml_collections.ConfigDict(config.to_dict())
  if config.quick:
    q = config.quick_settings
    config.seeds, config.pretrain_steps = tuple(q.seeds), q.pretrain_steps
    config.length_sweep, config.finetune.total_steps = tuple(q.length_sweep), q.finetune_steps
    config.fewshot_max_test = q.fewshot_max_test
  return config


def variants(config: ml_collections.ConfigDict) -> list[Variant]:
  out = [Variant('scratch', None)]
  out += [Variant(f'mpp_{t}', t, config.rate, config.pretrain_steps) for t in config.targets]
  if config.low_rate:
    out.append(Variant(f'mpp_{config.targets[0]}_rate{round(config.low_rate * 100)}',
                       config.targets[0], config.low_rate, config.pretrain_steps))
  out += [Variant(f'mpp_{config.targets[0]}_steps{n}', config.targets[0], config.rate, n)
          for n in config.length_sweep if n != config.pretrain_steps]
  return out


def pretrain_config(study, variant: Variant, seed: int) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(study.mpp.to_dict())
  config.seed, config.total_steps = seed, variant.steps
  config.mpp.target, config.mpp.corruption_rate = variant.target, variant.rate
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, variant.steps // 5)
  config.mpp.image_every = 0
  return config


def finetune_config(study, seed: int, init: Optional[str]) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(study.finetune.to_dict())
  config.seed, config.init = seed, init
  if init is None:  # From scratch: the pretraining architecture, freshly initialised.
    for key in init_spec.BACKBONE_KEYS:
      *path, leaf = key.split('.')
      src, dst = study.mpp.model, config.model
      for part in path:
        src, dst = src[part], dst[part]
      dst[leaf] = src[leaf]
  return config


def fewshot_config(study, base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(base.to_dict())
  config.fewshot.shots, config.fewshot.max_test = tuple(study.shots), study.fewshot_max_test
  return config


class _Recorder:
  """Wraps an evaluator to keep what the loop's final evaluation returned."""

  def __init__(self, evaluator):
    self.evaluator, self.name, self.calls = evaluator, evaluator.name, []

  def evaluate(self, params) -> dict:
    self.calls.append(self.evaluator.evaluate(params))
    return self.calls[-1]


def _train(config, workdir: str, task) -> dict:
  recorders = [_Recorder(e) for e in task.evaluators]
  task.evaluators = recorders
  loop.train(config, workdir, task)
  out = {}
  for r in recorders:
    if config.ema_decay > 0:
      out.update({f'{r.name}_ema/{k}': v for k, v in r.calls[-1].items()})
      out.update({f'{r.name}/{k}': v for k, v in r.calls[-2].items()})
    else:
      out.update({f'{r.name}/{k}': v for k, v in r.calls[-1].items()})
  return out


def pretrain(config, workdir: str) -> dict:
  m = config_lib.validate(config)
  return _train(config, workdir, mpp_train.build_task(config, m, workdir))


def finetune(config, workdir: str) -> dict:
  if config.init is None:
    m = config_lib.validate(config)
    return _train(config, workdir, supervised_train.build_task(config, m))
  m, ckpt = finetune_lib.prepare(config)
  return _train(config, workdir, finetune_lib.build_task(config, m, ckpt))


def fewshot_of_init(config) -> dict:
  """Few-shot accuracy of a randomly initialised backbone: the floor pretraining should beat."""
  m = config_lib.validate(config)
  model = objective.build_model(config, m)
  shape = (1, config.image_size, config.image_size, config.data.channels)
  params = nn.unbox(model.init(jax.random.key(config.seed), jnp.zeros(shape), None,
                               train=False)['params'])
  evaluator = fewshot.FewShotEvaluator(config, objective.make_representation_fn(m),
                                       sharding.make_mesh(config.mesh),
                                       params_fn=lambda p: p['backbone'])
  return {f'fewshot/{k}': v for k, v in evaluator.evaluate(params).items()}


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
  return sorted(k for k in set(old) | set(new) if old.get(k, missing) != new.get(k, missing)
                and not (k not in old and new[k] == defaults.get(k, missing)))


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
  with open(path + '.tmp', 'w') as f:
    json.dump(result, f, indent=1)
  os.replace(path + '.tmp', path)  # A result file is complete or absent.
  return result


def run_variant(study, variant: Variant, seed: int, workdir: str, title: str,
                run: bool = True) -> Optional[dict]:
  """Pretraining (or few-shot of the init) then fine-tuning; None if a part is missing and
  `run` is False."""
  base = os.path.join(workdir, variant.name, f'seed{seed}')
  result = {}
  if variant.target is None:
    if study.shots:
      cfg = fewshot_config(study, pretrain_config(study, Variant('init', 'mean_color', 0.5, 1),
                                                  seed))
      result['pretrain'] = run_once(os.path.join(base, 'fewshot_init'),
                                    f'{title} few-shot of the random init',
                                    lambda: fewshot_of_init(cfg), run, cfg)
    init = None
  else:
    cfg = pretrain_config(study, variant, seed)
    if study.shots:
      cfg = fewshot_config(study, cfg)
      cfg.fewshot.enabled = True
    pre_dir = os.path.join(base, 'pretrain')
    result['pretrain'] = run_once(pre_dir, f'{title} MPP pretraining ({variant.steps} steps)',
                                  lambda: pretrain(cfg, pre_dir), run, cfg)
    init = f'mpp:{pre_dir}'
  ft = finetune_config(study, seed, init)
  ft_dir = os.path.join(base, 'finetune')
  result['finetune'] = run_once(ft_dir, f'{title} fine-tuning ({ft.total_steps} steps)',
                                lambda: finetune(ft, ft_dir), run, ft)
  return None if None in result.values() else result


def run_study(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or skips) every variant x seed; returns {variant name: [result per seed]}."""
  study = settings(config)
  # Fine-tuning configs name their pretraining's path: one spelling of the workdir (relative,
  # absolute, through a link) lets a rerun recognise its finished runs.
  workdir = os.path.realpath(workdir)
  plan = [(v, s) for v in variants(study) for s in study.seeds]
  results: dict[str, list] = {}
  start = time.time()
  command = ' '.join(['python -m mpp.study', *sys.argv[1:]])
  for i, (variant, seed) in enumerate(plan, 1):
    title = f'[{i}/{len(plan)}] {variant.name} seed {seed}'
    # `only` splits a study over several processes or machines sharing the workdir.
    run = not study.only or variant.name in study.only
    result = run_variant(study, variant, seed, workdir, title, run)
    if result is None:
      print(f'{title}: left to another process (config.only)', flush=True)
      continue
    results.setdefault(variant.name, []).append(result)
    _report(study, results, start, len(plan), command)  # An interrupted study still reports.
  table = _report(study, results, start, len(plan), command)
  print(table.markdown(), flush=True)
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
