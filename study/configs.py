"""Trainer configs of the study's runs, and their identity (a digest that survives moves).

The digest hashes the config's keys that differ from the schema's defaults, with the init spec
written as the backbone's run name (`study:mpp/seed0/e30`), not as a path: a finished run stays
finished when the checkout, the workdir or the machine changes, or the schema gains a key
(issue 24, item 7).
"""
from __future__ import annotations

import hashlib
import json
import os

import ml_collections

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
