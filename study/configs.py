"""Trainer configs of the study's runs, and their identity (a digest that survives moves).

The digest hashes the config with the init spec written as the backbone's run name
(`study:mpp/seed0/e30`), not as a path: a finished run stays finished when the checkout, the
workdir or the machine changes (issue 24, item 7).
"""
from __future__ import annotations

import hashlib
import json
import os

import ml_collections

from study import protocol
from study.protocol import Run
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
  return c


def pretrainer(study, run: Run) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(study.pretrainer.to_dict())
  c.seed = run.seed
  c.data.update(holdout=study.holdout, eval_split=subsets.HOLDOUT_SPLIT)
  c.update(total_steps=run.steps, eval_every=run.eval_every, checkpoint_every=run.eval_every)
  return c


def pixels(study, run: Run) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(study.classifier.to_dict())
  c.seed = run.seed
  c.data.update(holdout=study.holdout, train_fraction=protocol.fraction_of(study, run.fkey),
                subset_seed=run.seed)
  return c


def digest(config: ml_collections.ConfigDict) -> str:
  text = json.dumps(json.loads(config.to_json()), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def runnable(study, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config with its `study:` init spec turned into the backbone file's vit_jax spec."""
  c = ml_collections.ConfigDict(config.to_dict())
  if c.get('init') and c.init.startswith(BACKBONE_SPEC):
    c.init = 'vit_jax:' + os.path.abspath(backbone_file(study, c.init[len(BACKBONE_SPEC):]))
  return c
