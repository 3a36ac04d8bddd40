"""timm VisionTransformer weights: a `model.safetensors` with timm's names, both directions.

Names and layouts as in timm's `timm/models/vision_transformer.py` (`VisionTransformer`):
`cls_token` [1, 1, D], `pos_embed` [1, 1 + N, D] (or [1, N, D] with `no_embed_class`),
`patch_embed.proj` (a conv, OIHW), per block `norm1`, `attn.qkv` (q, k and v fused along the
output axis, [3D, D]), `attn.proj`, `norm2`, `mlp.fc1`, `mlp.fc2`, then `norm` and `head`.
timm's ViT uses exact (erf) GELU and LayerNorm eps 1e-6. timm's `config.json` (written by
`timm.models.save_for_hf`) gives the head count (`model_args.num_heads`, which the fused qkv
does not show), the pooling and, in `pretrained_cfg`, the input size, mean and std.

Weights that a plain ViT does not have (LayerScale `ls1`, `norm_pre`, `fc_norm`, register
tokens, q/k norms) are refused with their names, as is any pooling but the class token's.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from typing import Optional, Sequence

import numpy as np

from vit.data import transforms
from vit.errors import UserError, require_directory
from vit.formats import safetensors_dir, table
from vit.formats.table import Dims, Row
from vit.formats.torch_layout import CONV, HEADS_BIAS, HEADS_IN, HEADS_OUT, LINEAR, fused, zeros
from vit.formats.tree import (OFFICIAL_PIXELS, TABLE_POSEMBS, Params, Read, as_learned_1d,
                              check_floating, class_row_posemb, input_pixels, pixels, posemb,
                              read_json_object, square_grid)
from vit.models.spec import ModelSpec

logger = logging.getLogger(__name__)

SUFFIX = None  # save writes a directory (vit.formats.registry.Format).
WEIGHTS = safetensors_dir.WEIGHTS
# Heads of timm's named ViT sizes by width (vision_transformer.py's model definitions), for a
# config.json without model_args: tiny, small, medium, base, large, huge.
_HEADS_BY_WIDTH = {192: 3, 384: 6, 512: 8, 768: 12, 1024: 16, 1280: 16}
_ACT = {'gelu': False, 'gelu_tanh': True}


def _posemb(x, dims):
  """timm's `no_embed_class` embedding ([1, N, D], N a square) gets the official class row."""
  del dims
  n = x.shape[1]
  return class_row_posemb(x, True) if square_grid(n) and not square_grid(n - 1) else x


_BLOCK = 'Transformer/encoderblock_{i}/'
_ATTN = _BLOCK + 'MultiHeadDotProductAttention_1/'
_QKV = tuple(f'{_ATTN}{n}/' for n in ('query', 'key', 'value'))
# The format, one row per tensor: official path, timm's name, transform, inverse. q, k and v
# share one fused Linear (`attn.qkv`), split here into the official three.
ROWS = (
    Row('embedding/kernel', 'patch_embed.proj.weight', *CONV),
    Row('embedding/bias', 'patch_embed.proj.bias'),
    Row('cls', 'cls_token'),
    Row('Transformer/posembed_input/pos_embedding', 'pos_embed', _posemb),
    Row('Transformer/encoder_norm/scale', 'norm.weight'),
    Row('Transformer/encoder_norm/bias', 'norm.bias'),
    Row(_BLOCK + 'LayerNorm_0/scale', 'blocks.{i}.norm1.weight'),
    Row(_BLOCK + 'LayerNorm_0/bias', 'blocks.{i}.norm1.bias'),
    Row(tuple(q + 'kernel' for q in _QKV), 'blocks.{i}.attn.qkv.weight', *fused(HEADS_IN)),
    Row(tuple(q + 'bias' for q in _QKV), 'blocks.{i}.attn.qkv.bias', *fused(HEADS_BIAS),
        default=zeros(3)),  # qkv_bias=False: no bias tensor.
    Row(_ATTN + 'out/kernel', 'blocks.{i}.attn.proj.weight', *HEADS_OUT),
    Row(_ATTN + 'out/bias', 'blocks.{i}.attn.proj.bias'),
    Row(_BLOCK + 'LayerNorm_2/scale', 'blocks.{i}.norm2.weight'),
    Row(_BLOCK + 'LayerNorm_2/bias', 'blocks.{i}.norm2.bias'),
    Row(_BLOCK + 'MlpBlock_3/Dense_0/kernel', 'blocks.{i}.mlp.fc1.weight', *LINEAR),
    Row(_BLOCK + 'MlpBlock_3/Dense_0/bias', 'blocks.{i}.mlp.fc1.bias'),
    Row(_BLOCK + 'MlpBlock_3/Dense_1/kernel', 'blocks.{i}.mlp.fc2.weight', *LINEAR),
    Row(_BLOCK + 'MlpBlock_3/Dense_1/bias', 'blocks.{i}.mlp.fc2.bias'),
    Row('head/kernel', 'head.weight', *LINEAR, when='head.weight'),
    Row('head/bias', 'head.bias', when='head.weight'),
)


def _shown(value) -> str:
  """`value` as JSON, cut to 60 characters (with an ellipsis) for a one-line message."""
  text = json.dumps(value)
  return text if len(text) <= 60 else text[:60] + '…'


def _config(directory: str) -> dict:
  """timm's config.json in `directory` ({} without one); UserError naming the file and key when
  model_args or pretrained_cfg, which every reader here looks into, is not a JSON object."""
  path = os.path.join(directory, 'config.json')
  if not os.path.isfile(path):
    return {}
  cfg = read_json_object(path, 'timm')
  for key in ('model_args', 'pretrained_cfg'):
    if key in cfg and not isinstance(cfg[key], dict):
      raise UserError(f'timm:{path}: {key}={_shown(cfg[key])}: must be a JSON object, as '
                      'timm.models.save_for_hf writes it')
  return cfg


def _weights(directory: str) -> dict[str, np.ndarray]:
  require_directory(directory, f'timm:{directory}', f'a model directory ({WEIGHTS})')
  path = os.path.join(directory, WEIGHTS)
  if not os.path.isfile(path):
    raise UserError(f'timm:{directory}: no {WEIGHTS}{safetensors_dir.pickled_hint(directory)}')
  weights = safetensors_dir.read_weights(path, 'timm')
  # The ViT's own tensors: others are refused by name (`_check_supported`), integer buffers too.
  known = table.names(ROWS, _blocks(weights))
  check_floating({k: v for k, v in weights.items() if k in known}, f'timm:{path}')
  return {k: np.asarray(v, np.float32) for k, v in weights.items()}


def _blocks(w: dict) -> range:
  """Blocks 0..n-1, n one more than the highest `blocks.{i}.` index among the tensors."""
  found = [int(m[1]) for k in w for m in [re.match(r'blocks\.(\d+)\.', k)] if m]
  return range(1 + max(found, default=-1))


def _check_supported(directory: str, w: dict, cfg: dict) -> None:
  unknown = set(w) - table.names(ROWS, _blocks(w))
  if unknown:
    raise UserError(f'timm:{directory}: weights a plain ViT does not have (LayerScale, '
                    f'norm_pre, fc_norm, register tokens, ...): {", ".join(sorted(unknown)[:6])}')
  pool = cfg.get('global_pool', cfg.get('model_args', {}).get('global_pool', 'token'))
  if pool != 'token' or 'cls_token' not in w:
    raise UserError(f'timm:{directory}: global_pool={pool!r}'
                    f'{"" if "cls_token" in w else " without a class token"}; only the class '
                    f'token\'s pooling ("token") is supported')


def _check_model_args(directory: str, cfg: dict, width: int, depth: int) -> None:
  """UserError when config.json's model_args state another width or depth than the weights
  have (another model's config.json), as timm's create_model would refuse them: the head count
  is read from it, and a wrong one changes every attention without any shape to show it."""
  args = cfg.get('model_args', {})
  for key, actual in (('embed_dim', width), ('depth', depth)):
    if key in args and args[key] != actual:
      raise UserError(f'timm:{directory}/config.json: model_args.{key}={args[key]!r}, but '
                      f'{WEIGHTS} has {actual} (cls_token width, blocks): is config.json this '
                      'model\'s?')


def _num_heads(directory: str, cfg: dict, width: int) -> int:
  heads = cfg.get('model_args', {}).get('num_heads') or _HEADS_BY_WIDTH.get(width)
  if not heads:
    raise UserError(f'timm:{directory}: config.json states no model_args.num_heads for width '
                    f'{width} (the fused qkv weight does not show the head count)')
  if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1 or width % heads:
    raise UserError(f'timm:{directory}/config.json: model_args.num_heads={heads!r}: must be a '
                    f'positive integer that divides the width {width}')
  return heads


# timm's defaults for what a pretrained_cfg leaves out (timm.data.resolve_data_config).
_VIEW_DEFAULTS = dict(crop_pct=0.875, interpolation='bicubic', crop_mode='center')
# The view this repository uses without one (predict's plain resize), as timm states it.
PLAIN_VIEW = dict(crop_pct=1.0, interpolation='bilinear', crop_mode='squash')


def read_view(directory: str, cfg: dict, size: Optional[int]) -> Optional[dict]:
  """The evaluation view timm applies to this checkpoint (`resolve_data_config` of its
  pretrained_cfg: crop_pct, interpolation, crop_mode, timm's defaults for those it leaves out),
  as `vit.data.transforms.EvalView` fields; None for a plain resize or without a pretrained_cfg.
  A view that EvalView cannot compute (crop_mode 'border', an unknown filter) is a one-line
  warning naming it, and a plain resize. UserError naming config.json and the key for an
  interpolation or crop_mode that is not a string."""
  pre = cfg.get('pretrained_cfg')
  if not isinstance(pre, dict) or size is None:
    return None
  view = {k: pre.get(k) or default for k, default in _VIEW_DEFAULTS.items()}
  for key in ('interpolation', 'crop_mode'):  # A list is no filter name (nor hashable).
    if not isinstance(view[key], str):
      raise UserError(f'timm:{directory}/config.json: pretrained_cfg.{key}='
                      f'{_shown(view[key])}: must be a string, as timm.models.save_for_hf '
                      'writes it')
  stated = dict(view)  # As the file spells them, for the warning ('x', not the -1.0 below).
  try:
    view['crop_pct'] = float(view['crop_pct'])
  except (TypeError, ValueError):
    view['crop_pct'] = -1.0
  unsupported = [f'{k}={stated[k]!r}' for k, ok in (
      ('crop_pct', 0 < view['crop_pct']), ('interpolation', view['interpolation'] in
                                           transforms.PIL_FILTERS),
      ('crop_mode', view['crop_mode'] in transforms.CROP_MODES)) if not ok]
  if unsupported:
    logger.warning(f'timm:{directory}/config.json: pretrained_cfg {", ".join(unsupported)} is '
                   f'not applied; this repository resizes straight to {size}x{size} bilinearly, '
                   f'so its logits differ from timm\'s evaluation')
    return None
  if math.floor(size / view['crop_pct']) == size and view['interpolation'] == 'bilinear' and (
      view['crop_mode'] == 'squash'):
    return None
  return view


# timm's IMAGENET_DEFAULT_MEAN and _STD (timm/data/constants.py): what timm normalises with
# where a pretrained_cfg states no mean or std (resolve_data_config, and PretrainedCfg's defaults
# for a folder `timm.create_model('local-dir:DIR')` reads), not the official 0.5.
_TIMM_MEAN, _TIMM_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _input(directory: str, cfg: dict, channels: int) -> tuple[Optional[dict], Optional[int]]:
  """(pixels, image size) of timm's eval transform: ToTensor (x / 255), Normalize(mean, std),
  with timm's defaults where the pretrained_cfg (or config.json) states no mean or std. Those
  defaults have 3 values: for another channel count the unstated ones are the official 0.5,
  with a warning. UserError naming config.json for a mean or std that fits no channel count, a
  std of 0, or an input_size that is not a square [C, S, S] list."""
  pre = cfg.get('pretrained_cfg', {})
  where = (f'{directory}/config.json' if os.path.isfile(os.path.join(directory, 'config.json'))
           else f'{directory} (no config.json)')
  unstated = [k for k in ('mean', 'std') if not pre.get(k)]
  # timm has no default for a greyscale model (its 3 values cannot feed it): such a folder was
  # read with the official 0.5/0.5 before timm's default was followed, and still is.
  fits = channels == len(_TIMM_MEAN)
  defaults = dict(mean=_TIMM_MEAN, std=_TIMM_STD) if fits else dict(mean=(0.5,), std=(0.5,))
  if unstated and not fits:
    logger.warning(f'timm:{where}: timm states no default {"/".join(unstated)} for '
                   f'{channels}-channel images, so {"/".join(["0.5"] * len(unstated))} (the '
                   'official ViT pixels) is used; state mean/std in config.json to choose')
  mean, std = (pre.get(k) or defaults[k] for k in ('mean', 'std'))
  try:
    stated = pixels(OFFICIAL_PIXELS.rescale, mean, std, channels)
  except (ValueError, TypeError) as e:
    label = "timm's ImageNet default" if fits else 'the official 0.5'
    default = f' ({"/".join(unstated)} unstated: {label})' if unstated else ''
    raise UserError(f'timm:{where}: pretrained_cfg mean/std{default}: {e}') from None
  size = pre.get('input_size')
  if size is not None:
    if not isinstance(size, (list, tuple)) or len(size) != 3 or size[1] != size[2]:
      raise UserError(f'timm:{directory}/config.json: pretrained_cfg.input_size={size}; only '
                      f'square inputs [C, S, S] are supported')
    size = int(size[1])
  return stated, size


def load(path: str) -> Read:
  """The official parameter tree of the timm ViT directory `path` (`ROWS`), and what timm's
  config states.

  Raises UserError naming the directory and the unsupported weights or settings.
  """
  if os.path.isdir(path):
    cfg = _config(path)
    if 'model_type' in cfg or 'architectures' in cfg:  # timm's own config has `architecture`.
      raise UserError(f'timm:{path}: a Hugging Face transformers folder (config.json has '
                      f'model_type={cfg.get("model_type")!r}); load it with hf:{path}')
  w, cfg = _weights(path), _config(path)
  _check_supported(path, w, cfg)
  act = cfg.get('model_args', {}).get('act_layer', 'gelu')
  if not isinstance(act, str) or act not in _ACT:  # A list is no name (nor hashable).
    raise UserError(f'timm:{path}/config.json: act_layer={act!r}; supported: '
                    f'{", ".join(_ACT)}')
  width = w['cls_token'].shape[-1]
  blocks = _blocks(w)
  if not blocks:
    raise UserError(f'timm:{path}: {WEIGHTS} holds no blocks.* weights')
  _check_model_args(path, cfg, width, len(blocks))
  dims = Dims(width, _num_heads(path, cfg, width))
  if 'pos_embed' in w and not (square_grid(w['pos_embed'].shape[1]) or
                               square_grid(w['pos_embed'].shape[1] - 1)):
    raise UserError(f'timm:{path}: pos_embed has {w["pos_embed"].shape[1]} entries, not a '
                    f'square grid of patches (non-square position grids are not supported)')
  params = table.read(ROWS, w, blocks, dims,
                      missing=lambda name: f'timm:{path}: {WEIGHTS} lacks "{name}"')
  stated = dict(gelu_approximate=_ACT[act], layer_norm_epsilon=1e-6)
  kernel = params['embedding']['kernel']
  stated['pixels'], size = _input(path, cfg, kernel.shape[2])
  names = cfg.get('pretrained_cfg', {}).get('label_names')
  names = list(names) if names and 'head' in params and len(names) == params['head'][
      'kernel'].shape[1] else None
  pe = params['Transformer']['posembed_input']['pos_embedding']
  side = square_grid(pe.shape[1] - 1) * int(kernel.shape[0])
  view = read_view(path, cfg, size or side)  # timm's eval size: input_size, else the grid's.
  return Read(params, stated, names, size, view)


def check_expressible(params: Params, model: Optional[ModelSpec]) -> None:
  """UserError naming what timm's VisionTransformer could not compute the same way. `model`:
  the resolved model (None: official defaults). Which other formats hold it is
  `vit.formats.registry.check_expressible`'s to say."""
  lost = []
  if model and model.resnet:
    lost.append('ResNet stem (hybrid R+ViT)')
  if 'cls' not in params:
    lost.append('global average pooling (timm pools avg without the final norm)')
  if 'pre_logits' in params:
    lost.append('a representation layer (pre_logits)')
  if model and model.layer_norm_epsilon != 1e-6:
    lost.append(f'LayerNorm epsilon {model.layer_norm_epsilon:g} (timm: 1e-6)')
  kind, attention = posemb(params, model), model.attention if model else 'global'
  if kind not in TABLE_POSEMBS or attention != 'global':  # The others: `as_learned_1d`.
    lost.append(f'posemb {kind} / {attention} attention')
  if lost:
    raise UserError('--format timm: timm\'s VisionTransformer has no ' + ', '.join(lost))
  px = input_pixels(model)
  if abs(px.rescale - OFFICIAL_PIXELS.rescale) > 1e-12:
    raise UserError(f'--format timm: timm scales pixels by 1/255, this model by '
                    f'{px.rescale:g}')


def save(params: Params, out: str, model: Optional[ModelSpec] = None, *,
         class_names: Optional[Sequence[str]] = None, image_size: Optional[int] = None,
         view: Optional[dict] = None) -> None:
  """Writes model.safetensors + config.json in the directory `out` that
  `timm.create_model(architecture, **model_args)` loads (`load_state_dict`) and runs with the
  same logits. The pretrained_cfg states the evaluation view this repository uses (`view`,
  else a plain bilinear resize: crop_pct 1.0, crop_mode 'squash'), so that timm's pipeline
  feeds the model what ours does. `model`: the resolved model (None: official defaults);
  models `check_expressible` refuses are refused. timm centres a crop at rounded offsets; a
  view read from transformers' processor (`crop_offsets` 'floor') that crops is named in a
  one-line warning, as its input can then be one pixel off. learned_2d, sincos_2d and none
  position embeddings are written as timm's `pos_embed` at the model's grid (`image_size`'s
  for the last two), with a one-line warning of what a reader then does differently
  (`as_learned_1d`)."""
  check_expressible(params, model)
  params = as_learned_1d(params, model, image_size, '--format timm')
  grid = square_grid(params['Transformer']['posembed_input']['pos_embedding'].shape[1] - 1)
  size = int(image_size or grid * params['embedding']['kernel'].shape[0])
  if view and view.get('crop_offsets') == 'floor' and transforms.offsets_differ(view, size):
    logger.warning(f'--format timm: timm centres its crop at rounded offsets, this '
                   f'checkpoint\'s view (from transformers\' processor: crop_pct '
                   f'{view["crop_pct"]:g}, crop_mode {view["crop_mode"]}) at offsets rounded '
                   f'down: {transforms.offsets_note(view, size)}')
  tensors = table.write(ROWS, params, range(table.block_count(params)), Dims.of(params))
  safetensors_dir.write(out, tensors, {
      'config.json': _config_json(params, model, class_names, size, view)})


def _config_json(params: Params, model: Optional[ModelSpec], class_names: Optional[Sequence[str]],
                 size: int, view: Optional[dict]) -> dict:
  """timm's config.json (as `timm.models.save_for_hf` writes it) for `save`; `size`: the
  input size its pretrained_cfg states."""
  t, (width, heads) = params['Transformer'], Dims.of(params)
  p, _, channels, _ = params['embedding']['kernel'].shape
  grid = square_grid(t['posembed_input']['pos_embedding'].shape[1] - 1)
  num_classes = int(params['head']['kernel'].shape[1]) if 'head' in params else 0
  mlp = t['encoderblock_0']['MlpBlock_3']['Dense_0']['kernel'].shape[1]
  px = input_pixels(model)
  model_args = dict(img_size=[int(grid * p)] * 2, patch_size=int(p), embed_dim=width,
                    depth=table.block_count(params), num_heads=heads,
                    mlp_ratio=float(mlp) / width, num_classes=num_classes,
                    in_chans=int(channels), global_pool='token',
                    act_layer='gelu_tanh' if not model or model.gelu_approximate else 'gelu')
  pretrained_cfg = dict(input_size=[int(channels), size, size],
                        mean=safetensors_dir.per_channel(px.mean, channels),
                        std=safetensors_dir.per_channel(px.std, channels),
                        num_classes=num_classes, first_conv='patch_embed.proj',
                        classifier='head', **{k: v for k, v in (view or PLAIN_VIEW).items()
                                              if k in PLAIN_VIEW})
  if class_names and len(class_names) == num_classes:
    pretrained_cfg['label_names'] = list(class_names)
  return dict(architecture='vit_base_patch16_224', num_classes=num_classes,
              num_features=width, global_pool='token', model_args=model_args,
              pretrained_cfg=pretrained_cfg)
