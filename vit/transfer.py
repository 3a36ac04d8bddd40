"""Fine-tuning surgery: a checkpoint's backbone under a new config, its weights mapped onto a
model of another resolution or head (paper §3.2: position embeddings interpolated in 2D, the
head replaced by a zero one)."""
from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence

import ml_collections
import numpy as np

from vit import config as config_lib
from vit.architecture import differences, listing
from vit.errors import ConfigError, UserError
from vit.formats.tree import flatten, unflatten
from vit.models import presets, vit as vit_model
from vit.models.spec import ModelSpec

# Keys that fix the shapes (or the function) of the backbone; checkpoints state them.
BACKBONE_KEYS = ('patches.size', 'hidden_size', 'transformer.mlp_dim', 'transformer.num_heads',
                 'transformer.num_layers', 'resnet.num_layers', 'resnet.width_factor',
                 'classifier', 'gelu_approximate', 'layer_norm_epsilon', 'posemb', 'attention',
                 'pixels.rescale', 'pixels.mean', 'pixels.std')
HEAD_KEYS = ('head', 'pre_logits')


def _get(d: dict, dotted: str):
  for part in dotted.split('.'):
    d = d.get(part) if isinstance(d, dict) else None
  return tuple(d) if isinstance(d, list) else d


def _explicit_keys(given: dict, defaults: dict) -> dict:
  """The backbone keys the config sets itself: those that differ from vit.config's defaults,
  then those its preset (model.name) gives. Raises ConfigError for an unknown preset."""
  explicit = {k: _get(given, k) for k in BACKBONE_KEYS if _get(given, k) != _get(defaults, k)}
  if given.get('name') is not None:
    if given['name'] not in presets.PRESETS:
      raise ConfigError('model.name', given['name'],
                        f'unknown preset; known: {", ".join(presets.PRESETS)}')
    preset = presets.PRESETS[given['name']]
    for key in BACKBONE_KEYS:
      value = _get(preset, key)
      if value is not None and key not in explicit:
        explicit[key] = value
  return explicit


def merge_model(config_model: ml_collections.ConfigDict, ckpt_model: ModelSpec,
                what: str = 'the init checkpoint') -> dict:
  """The checkpoint's backbone with the config's other model keys (dropout, head, dtype...),
  in `config.model`'s nested layout (the config's keys are set from it).

  A backbone key that the config sets explicitly (differs from vit.config's default, or comes
  from the preset in model.name) to another value than the checkpoint's is a UserError
  listing every such key.
  """
  given = config_model.to_dict()
  defaults = config_lib.model_defaults().to_dict()
  ckpt = ckpt_model.to_dict()  # The backbone keys are config.model's dotted names.
  conflicts = [f'model.{k}: config {v!r} vs checkpoint {_get(ckpt, k)!r}'
               for k, v in _explicit_keys(given, defaults).items()
               if v != _get(ckpt, k)
               and not (k.startswith('resnet.') and ckpt_model.resnet is None
                        and _get(given, 'resnet.num_layers') is None)]
  if conflicts:
    raise UserError(f'config.model conflicts with {what}: ' + listing(conflicts)
                    + ' (unset these keys to take the checkpoint\'s)')
  merged = copy.deepcopy(given)
  for key in BACKBONE_KEYS:
    _assign(merged, key, _get(ckpt, key))
  return merged


def adopt_backbone(config: ml_collections.ConfigDict, ckpt_model: ModelSpec, channels: int,
                   what: str) -> None:
  """Writes the backbone of the checkpoint `what` (its `ckpt_model`, trained on `channels`-
  channel images) into `config.model`, in place: the model that fine-tuning from it trains,
  with the config's own head, dropout and dtype (`merge_model`). Raises UserError listing the
  backbone keys the config sets to other values (`merge_model`), ConfigError naming
  data.channels when the config's images have another channel count."""
  merged = merge_model(config.model, ckpt_model, what)
  if config.data.channels != channels:
    raise ConfigError('data.channels', config.data.channels,
                      f'the checkpoint {what} takes {channels}-channel images')
  for key in BACKBONE_KEYS:
    _assign(config.model, key, _get(merged, key))


def _assign(d: dict, dotted: str, value) -> None:
  *parents, leaf = dotted.split('.')
  for part in parents:
    if d.get(part) is None:
      d[part] = {}
    d = d[part]
  d[leaf] = value


def adapt_params(loaded: dict, target: dict, grid: Sequence[int], *,
                 drop: Sequence[str] = HEAD_KEYS, fresh: Optional[Callable[[], dict]] = None,
                 what: str = 'init') -> dict:
  """`loaded` mapped onto the parameter shapes of `target` (arrays or ShapeDtypeStructs).

  Position parameters are interpolated to the patch `grid` (rows, cols) of the target, the
  class token's kept (vit.models.vit.resize_position_params). The top-level layers named in
  `drop` are not taken from the checkpoint: fine-tuning drops the head and the representation
  layer (paper §3.2); a new head is zero, a new representation layer comes from `fresh()`.
  Any other difference is a UserError listing the keys and shapes.
  """
  try:
    loaded = vit_model.resize_position_params(dict(loaded), tuple(grid))
  except (ValueError, KeyError) as e:
    raise UserError(f'{what}: position embeddings cannot be resized to {tuple(grid)}: {e}'
                    ) from None
  if vit_model.SCANNED_BLOCKS in target.get('Transformer', {}):  # model.scan_layers
    loaded = vit_model.stack_blocks(loaded)
  have, want = flatten(loaded), flatten(target)
  have = {k: v for k, v in have.items() if k.split('/')[0] not in drop}
  if not any(k.startswith('head/') for k in want):  # A representation-only model.
    have = {k: v for k, v in have.items() if not k.startswith('head/')}
  head_keys = [k for k in want if k.split('/')[0] in HEAD_KEYS and k not in have]
  problems = differences(have, {k: v for k, v in want.items() if k not in head_keys})
  if problems:
    raise UserError(f'{what}: the checkpoint does not fit the model: ' + listing(problems))
  out = {k: np.asarray(v, dtype=want[k].dtype) for k, v in have.items()}
  out.update(_new_heads(head_keys, want, fresh, what))
  return unflatten(out)


def _new_heads(keys: list[str], want: dict, fresh: Optional[Callable[[], dict]],
               what: str) -> dict:
  """The target's head layers the checkpoint does not give: a zero head (paper §3.2), a
  representation layer from `fresh()`."""
  out, fresh_tree = {}, None
  for key in keys:
    if key.startswith('head/'):
      out[key] = np.zeros(want[key].shape, want[key].dtype)
    else:
      fresh_tree = flatten(fresh()) if fresh_tree is None and fresh else fresh_tree
      if fresh_tree is None:
        raise UserError(f'{what}: {key} is not in the checkpoint and no initialiser was given')
      out[key] = np.asarray(fresh_tree[key])
  return out
