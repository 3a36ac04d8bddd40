"""Running one run of the study: a classifier with held-out early stopping, one long MPP
pretraining that exports its backbone at each length, or raw-pixel least squares.

Held-out accuracy is measured at every evaluation; test accuracy only where the held-out
accuracy reaches a new best, so the number reported (test at the held-out-best evaluation) is
chosen without looking at test. Each evaluation is appended to `curve.json` in the run's
workdir, so an interrupted run resumes with its curve.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Callable, Optional

import jax
import numpy as np

from mpp import train as mpp_train
from supervised import finetune as finetune_lib, objective as supervised_objective
from study import store
from supervised import train as supervised_train
from vit import atomic_write, config as config_lib
from vit.data import pipeline, subsets
from vit.evaluators import linear_probe
from vit.evaluators.classification import ClassificationEvaluator
from vit.formats import vit_jax
from vit.training import loop

CURVE_FILE = 'curve.json'


class Curve:
  """The evaluations of one run, [step, holdout accuracy, test accuracy or None], on disk.

  `at(step)` is called by the loop's hook at every evaluation step, before the evaluators;
  entries past the step a resumed run restarts from are dropped (they will be redone)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, CURVE_FILE)
    self.points: list[list] = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        self.points = json.load(f)
    self.step, self.improved, self.resumed = 0, False, False

  def at(self, step: int) -> None:
    if not self.resumed:  # The first evaluation after a (re)start: forget later entries.
      self.points = [p for p in self.points if p[0] < step]
      self.resumed = True
    self.step = step

  def best(self) -> Optional[list]:
    return max(self.points, key=lambda p: p[1], default=None)  # First of ties.

  def add_holdout(self, accuracy: float) -> None:
    top = self.best()
    self.improved = top is None or accuracy > top[1]
    self.points.append([self.step, accuracy, None])

  def add_test(self, accuracy: float) -> None:
    self.points[-1][2] = accuracy
    store.write_json(self.path, self.points)

  def save(self) -> None:
    store.write_json(self.path, self.points)


class _Holdout:
  def __init__(self, evaluator, curve: Curve):
    self.name, self.evaluator, self.curve = 'holdout', evaluator, curve

  def evaluate(self, params) -> dict:
    out = self.evaluator.evaluate(params)
    self.curve.add_holdout(out['accuracy'])
    self.curve.save()
    return out


class _TestWhenBest:
  """The test split, evaluated only where the held-out accuracy has just improved."""

  def __init__(self, evaluator, curve: Curve):
    self.name, self.evaluator, self.curve = 'eval', evaluator, curve

  def evaluate(self, params) -> dict:
    if not self.curve.improved:
      return {}
    out = self.evaluator.evaluate(params)
    self.curve.add_test(out['accuracy'])
    return out


def _step_hook(curve: Curve, then: Optional[Callable] = None):
  def hook(state, step, writer):
    curve.at(step)
    if then:
      then(state, step, writer)
  return hook


def train_classifier(config, workdir: str) -> dict:
  """A classification run; returns the held-out-best evaluation and the curve."""
  if config.init:
    m, ckpt = finetune_lib.prepare(config)
    task = finetune_lib.build_task(config, m, ckpt)
  else:
    m = config_lib.validate(config)
    supervised_train.check_classes(config, m)
    task = supervised_train.build_task(config, m)
  curve = Curve(workdir)
  # The trainer's objective and mesh: the same logits as the test evaluator's, one mesh a run.
  holdout = ClassificationEvaluator(
      supervised_objective.build(config, m).predictions,
      lambda: pipeline.eval_batches(config, split=subsets.HOLDOUT_SPLIT), task.mesh,
      name='holdout')
  task = dataclasses.replace(
      task, evaluators=[_Holdout(holdout, curve), _TestWhenBest(task.evaluators[0], curve)],
      periodic_hook=_step_hook(curve), hook_every=config.eval_every)
  loop.train(config, workdir, task)
  step, held, test = curve.best()
  return dict(holdout_best=held, test_at_best=test, best_step=step,
              images_to_best=step * config.batch_size, steps=config.total_steps,
              budget_images=config.total_steps * config.batch_size, curve=curve.points)


class _MppCurve:
  """The MPP evaluator's held-out loss and accuracy at every evaluation, kept on disk; the
  export made at the same step gets its held-out MPP accuracy added to its record."""

  def __init__(self, evaluator, curve: Curve, pending: dict, on_export):
    self.name, self.evaluator, self.curve = evaluator.name, evaluator, curve
    self.pending, self.on_export = pending, on_export

  def evaluate(self, params) -> dict:
    out = self.evaluator.evaluate(params)
    self.curve.points.append([self.curve.step, out.get('accuracy'), out['loss']])
    self.curve.save()
    if self.curve.step in self.pending:
      name, record = self.pending.pop(self.curve.step)
      self.on_export(name, dict(record, holdout_mpp_accuracy=out.get('accuracy'),
                                holdout_mpp_loss=out['loss']))
    return out


def sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def write_backbone(backbone, path: str, step: int, batch_size: int) -> dict:
  """Writes `backbone` (the ViT's parameter subtree, official names) to `path` as a vit_jax .npz,
  atomically, and returns its record: step, images seen (step x batch_size), file name, sha256."""
  params = jax.tree.map(np.asarray, jax.device_get(backbone))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with atomic_write.file(path) as partial:
    vit_jax.save(params, partial)
  return dict(step=step, images=step * batch_size, file=os.path.basename(path),
              sha256=sha256(path))


def pretrain_mpp(config, workdir: str, exports: dict[int, tuple[str, str]],
                 on_export: Callable[[str, dict], None],
                 existing: Callable[[str], Optional[dict]]) -> dict:
  """One long MPP pretraining; at each step of `exports` ({step: (run name, .npz path)}) the
  backbone is written in the official layout and `on_export(name, record)` is called (again
  after that step's evaluation, with the held-out MPP accuracy). An export that already has a
  record and a file is never rewritten: a pretraining redone elsewhere may differ in its last
  bits, and finished fine-tunings name those bytes (`sha256`)."""
  m = config_lib.validate(config)
  task = mpp_train.build_task(config, m, workdir)
  curve, pending = Curve(workdir), {}

  def export(state, step, writer):
    del writer
    if step not in exports:
      return
    name, path = exports[step]
    if existing(name) is not None and os.path.exists(path):
      return
    record = write_backbone(state.params['backbone'], path, step, config.batch_size)
    on_export(name, record)
    pending[step] = (name, record)
  task = dataclasses.replace(
      task, evaluators=[_MppCurve(e, curve, pending, on_export) for e in task.evaluators],
      periodic_hook=_step_hook(curve, export), hook_every=config.eval_every)
  loop.train(config, workdir, task)
  return dict(steps=config.total_steps, images=config.total_steps * config.batch_size,
              curve=curve.points)


def pixels(config) -> dict:
  """Least squares on raw pixels of this run's labelled subset, L2 chosen on held-out."""
  parts = linear_probe.splits(config)
  train = pipeline.make_source(config, config.data.train_split)  # The labelled subset.
  (tx, ty), (hx, hy), (sx, sy) = (linear_probe.pixels(s) for s in
                                  (train, parts['holdout'], parts['test']))
  out = linear_probe.choose_l2(tx, ty, hx, hy, sx, sy, 10)
  return dict(holdout_best=out['holdout'], test_at_best=out['test'], l2=out['l2'],
              labels=int(len(ty)))
