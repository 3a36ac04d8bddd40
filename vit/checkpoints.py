"""Orbax checkpoints of the train state, the grain iterator state and the config.

A step directory holds three items: `state` (params, optimiser state, EMA, step, rng), `data`
(the grain iterator's position, so a resumed run sees exactly the batches it would have seen)
and `config` (JSON). Orbax writes to a temporary directory and renames it when complete, so a
partly written checkpoint is never listed.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from vit.errors import UserError


def manager(workdir: str, *, keep: int = 3, best_metric: Optional[str] = None,
            best_mode: str = 'max', read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      best_fn=(lambda m: m[best_metric]) if best_metric else None,
      best_mode=best_mode,
      keep_checkpoints_without_metrics=True,
      enable_async_checkpointing=not read_only,
      read_only=read_only,
      create=not read_only,
  )
  handlers = {'state': ocp.StandardCheckpointHandler(),
              'data': grain.checkpoint.CheckpointHandler(),
              'config': ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, 'checkpoints')),
                               options=options, item_handlers=handlers)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_iterator,
         config: ml_collections.ConfigDict, metrics: Optional[dict] = None) -> None:
  args = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config.to_dict()))
  if data_iterator is not None:
    args['data'] = grain.checkpoint.CheckpointSave(data_iterator)
  mngr.save(step, args=ocp.args.Composite(**args), metrics=metrics)


def restore(mngr: ocp.CheckpointManager, abstract_state: Any, data_iterator=None,
            step: Optional[int] = None) -> tuple[Any, int]:
  """Restores `abstract_state` (ShapeDtypeStructs with shardings) and the iterator in place."""
  step = mngr.latest_step() if step is None else step
  args = dict(state=ocp.args.StandardRestore(abstract_state))
  if data_iterator is not None:
    args['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = mngr.restore(step, args=ocp.args.Composite(**args))
  return restored['state'], step


def saved_config(workdir: str, step: Optional[int] = None) -> dict:
  """The config a run saved with its checkpoint."""
  mngr = manager(workdir, read_only=True)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise UserError(f'{workdir}: no checkpoint found under {workdir}/checkpoints')
  return mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']


def restore_params(workdir: str, step: Optional[int] = None, *, use_ema: bool = False) -> dict:
  """Only the parameters of a saved train state, on the host, for fine-tuning or inspection."""
  mngr = manager(workdir, read_only=True)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise UserError(f'{workdir}: no checkpoint found under {workdir}/checkpoints')
  item = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
  key = 'ema_params' if use_ema and item.get('ema_params') is not None else 'params'
  return jax.device_get(item[key])
