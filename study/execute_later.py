"""Running the new kinds of run of cells (b)-(e) (study/later_cells.py): a pretraining of any
objective that exports its backbone at several lengths, a frozen-feature probe, the wall-time
measurement of MAE against MPP, and the §4.5 figures of a finished run's final weights.

Classifier fine-tunings are cell (a)'s ('train', study/execute.py).
"""
from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from typing import Callable, Optional

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mae import train as mae_train
from mpp import objective as mpp_objective, train as mpp_train
from simmim import train as simmim_train
from study.execute import Curve, _step_hook, sha256, write_backbone
from supervised import train as supervised_train
from vit import atomic_write, config as config_lib, init_spec, objective as objective_lib
from vit import sharding
from vit.errors import UserError
from vit.evaluators import linear_probe
from vit.formats import vit_jax
from vit.inspect import report as inspect_report
from vit.training import loop, optimizers, sharded

Exports = dict[int, list[tuple[str, str]]]  # step -> [(export run name, .npz path)]


def _task(objective: str, config, m, workdir: str) -> tuple[loop.Task, Callable]:
  """The trainer's own task for `objective`, and how its params give the ViT backbone."""
  if objective == 'supervised':
    supervised_train.check_classes(config, m)
    # The head of the pretraining classes is not part of the backbone.
    return (supervised_train.build_task(config, m),
            lambda p: {k: v for k, v in p.items() if k != 'head'})
  build = {'mpp': lambda: mpp_train.build_task(config, m, workdir),
           'mae': lambda: mae_train.build_task(config, m),
           'simmim': lambda: simmim_train.build_task(config, m)}[objective]
  return build(), lambda p: p['backbone']


class _Evaluations:
  """A pretraining evaluator's held-out accuracy (if it has one) and loss (if it has one) at
  every evaluation, kept on disk; the exports made at that step get them in their record."""

  def __init__(self, evaluator, curve: Curve, pending: dict, on_export):
    self.name, self.evaluator, self.curve = evaluator.name, evaluator, curve
    self.pending, self.on_export = pending, on_export

  def evaluate(self, params) -> dict:
    out = self.evaluator.evaluate(params)
    accuracy, loss = out.get('accuracy'), out.get('loss')
    self.curve.points.append([self.curve.step, accuracy, loss])
    self.curve.save()
    for name, record in self.pending.pop(self.curve.step, []):
      self.on_export(name, dict(record, holdout_accuracy=accuracy, holdout_loss=loss))
    return out


def pretrain(objective: str, config, workdir: str, exports: Exports,
             on_export: Callable[[str, dict], None],
             existing: Callable[[str], Optional[dict]]) -> dict:
  """One pretraining of `objective` ('mpp', 'supervised', 'mae', 'simmim'); at each step of
  `exports` the backbone is written in the official layout and `on_export(name, record)` is
  called (again after that step's evaluation, if there is one, with the held-out numbers). As
  cell (a)'s pretrain_mpp: an export with a record and a file is never rewritten."""
  m = config_lib.validate(config)
  task, backbone_of = _task(objective, config, m, workdir)
  curve, pending = Curve(workdir), {}

  def export(state, step, writer):
    del writer
    for name, path in exports.get(step, []):
      if existing(name) is not None and os.path.exists(path):
        continue
      record = write_backbone(backbone_of(state.params), path, step, config.batch_size)
      on_export(name, record)
      if step % config.eval_every == 0 or step == config.total_steps:
        pending.setdefault(step, []).append((name, record))
  hook_every = math.gcd(config.eval_every, *exports)
  task = dataclasses.replace(
      task, evaluators=[_Evaluations(e, curve, pending, on_export) for e in task.evaluators],
      periodic_hook=_step_hook(curve, export), hook_every=hook_every)
  loop.train(config, workdir, task)
  return dict(steps=config.total_steps, images=config.total_steps * config.batch_size,
              curve=curve.points)


def random_backbone(config) -> tuple[dict, dict]:
  """(model, params) of the ViT as MPP pretraining initialises it at config.seed."""
  m = config_lib.validate(config)
  obj = mpp_objective.build(config, m)
  params = obj.backbone(nn.unbox(obj.init_params(jax.random.key(config.seed))))
  return m, params


def probe(config, what: str, path: Optional[str] = None) -> dict:
  """Frozen-feature probes (config.probe: shots, draws, block) of raw pixels ('pixels'), of a
  random initialisation ('init') or of the backbone .npz at `path` ('backbone'):
  {'{representation}/{probe}': test accuracy (fraction), ...}, L2 chosen on held-out."""
  p = config.probe
  shots, draws = tuple(p.shots), int(p.draws)
  # The trainer config the data and the model come from, without the probe's own keys.
  config = ml_collections.ConfigDict({k: v for k, v in config.to_dict().items()
                                      if k != 'probe'})
  if what == 'pixels':
    return linear_probe.probe_pixels(config, shots, draws)
  if what == 'init':
    model, params = random_backbone(config)
  else:
    ckpt = init_spec.load('vit_jax:' + path)
    model, params = ckpt.model, ckpt.params
  return linear_probe.probe_backbone(config, model, jax.device_put(params), int(p.block), shots,
                                     draws)


def _compiled_step(config, objective: str):
  """The trainer's jitted, donated step of `objective` on one fixed random batch."""
  m = config_lib.validate(config)
  obj = objective_lib.resolve(objective).build(config, m)
  mesh = sharding.make_mesh(config.mesh)
  tx, schedule = optimizers.build(config.optimizer, config.total_steps)
  task = sharded.Task(init_params=obj.init_params, loss_fn=obj.loss, train_data=None)
  build, shardings = sharded.create_state(task, tx, config, mesh)
  rng = np.random.default_rng(0)
  shape = (config.batch_size, config.image_size, config.image_size, config.data.channels)
  batch = jax.device_put({'image': rng.integers(0, 256, shape, dtype=np.uint8),
                          'label': np.zeros((config.batch_size,), np.int32)},
                         sharding.batch_sharding(mesh))
  step = sharded.jit_train_step(obj.loss, tx, schedule, config, shardings, mesh)
  with jax.set_mesh(mesh):
    state = build()
    compiled = step.lower(state, batch).compile()
  return [state], compiled, batch, mesh


def _time(step, n: int) -> float:
  state, compiled, batch, mesh = step
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    for _ in range(n):
      state[0], metrics = compiled(state[0], batch)
    jax.block_until_ready((state[0], metrics))
  return time.perf_counter() - start


def walltime(mpp_config, mae_config, rounds: int, steps: int, mpp_steps: int,
             steps_per_epoch: int) -> dict:
  """Images/s of MPP's and MAE's training steps (the trainers' own jitted steps, one fixed
  batch each, timed in turns for `rounds` rounds of `steps` steps, medians; evaluations and
  the input pipeline not counted), and MAE's step count at MPP's wall time (`wall_steps`;
  not `steps`, which the report reads as trained steps): `mpp_steps` x
  (MAE images/s / MPP images/s), rounded to whole epochs of `steps_per_epoch` steps."""
  cases = {'mpp': _compiled_step(mpp_config, 'mpp'), 'mae': _compiled_step(mae_config, 'mae')}
  for case in cases.values():
    _time(case, 2)  # Warm: the first calls allocate.
  seconds = {k: [] for k in cases}
  for _ in range(rounds):
    for name, case in cases.items():
      seconds[name].append(_time(case, steps))
  rate = {k: steps * cfg.batch_size / statistics.median(v)
          for (k, v), cfg in zip(seconds.items(), (mpp_config, mae_config))}
  ratio = rate['mae'] / rate['mpp']
  epochs = max(1, round(mpp_steps * ratio / steps_per_epoch))
  return dict(mpp_img_s=rate['mpp'], mae_img_s=rate['mae'], ratio=ratio, rounds=rounds,
              steps_per_round=steps, seconds=seconds, wall_steps=epochs * steps_per_epoch,
              mpp_steps=mpp_steps)


def final_weights(run_dir: str, path: str) -> dict:
  """The final weights of a finished classifier run: its newest checkpoint in `run_dir`
  written once as an official .npz at `path` (committed, so that another machine reads it);
  an existing file is never rewritten. Raises UserError naming both places when neither
  exists."""
  if not os.path.exists(path):
    if not os.path.isdir(os.path.join(run_dir, 'checkpoints')):
      raise UserError(f'the final weights are neither in {path} nor in {run_dir}/checkpoints: '
                      'export them on the machine whose workdir holds the run '
                      '(docs/study/README.md, cell (e))')
    ckpt = init_spec.load_workdir(run_dir, use_ema=False)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write.file(path) as partial:
      vit_jax.save(ckpt.params, partial)
  return dict(file=os.path.basename(path), sha256=sha256(path))


def figures(npz: str, out: str, max_images: int = 128, representation: str = 'auto') -> dict:
  """The §4.5 analyses (python -m vit.inspect) of the backbone or classifier in `npz`, on
  the first `max_images` Fashion-MNIST test images: PNGs, inspect.json and inspect.npz in
  `out`; returns inspect.json's summary. `representation` 'patch_mean' for an exported MPP
  backbone: its rollout reads the patch tokens' mean, as its probes do, not its class token."""
  return inspect_report.inspect('vit_jax:' + npz, out, max_images=max_images,
                                representation=representation)
