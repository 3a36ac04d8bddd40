"""Trainer configs of the study's runs, and their identity (a digest that survives moves).

The digest hashes the config's keys that differ from the schema's defaults, with the init spec
written as the backbone's run name (`study:mpp/seed0/e30`), not as a path: a finished run stays
finished when the checkout, the workdir or the machine changes, or the schema gains a key
(issue 24, item 7).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import ml_collections

from configs.mae import fashion_mnist as mae_config
from configs.simmim import fashion_mnist as simmim_config
from study import protocol
from study.protocol import Run
from vit import config as config_lib
from vit.data import subsets

BACKBONE_SPEC = 'study:'


def backbone_file(study, name: str) -> str:
  """The committed .npz of an exported backbone run (official vit_jax layout)."""
  return os.path.join(study.backbones, name.replace('/', '_') + '.npz')


def classifier(study, run: Run) -> ml_collections.ConfigDict:
  """A resolved 'train' run (choices applied) -> its supervised trainer config."""
  c = ml_collections.ConfigDict(study.classifier.to_dict())
  c.seed = run.seed
  c.data.update(holdout=study.holdout, train_fraction=protocol.fraction_of(study, run.fkey),
                subset_seed=run.seed, crop_padding=int(run.pad or 0))
  c.optimizer.update(learning_rate=float(run.lr), warmup_steps=run.warmup)
  c.update(total_steps=run.steps, eval_every=run.eval_every, checkpoint_every=run.eval_every)
  c.init = BACKBONE_SPEC + run.backbone if run.backbone else None
  if run.classes:  # Cell (b): fine-tuning on a class subset, relabelled 0..k-1.
    c.data.classes, c.model.num_classes = tuple(run.classes), len(run.classes)
  if run.channels:  # Cell (c): a 1-channel backbone takes the grey images as stored.
    c.data.channels = run.channels
  return c


def pretrainer(study, run: Run) -> ml_collections.ConfigDict:
  """A resolved 'pretrain' run -> its trainer config: cell (a)'s MPP pretrainer, or a later
  cell's variant of it (study/later_cells.py) with the same optimiser, data and schedule."""
  if run.variant is not None:
    return _variant(study, run)
  c = ml_collections.ConfigDict(study.pretrainer.to_dict())
  c.seed = run.seed
  c.data.update(holdout=study.holdout, eval_split=subsets.HOLDOUT_SPLIT)
  c.update(total_steps=run.steps, eval_every=run.eval_every, checkpoint_every=run.eval_every)
  return c


def _reconstruction(study, objective: str) -> ml_collections.ConfigDict:
  """MAE or SimMIM with MPP's pretraining recipe (optimiser, schedule, batch, flip, logging):
  the objectives differ in what they mask and predict only (issue 27)."""
  base = {'mae': mae_config, 'simmim': simmim_config}[objective].get_config()
  pre = study.pretrainer
  for key in ('model', 'data', 'optimizer'):  # The same backbone, images and optimiser.
    base[key] = ml_collections.ConfigDict(pre[key].to_dict())
  base.update(image_size=pre.image_size, batch_size=pre.batch_size, log_every=pre.log_every,
              eval_batch_size=pre.eval_batch_size, keep_checkpoints=1)
  base[objective].eval_examples = study.mim.eval_examples
  return base


def _supervised_pretrainer(study) -> ml_collections.ConfigDict:
  """Supervised pretraining with labels: the classifier on MPP's optimiser and schedule."""
  c = ml_collections.ConfigDict(study.classifier.to_dict())
  c.optimizer = ml_collections.ConfigDict(study.pretrainer.optimizer.to_dict())
  return c


def _variant(study, run: Run) -> ml_collections.ConfigDict:
  if run.variant in ('mpp', 'transfer_mpp'):
    c = ml_collections.ConfigDict(study.pretrainer.to_dict())
  elif run.variant == 'transfer_supervised':
    c = _supervised_pretrainer(study)
  else:
    c = _reconstruction(study, run.variant)
  c.seed = run.seed
  c.data.update(holdout=study.holdout, eval_split=subsets.HOLDOUT_SPLIT)
  if run.classes:
    c.data.classes = tuple(run.classes)
    if c.model.num_classes:
      c.model.num_classes = len(run.classes)
  c.update(total_steps=run.steps, eval_every=run.eval_every, checkpoint_every=run.eval_every)
  for key, value in run.overrides:
    *parents, leaf = key.split('.')
    node = c
    for part in parents:
      node = node[part]
    node[leaf] = value
  return c


def pixels(study, run: Run) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(study.classifier.to_dict())
  c.seed = run.seed
  c.data.update(holdout=study.holdout, train_fraction=protocol.fraction_of(study, run.fkey),
                subset_seed=run.seed)
  return c


def _flat(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f'{prefix}{k}.') if isinstance(v, dict) else {f'{prefix}{k}': v})
  return out


def identity(config: ml_collections.ConfigDict) -> dict:
  """The keys of `config` that are not at the config schema's default: what the run is.

  A key the schema adds later (at its default) leaves every finished run's identity alone; a
  changed default changes it, as it changes what the run would do."""
  defaults = _flat(json.loads(config_lib.defaults().to_json()))
  missing = object()
  return {k: v for k, v in _flat(json.loads(config.to_json())).items()
          if defaults.get(k, missing) != v}


def digest(config: ml_collections.ConfigDict) -> str:
  text = json.dumps(identity(config), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def runnable(study, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config with its `study:` init spec turned into the backbone file's vit_jax spec."""
  c = ml_collections.ConfigDict(config.to_dict())
  if c.get('init') and c.init.startswith(BACKBONE_SPEC):
    c.init = 'vit_jax:' + os.path.abspath(backbone_file(study, c.init[len(BACKBONE_SPEC):]))
  return c


def probe(study, run: Run) -> ml_collections.ConfigDict:
  """A 'probe' run's config: the data it reads (all ten classes, the study's held-out split),
  the probe settings, and what it probes (`init`: a backbone's run name, or none for raw
  pixels and for the random initialisation, which is MPP pretraining's at `seed`)."""
  c = ml_collections.ConfigDict((study.pretrainer if run.variant == 'init'
                                 else study.classifier).to_dict())
  c.seed = run.seed
  c.data.update(holdout=study.holdout, train_fraction=1.0)
  c.probe = ml_collections.ConfigDict(study.probes.to_dict())
  c.probe.what = run.variant or 'backbone'
  c.init = BACKBONE_SPEC + run.source if run.source else None
  return c


def walltime(study, run: Run) -> ml_collections.ConfigDict:
  """A resolved 'walltime' run's config: the two pretraining configs it times (cell (a)'s MPP
  pretrainer and MAE at its chosen point) and how."""
  mpp_run = Run('mpp', 'pretrain', 0, steps=run.steps, eval_every=run.steps,
                warmup=study.pretrainer.optimizer.warmup_steps)
  mae_run = dataclasses.replace(mpp_run, variant='mae', overrides=run.overrides)
  return ml_collections.ConfigDict(dict(
      mpp=pretrainer(study, mpp_run).to_dict(), mae=pretrainer(study, mae_run).to_dict(),
      rounds=study.mim.walltime_rounds, steps=study.mim.walltime_steps, mpp_steps=run.steps,
      steps_per_epoch=study.steps_per_epoch))


def figures(study, run: Run) -> ml_collections.ConfigDict:
  """A 'figures' run's config: whose final weights, on how many test images."""
  return ml_collections.ConfigDict(dict(source=BACKBONE_SPEC + run.source, max_images=128))


def final_weights_file(study, name: str) -> str:
  """Where the final weights of a finished classifier run are kept as an official .npz."""
  return os.path.join(study.backbones, name.replace('/', '_') + '_final.npz')
