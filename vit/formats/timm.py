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

from vit.errors import UserError
from vit.formats.tree import (OFFICIAL_PIXELS, Params, Read, check_finite, class_row_posemb,
                              model_pixels, pixels, read_json_object, square_grid)

logger = logging.getLogger(__name__)

WEIGHTS = 'model.safetensors'
# Heads of timm's named ViT sizes by width (vision_transformer.py's model definitions), for a
# config.json without model_args: tiny, small, medium, base, large, huge.
_HEADS_BY_WIDTH = {192: 3, 384: 6, 512: 8, 768: 12, 1024: 16, 1280: 16}
_ACT = {'gelu': False, 'gelu_tanh': True}
_BLOCK_KEYS = ('norm1.weight', 'norm1.bias', 'attn.qkv.weight', 'attn.qkv.bias',
               'attn.proj.weight', 'attn.proj.bias', 'norm2.weight', 'norm2.bias',
               'mlp.fc1.weight', 'mlp.fc1.bias', 'mlp.fc2.weight', 'mlp.fc2.bias')
_TOP_KEYS = ('cls_token', 'pos_embed', 'patch_embed.proj.weight', 'patch_embed.proj.bias',
             'norm.weight', 'norm.bias', 'head.weight', 'head.bias')


def _config(directory: str) -> dict:
  path = os.path.join(directory, 'config.json')
  if not os.path.isfile(path):
    return {}
  return read_json_object(path, 'timm')


def _weights(directory: str) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError
  from safetensors.numpy import load_file
  if not os.path.isdir(directory):
    raise UserError(f'timm:{directory}: directory not found')
  path = os.path.join(directory, WEIGHTS)
  if not os.path.isfile(path):
    found = [f for f in os.listdir(directory) if f.endswith(('.bin', '.pt', '.pth'))]
    hint = f' (found {", ".join(found)}: pickled weights are never loaded)' if found else ''
    raise UserError(f'timm:{directory}: no {WEIGHTS}{hint}')
  try:
    weights = load_file(path)
  except (SafetensorError, OSError, ValueError) as e:
    raise UserError(f'timm:{path}: not a readable safetensors file ({e})') from None
  check_finite(weights, f'timm:{path}')
  return {k: np.asarray(v, np.float32) for k, v in weights.items()}


def _check_supported(directory: str, w: dict, cfg: dict) -> None:
  unknown = [k for k in w if k not in _TOP_KEYS and not any(
      re.fullmatch(rf'blocks\.\d+\.{re.escape(b)}', k) for b in _BLOCK_KEYS)]
  if unknown:
    raise UserError(f'timm:{directory}: weights a plain ViT does not have (LayerScale, '
                    f'norm_pre, fc_norm, register tokens, ...): {", ".join(sorted(unknown)[:6])}')
  pool = cfg.get('global_pool', cfg.get('model_args', {}).get('global_pool', 'token'))
  if pool != 'token' or 'cls_token' not in w:
    raise UserError(f'timm:{directory}: global_pool={pool!r}'
                    f'{"" if "cls_token" in w else " without a class token"}; only the class '
                    f'token\'s pooling ("token") is supported')


def _num_heads(directory: str, cfg: dict, width: int) -> int:
  heads = cfg.get('model_args', {}).get('num_heads') or _HEADS_BY_WIDTH.get(width)
  if not heads or width % heads:
    raise UserError(f'timm:{directory}: config.json states no model_args.num_heads for width '
                    f'{width} (the fused qkv weight does not show the head count)')
  return int(heads)


# timm's defaults for what a pretrained_cfg leaves out (timm.data.resolve_data_config).
_VIEW_DEFAULTS = dict(crop_pct=0.875, interpolation='bicubic', crop_mode='center')
# The view this repository uses without one (predict's plain resize), as timm states it.
PLAIN_VIEW = dict(crop_pct=1.0, interpolation='bilinear', crop_mode='squash')


def read_view(directory: str, cfg: dict, size: Optional[int]) -> Optional[dict]:
  """The evaluation view timm applies to this checkpoint (`resolve_data_config` of its
  pretrained_cfg: crop_pct, interpolation, crop_mode, timm's defaults for those it leaves out),
  as `vit.data.transforms.EvalView` fields; None for a plain resize or without a pretrained_cfg.
  A view that EvalView cannot compute (crop_mode 'border', an unknown filter) is a one-line
  warning naming it, and a plain resize."""
  from vit.data import transforms
  pre = cfg.get('pretrained_cfg')
  if not isinstance(pre, dict) or size is None:
    return None
  view = {k: pre.get(k) or default for k, default in _VIEW_DEFAULTS.items()}
  try:
    view['crop_pct'] = float(view['crop_pct'])
  except (TypeError, ValueError):
    view['crop_pct'] = -1.0
  unsupported = [f'{k}={view[k]!r}' for k, ok in (
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


def _input(directory: str, cfg: dict, channels: int) -> tuple[Optional[dict], Optional[int]]:
  """(pixels, image size) of timm's eval transform: ToTensor (x / 255), Normalize(mean, std)."""
  pre = cfg.get('pretrained_cfg', {})
  try:
    stated = pixels(OFFICIAL_PIXELS['rescale'], pre.get('mean', 0.5), pre.get('std', 0.5),
                    channels)
  except (ValueError, TypeError) as e:
    raise UserError(f'timm:{directory}/config.json: pretrained_cfg mean/std: {e}') from None
  size = pre.get('input_size')
  if size is not None:
    if len(size) != 3 or size[1] != size[2]:
      raise UserError(f'timm:{directory}/config.json: pretrained_cfg.input_size={size}; only '
                      f'square inputs [C, S, S] are supported')
    size = int(size[1])
  return stated, size


def load(directory: str) -> Read:
  """The official parameter tree of a timm ViT directory, and what timm's config states.

  Raises UserError naming the directory and the unsupported weights or settings.
  """
  if os.path.isdir(directory):
    cfg = _config(directory)
    if 'model_type' in cfg or 'architectures' in cfg:  # timm's own config has `architecture`.
      raise UserError(f'timm:{directory}: a Hugging Face transformers folder (config.json has '
                      f'model_type={cfg.get("model_type")!r}); load it with hf:{directory}')
  w, cfg = _weights(directory), _config(directory)
  _check_supported(directory, w, cfg)
  act = cfg.get('model_args', {}).get('act_layer', 'gelu')
  if act not in _ACT:
    raise UserError(f'timm:{directory}/config.json: act_layer={act!r}; supported: '
                    f'{", ".join(_ACT)}')
  width = w['cls_token'].shape[-1]
  heads = _num_heads(directory, cfg, width)
  head_dim = width // heads

  def get(name):
    if name not in w:
      raise UserError(f'timm:{directory}: {WEIGHTS} lacks "{name}"')
    return w[name]

  def dense(name):
    return {'kernel': get(f'{name}.weight').T, 'bias': get(f'{name}.bias')}

  def norm(name):
    return {'scale': get(f'{name}.weight'), 'bias': get(f'{name}.bias')}

  depth = 1 + max((int(k.split('.')[1]) for k in w if k.startswith('blocks.')), default=-1)
  if not depth:
    raise UserError(f'timm:{directory}: {WEIGHTS} holds no blocks.* weights')
  pe = get('pos_embed')
  if not (square_grid(pe.shape[1]) or square_grid(pe.shape[1] - 1)):
    raise UserError(f'timm:{directory}: pos_embed has {pe.shape[1]} entries, not a square grid '
                    f'of patches (non-square position grids are not supported)')
  if square_grid(pe.shape[1]) and not square_grid(pe.shape[1] - 1):
    pe = class_row_posemb(pe, True)  # no_embed_class: the class token has no position.
  transformer = {'posembed_input': {'pos_embedding': pe}, 'encoder_norm': norm('norm')}
  for i in range(depth):
    b = f'blocks.{i}.'
    qkv = get(f'{b}attn.qkv.weight').reshape(3, width, width)  # [q|k|v, out, in]
    bias = w.get(f'{b}attn.qkv.bias', np.zeros(3 * width, np.float32)).reshape(3, heads, head_dim)
    attn = {n: {'kernel': qkv[j].T.reshape(width, heads, head_dim), 'bias': bias[j]}
            for j, n in enumerate(('query', 'key', 'value'))}
    proj = dense(f'{b}attn.proj')
    attn['out'] = {'kernel': proj['kernel'].reshape(heads, head_dim, width), 'bias': proj['bias']}
    transformer[f'encoderblock_{i}'] = {
        'LayerNorm_0': norm(f'{b}norm1'), 'MultiHeadDotProductAttention_1': attn,
        'LayerNorm_2': norm(f'{b}norm2'),
        'MlpBlock_3': {'Dense_0': dense(f'{b}mlp.fc1'), 'Dense_1': dense(f'{b}mlp.fc2')}}
  params = {'embedding': {'kernel': get('patch_embed.proj.weight').transpose(2, 3, 1, 0),
                          'bias': get('patch_embed.proj.bias')},
            'cls': get('cls_token'), 'Transformer': transformer}
  if 'head.weight' in w:
    params['head'] = dense('head')
  channels = params['embedding']['kernel'].shape[2]
  stated = dict(gelu_approximate=_ACT[act], layer_norm_epsilon=1e-6)
  stated['pixels'], size = _input(directory, cfg, channels)
  names = cfg.get('pretrained_cfg', {}).get('label_names')
  names = list(names) if names and 'head' in params and len(names) == params['head'][
      'kernel'].shape[1] else None
  side = square_grid(pe.shape[1] - 1) * int(params['embedding']['kernel'].shape[0])
  view = read_view(directory, cfg, size or side)  # timm's eval size: input_size, else the grid's.
  return Read(params, stated, names, size, view)


def check_expressible(params: Params, model: dict) -> None:
  """UserError naming what timm's VisionTransformer could not compute the same way."""
  lost = []
  if model.get('resnet') and model['resnet'].get('num_layers'):
    lost.append('a ResNet stem (hybrid R+ViT)')
  if 'cls' not in params:
    lost.append('global average pooling (timm pools avg without the final norm)')
  if 'pre_logits' in params:
    lost.append('a representation layer (pre_logits)')
  if model.get('layer_norm_epsilon', 1e-6) != 1e-6:
    lost.append(f'LayerNorm epsilon {model["layer_norm_epsilon"]:g} (timm: 1e-6)')
  if model.get('posemb', 'learned_1d') != 'learned_1d' or model.get(
      'attention', 'global') != 'global':
    lost.append(f'posemb {model.get("posemb")} / {model.get("attention")} attention')
  if lost:
    raise UserError('--format timm: timm\'s VisionTransformer has no ' + ', '.join(lost) +
                    _formats_that_hold(params, model))


def _formats_that_hold(params: Params, model: dict) -> str:
  """'; export with --format ...' naming only the formats whose writers accept the model."""
  from vit.formats import vit_jax
  accept = []
  # transformers' ViT: class token, no ResNet stem, no pre_logits before a head, learned 1D
  # position embeddings and global attention (the refusals of hf.save).
  if not (model.get('resnet') and model['resnet'].get('num_layers')) and 'cls' in params and (
      'head' not in params or 'pre_logits' not in params) and model.get(
          'posemb', 'learned_1d') == 'learned_1d' and model.get('attention', 'global') == 'global':
    accept.append('hf')
  try:
    vit_jax.check_expressible(model)
    accept.append('vit_jax')
  except UserError:
    pass
  return (f'; export with --format {" or ".join(accept)}' if accept else
          '; neither --format hf nor vit_jax holds it either: keep the workdir')


def save(params: Params, model: dict, directory: str, *,
         class_names: Optional[Sequence[str]] = None, image_size: Optional[int] = None,
         view: Optional[dict] = None) -> None:
  """Writes model.safetensors + config.json that `timm.create_model(architecture,
  **model_args)` loads (`load_state_dict`) and runs with the same logits. The pretrained_cfg
  states the evaluation view this repository uses (`view`, else a plain bilinear resize:
  crop_pct 1.0, crop_mode 'squash'), so that timm's pipeline feeds the model what ours does."""
  from safetensors.numpy import save_file
  check_expressible(params, model)
  t = params['Transformer']
  depth = sum(1 for k in t if re.fullmatch(r'encoderblock_\d+', k))
  width, heads, _ = t['encoderblock_0']['MultiHeadDotProductAttention_1']['query']['kernel'].shape
  p, _, channels, _ = params['embedding']['kernel'].shape
  pe = np.asarray(t['posembed_input']['pos_embedding'])
  grid = square_grid(pe.shape[1] - 1)
  w = {'cls_token': params['cls'], 'pos_embed': pe,
       'patch_embed.proj.weight': np.asarray(params['embedding']['kernel']).transpose(3, 2, 0, 1),
       'patch_embed.proj.bias': params['embedding']['bias'],
       'norm.weight': t['encoder_norm']['scale'], 'norm.bias': t['encoder_norm']['bias']}
  for i in range(depth):
    blk, b = t[f'encoderblock_{i}'], f'blocks.{i}.'
    attn = blk['MultiHeadDotProductAttention_1']
    w[f'{b}attn.qkv.weight'] = np.concatenate(
        [np.asarray(attn[n]['kernel']).reshape(width, width).T for n in ('query', 'key', 'value')])
    w[f'{b}attn.qkv.bias'] = np.concatenate(
        [np.asarray(attn[n]['bias']).reshape(-1) for n in ('query', 'key', 'value')])
    w[f'{b}attn.proj.weight'] = np.asarray(attn['out']['kernel']).reshape(width, width).T
    w[f'{b}attn.proj.bias'] = attn['out']['bias']
    for ours, theirs in (('LayerNorm_0', 'norm1'), ('LayerNorm_2', 'norm2')):
      w[f'{b}{theirs}.weight'], w[f'{b}{theirs}.bias'] = blk[ours]['scale'], blk[ours]['bias']
    for ours, theirs in (('Dense_0', 'fc1'), ('Dense_1', 'fc2')):
      w[f'{b}mlp.{theirs}.weight'] = np.asarray(blk['MlpBlock_3'][ours]['kernel']).T
      w[f'{b}mlp.{theirs}.bias'] = blk['MlpBlock_3'][ours]['bias']
  num_classes = 0
  if 'head' in params:
    w['head.weight'] = np.asarray(params['head']['kernel']).T
    w['head.bias'] = params['head']['bias']
    num_classes = int(params['head']['kernel'].shape[1])
  mlp = t['encoderblock_0']['MlpBlock_3']['Dense_0']['kernel'].shape[1]
  size = int(image_size or grid * p)
  px = model_pixels(model) or OFFICIAL_PIXELS
  if abs(px['rescale'] - OFFICIAL_PIXELS['rescale']) > 1e-12:
    raise UserError(f'--format timm: timm scales pixels by 1/255, this model by '
                    f'{px["rescale"]:g}; export with --format hf')
  per_channel = lambda v: [float(x) for x in np.broadcast_to(np.asarray(v, float), (channels,))]
  model_args = dict(img_size=[int(grid * p)] * 2, patch_size=int(p), embed_dim=int(width),
                    depth=int(depth), num_heads=int(heads), mlp_ratio=float(mlp) / width,
                    num_classes=num_classes, in_chans=int(channels), global_pool='token',
                    act_layer='gelu_tanh' if model.get('gelu_approximate', True) else 'gelu')
  pretrained_cfg = dict(input_size=[int(channels), size, size], mean=per_channel(px['mean']),
                        std=per_channel(px['std']), num_classes=num_classes,
                        first_conv='patch_embed.proj', classifier='head', **(view or PLAIN_VIEW))
  if class_names and len(class_names) == num_classes:
    pretrained_cfg['label_names'] = list(class_names)
  cfg = dict(architecture='vit_base_patch16_224', num_classes=num_classes,
             num_features=int(width), global_pool='token', model_args=model_args,
             pretrained_cfg=pretrained_cfg)
  os.makedirs(directory, exist_ok=True)
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in w.items()},
            os.path.join(directory, WEIGHTS), metadata={'format': 'pt'})
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(cfg, f, indent=2)
