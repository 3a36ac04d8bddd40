"""A Hugging Face transformers ViT directory, both directions.

`config.json` + `model.safetensors` (or the shards `model-0000k-of-0000n.safetensors` that
`model.safetensors.index.json` lists) in the layout `save_pretrained` writes
(`vit.encoder.layer.{i}.attention.attention.query.weight`; transformers >= 5's in-memory names
`vit.layers.{i}.attention.q_proj.weight` are read too), and `preprocessor_config.json`, whose
`ViTImageProcessor` keys (do_rescale/rescale_factor, do_normalize/image_mean/image_std, size)
fix the model's input: they become the model's `pixels` key and the checkpoint's image size.
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Optional, Sequence

import numpy as np

from vit.errors import UserError
from vit.formats.tree import (OFFICIAL_PIXELS, Params, Read, check_finite, model_pixels,
                              pixels, read_json_object)

logger = logging.getLogger(__name__)

# Exact GELU is HF's 'gelu'; the tanh approximation of the official checkpoints is
# 'gelu_pytorch_tanh' (or the older, numerically identical 'gelu_new').
_GELU = {'gelu': False, 'gelu_pytorch_tanh': True, 'gelu_new': True}
WEIGHTS, INDEX, PROCESSOR = 'model.safetensors', 'model.safetensors.index.json', \
    'preprocessor_config.json'

# In-memory names of transformers >= 5 -> the names `save_pretrained` writes (checkpoint names).
_RENAMES = [
    (r'^(vit\.)?layers\.(\d+)\.attention\.([qkv])_proj\.',
     lambda m: f'{m[1] or ""}encoder.layer.{m[2]}.attention.attention.'
               f'{dict(q="query", k="key", v="value")[m[3]]}.'),
    (r'^(vit\.)?layers\.(\d+)\.attention\.o_proj\.',
     lambda m: f'{m[1] or ""}encoder.layer.{m[2]}.attention.output.dense.'),
    (r'^(vit\.)?layers\.(\d+)\.mlp\.fc1\.',
     lambda m: f'{m[1] or ""}encoder.layer.{m[2]}.intermediate.dense.'),
    (r'^(vit\.)?layers\.(\d+)\.mlp\.fc2\.',
     lambda m: f'{m[1] or ""}encoder.layer.{m[2]}.output.dense.'),
    (r'^(vit\.)?layers\.(\d+)\.', lambda m: f'{m[1] or ""}encoder.layer.{m[2]}.'),
]


def _checkpoint_names(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for key, value in weights.items():
    for pattern, repl in _RENAMES:
      new = re.sub(pattern, repl, key)
      if new != key:
        key = new
        break
    out[key[len('vit.'):] if key.startswith('vit.') else key] = value
  return out


def _json(path: str) -> dict:
  return read_json_object(path, 'hf')


def read_config(directory: str) -> dict:
  """config.json of a transformers ViT; UserError naming the file for anything else."""
  path = os.path.join(directory, 'config.json')
  if not os.path.isdir(directory):
    raise UserError(f'hf:{directory}: directory not found')
  if not os.path.isfile(path):
    raise UserError(f'hf:{directory}: no config.json (a Hugging Face model directory holds '
                    f'config.json and model.safetensors)')
  cfg = _json(path)
  if cfg.get('model_type') != 'vit':
    raise UserError(f'hf:{path}: model_type={cfg.get("model_type")!r}, only "vit" is supported')
  act = cfg.get('hidden_act', 'gelu')
  if act not in _GELU:
    raise UserError(f'hf:{path}: hidden_act={act!r}; supported: {", ".join(_GELU)}')
  return cfg


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError
  from safetensors.numpy import load_file
  try:
    weights = load_file(path)
  except (SafetensorError, OSError, ValueError) as e:
    raise UserError(f'hf:{path}: not a readable safetensors file ({e})') from None
  check_finite(weights, f'hf:{path}')
  return weights


def read_weights(directory: str) -> dict[str, np.ndarray]:
  """Every tensor of `model.safetensors`, or of the shards its index lists."""
  single, index = os.path.join(directory, WEIGHTS), os.path.join(directory, INDEX)
  if os.path.isfile(single):
    return _load_safetensors(single)
  if not os.path.isfile(index):
    found = [f for f in os.listdir(directory) if f.endswith(('.bin', '.pt', '.pth'))]
    hint = f' (found {", ".join(found)}: pickled weights are never loaded)' if found else ''
    raise UserError(f'hf:{directory}: no {WEIGHTS} nor {INDEX}{hint}')
  weight_map = _json(index).get('weight_map')
  if not isinstance(weight_map, dict) or not weight_map:
    raise UserError(f'hf:{index}: no "weight_map" of tensor names to shard files')
  out = {}
  for shard in sorted(set(weight_map.values())):
    path = os.path.join(directory, shard)
    if os.path.basename(shard) != shard or not shard.endswith('.safetensors'):
      raise UserError(f'hf:{index}: shard {shard!r} is not a .safetensors file in {directory}')
    if not os.path.isfile(path):
      raise UserError(f'hf:{index}: lists shard {shard}, which is missing')
    out.update(_load_safetensors(path))
  missing = sorted(set(weight_map) - set(out))
  if missing:
    raise UserError(f'hf:{index}: {len(missing)} listed tensors are in no shard (first: '
                    f'{missing[0]})')
  return out


def _side(path: str, size, key: str) -> int:
  if isinstance(size, int):
    return size
  if isinstance(size, dict) and 'height' in size and 'width' in size:
    if size['height'] != size['width']:
      raise UserError(f'hf:{path}: {key} is {size["height"]}x{size["width"]}; only square '
                      f'inputs are supported')
    return int(size['height'])
  raise UserError(f'hf:{path}: {key}={size!r}; supported: an int or {{"height", "width"}}')


def read_processor(directory: str, channels: int) -> tuple[Optional[dict], Optional[int]]:
  """(pixels model key, image size) from preprocessor_config.json; (None, None) without one
  (transformers' ViTImageProcessor defaults are the official x / 127.5 - 1).

  A centre crop (`do_center_crop`, `crop_size`) sets the size the model sees.
  """
  path = os.path.join(directory, PROCESSOR)
  if not os.path.isfile(path):
    return None, None
  p = _json(path)
  rescale = float(p.get('rescale_factor', OFFICIAL_PIXELS['rescale'])) if p.get(
      'do_rescale', True) else 1.0
  if p.get('do_normalize', True):
    mean, std = p.get('image_mean', [0.5] * 3), p.get('image_std', [0.5] * 3)
  else:
    mean, std = 0.0, 1.0
  try:
    stated = pixels(rescale, mean, std, channels)
  except (ValueError, TypeError) as e:
    raise UserError(f'hf:{path}: image_mean/image_std: {e}') from None
  size = None
  if p.get('do_center_crop') and p.get('crop_size') is not None:
    size = _side(path, p['crop_size'], 'crop_size')
  elif p.get('do_resize', True) and p.get('size') is not None:
    size = _side(path, p['size'], 'size')
  differs = _view_differences(path, p, size)
  if differs:
    logger.warning(f'hf:{path}: {" and ".join(differs)}; this repository resizes straight to '
                   f'{size}x{size} bilinearly, so its logits differ slightly from '
                   f'transformers\' pipeline')
  return stated, size


# PIL's resampling filter numbers, which the processors' `resample` key holds.
_RESAMPLE = {0: 'nearest', 1: 'lanczos', 2: 'bilinear', 3: 'bicubic', 4: 'box', 5: 'hamming'}


def _view_differences(path: str, p: dict, size: Optional[int]) -> list[str]:
  """What the processor does beyond our bilinear resize to `size` (e.g. DeiTImageProcessor's
  bicubic resize to 256 then centre crop to 224)."""
  if not p.get('do_resize', True) or size is None:
    return []
  out = []
  if p.get('do_center_crop') and p.get('size') is not None:
    resized = p['size']
    if isinstance(resized, dict) and 'shortest_edge' in resized:
      out.append(f'the processor resizes the shortest edge to {resized["shortest_edge"]} '
                 f'then centre-crops {size}x{size}')
    elif _side(path, resized, 'size') != size:
      out.append(f'the processor resizes to {_side(path, resized, "size")} then centre-crops '
                 f'{size}x{size}')
  resample = p.get('resample', 2)
  if resample != 2:
    out.append(f'it resamples with resample={resample} '
               f'({_RESAMPLE.get(resample, "unknown filter")})')
  return out


def _pair(value) -> tuple[int, int]:
  return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def load(directory: str) -> Read:
  """The official parameter tree of a transformers ViT directory, and what its files state.

  Layouts: torch Linear weights are [out, in] (transposed here); q/k/v/out are reshaped to the
  DenseGeneral layouts [D, heads, head_dim] and [heads, head_dim, D]; the patch conv goes from
  OIHW to HWIO. A ViTModel pooler (dense + tanh) is the official `pre_logits` layer.
  """
  cfg = read_config(directory)
  w = _checkpoint_names(read_weights(directory))
  heads, width = cfg['num_attention_heads'], cfg['hidden_size']
  head_dim = width // heads

  def get(name):
    if name not in w:
      raise UserError(f'hf:{directory}: the weights lack "{name}" '
                      f'(has {len(w)} tensors; is this a ViT checkpoint?)')
    return np.asarray(w[name], np.float32)

  def dense(name):
    return {'kernel': get(f'{name}.weight').T, 'bias': get(f'{name}.bias')}

  def norm(name):
    return {'scale': get(f'{name}.weight'), 'bias': get(f'{name}.bias')}

  def qkv(name):
    kernel = get(f'{name}.weight').T.reshape(width, heads, head_dim)
    bias_name = f'{name}.bias'
    bias = get(bias_name) if bias_name in w else np.zeros(width, np.float32)  # qkv_bias=False.
    return {'kernel': kernel, 'bias': bias.reshape(heads, head_dim)}

  layers = sorted({int(m[1]) for k in w for m in [re.match(r'encoder\.layer\.(\d+)\.', k)] if m})
  if not layers:
    raise UserError(f'hf:{directory}: the weights hold no encoder layers')
  transformer = {'posembed_input': {'pos_embedding': get('embeddings.position_embeddings')},
                 'encoder_norm': norm('layernorm')}
  for i in layers:
    p = f'encoder.layer.{i}.'
    attn = {n: qkv(f'{p}attention.attention.{n}') for n in ('query', 'key', 'value')}
    out = dense(f'{p}attention.output.dense')
    attn['out'] = {'kernel': out['kernel'].reshape(heads, head_dim, width), 'bias': out['bias']}
    transformer[f'encoderblock_{i}'] = {
        'LayerNorm_0': norm(f'{p}layernorm_before'),
        'MultiHeadDotProductAttention_1': attn,
        'LayerNorm_2': norm(f'{p}layernorm_after'),
        'MlpBlock_3': {'Dense_0': dense(f'{p}intermediate.dense'),
                       'Dense_1': dense(f'{p}output.dense')}}
  params = {'embedding': {'kernel': get('embeddings.patch_embeddings.projection.weight'
                                        ).transpose(2, 3, 1, 0),
                          'bias': get('embeddings.patch_embeddings.projection.bias')},
            'cls': get('embeddings.cls_token'),
            'Transformer': transformer}
  if 'pooler.dense.weight' in w and cfg.get('pooler_act', 'tanh') == 'tanh':
    params['pre_logits'] = dense('pooler.dense')
  if 'classifier.weight' in w:
    params['head'] = dense('classifier')
  stated = model_keys(cfg)
  stated['pixels'], size = read_processor(directory, params['embedding']['kernel'].shape[2])
  names = class_names(cfg) if 'head' in params else None
  return Read(params, stated, names, size)


def model_keys(cfg: dict) -> dict:
  """The architecture keys (vit.config's model layout) a transformers ViT config states."""
  return dict(patches=dict(size=_pair(cfg.get('patch_size', 16))),
              hidden_size=cfg['hidden_size'],
              transformer=dict(mlp_dim=cfg['intermediate_size'],
                               num_heads=cfg['num_attention_heads'],
                               num_layers=cfg['num_hidden_layers']),
              gelu_approximate=_GELU[cfg.get('hidden_act', 'gelu')],
              layer_norm_epsilon=float(cfg.get('layer_norm_eps', 1e-12)))


def class_names(cfg: dict) -> Optional[list[str]]:
  id2label = cfg.get('id2label')
  if not id2label:
    return None
  names = [id2label.get(str(i), id2label.get(i)) for i in range(len(id2label))]
  return None if any(n is None for n in names) else names


def processor_config(model: dict, image_size: int, channels: int) -> dict:
  """The ViTImageProcessor settings that reproduce the model's input (`pixels`) at its size."""
  px = model_pixels(model) or OFFICIAL_PIXELS
  per_channel = lambda v: [float(x) for x in np.broadcast_to(np.asarray(v, float), (channels,))]
  return dict(image_processor_type='ViTImageProcessor', do_resize=True,
              size=dict(height=int(image_size), width=int(image_size)), resample=2,
              do_rescale=True, rescale_factor=float(px['rescale']), do_normalize=True,
              image_mean=per_channel(px['mean']), image_std=per_channel(px['std']))


def save(params: Params, model: dict, directory: str, *,
         class_names: Optional[Sequence[str]] = None, image_size: Optional[int] = None,
         view: Optional[dict] = None) -> None:
  """Writes config.json + model.safetensors + preprocessor_config.json that
  `ViTForImageClassification.from_pretrained` (or `ViTModel`, for a headless backbone) and
  `ViTImageProcessor.from_pretrained` load and run with the same logits.

  `model` is a resolved model dict (vit.config); `image_size` the processor's input size
  (default: the position embeddings' grid). The processor states this repository's view: a
  plain bilinear resize to that size; a checkpoint's own crop view (`view`, e.g. timm's
  crop_pct) has no ViTImageProcessor key and is named in a one-line warning. HF ViT has no GAP
  classifier, no ResNet stem and no representation layer before its classifier; such models
  are refused.
  """
  from safetensors.numpy import save_file
  if view:
    logger.warning(f'--format hf: ViTImageProcessor resizes straight to the input size; the '
                   f'checkpoint\'s evaluation view (crop_pct {view["crop_pct"]:g}, '
                   f'{view["interpolation"]}, crop_mode {view["crop_mode"]}) cannot be stated '
                   f'in {PROCESSOR}')
  if model.get('resnet') and model['resnet'].get('num_layers'):
    raise UserError('--format hf: hybrid R+ViT models have no transformers ViT equivalent; '
                    'use --format vit_jax')
  if 'cls' not in params:
    raise UserError('--format hf: transformers ViT classifies from the class token; this '
                    'model uses global average pooling (model.classifier=gap)')
  has_head = 'head' in params
  if has_head and 'pre_logits' in params:
    raise UserError('--format hf: ViTForImageClassification has no representation layer '
                    '(pre_logits); fine-tune without model.representation_size, or export '
                    'with --format vit_jax')
  t = params['Transformer']
  layers = sum(1 for k in t if k.startswith('encoderblock_'))
  width, heads, head_dim = t['encoderblock_0']['MultiHeadDotProductAttention_1']['query'][
      'kernel'].shape
  p, _, channels, _ = params['embedding']['kernel'].shape
  tokens = t['posembed_input']['pos_embedding'].shape[1] - 1
  grid = int(round(np.sqrt(tokens)))
  prefix = 'vit.' if has_head else ''
  w = {}

  def dense(name, d, shape=None):
    kernel = np.asarray(d['kernel'])
    w[f'{name}.weight'] = (kernel.reshape(shape) if shape else kernel).T
    w[f'{name}.bias'] = np.asarray(d['bias']).reshape(-1)

  def norm(name, d):
    w[f'{name}.weight'], w[f'{name}.bias'] = np.asarray(d['scale']), np.asarray(d['bias'])

  w[f'{prefix}embeddings.cls_token'] = np.asarray(params['cls'])
  w[f'{prefix}embeddings.position_embeddings'] = np.asarray(t['posembed_input']['pos_embedding'])
  w[f'{prefix}embeddings.patch_embeddings.projection.weight'] = np.asarray(
      params['embedding']['kernel']).transpose(3, 2, 0, 1)
  w[f'{prefix}embeddings.patch_embeddings.projection.bias'] = np.asarray(
      params['embedding']['bias'])
  for i in range(layers):
    b, q = t[f'encoderblock_{i}'], f'{prefix}encoder.layer.{i}.'
    attn = b['MultiHeadDotProductAttention_1']
    for n in ('query', 'key', 'value'):
      dense(f'{q}attention.attention.{n}', attn[n], (width, heads * head_dim))
    dense(f'{q}attention.output.dense', attn['out'], (heads * head_dim, width))
    norm(f'{q}layernorm_before', b['LayerNorm_0'])
    norm(f'{q}layernorm_after', b['LayerNorm_2'])
    dense(f'{q}intermediate.dense', b['MlpBlock_3']['Dense_0'])
    dense(f'{q}output.dense', b['MlpBlock_3']['Dense_1'])
  norm(f'{prefix}layernorm', t['encoder_norm'])
  if 'pre_logits' in params:
    dense('pooler.dense', params['pre_logits'])
  if has_head:
    dense('classifier', params['head'])

  t_cfg = model['transformer']
  cfg = dict(
      model_type='vit',
      architectures=['ViTForImageClassification' if has_head else 'ViTModel'],
      hidden_size=int(width), num_hidden_layers=int(layers), num_attention_heads=int(heads),
      intermediate_size=int(t['encoderblock_0']['MlpBlock_3']['Dense_0']['kernel'].shape[1]),
      hidden_act='gelu_pytorch_tanh' if model.get('gelu_approximate', True) else 'gelu',
      hidden_dropout_prob=float(t_cfg.get('dropout_rate', 0.0)),
      attention_probs_dropout_prob=float(t_cfg.get('attention_dropout_rate', 0.0)),
      layer_norm_eps=float(model.get('layer_norm_epsilon', 1e-6)),
      image_size=int(grid * p), patch_size=int(p), num_channels=int(channels),
      qkv_bias=True, encoder_stride=int(p), initializer_range=0.02, pooler_act='tanh')
  if 'pre_logits' in params:
    cfg['pooler_output_size'] = int(params['pre_logits']['kernel'].shape[1])
  if has_head:
    num = params['head']['kernel'].shape[1]
    names = list(class_names) if class_names and len(class_names) == num else [
        f'LABEL_{i}' for i in range(num)]
    cfg['id2label'] = {str(i): n for i, n in enumerate(names)}
    cfg['label2id'] = {n: i for i, n in enumerate(names)}
  os.makedirs(directory, exist_ok=True)
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in w.items()},
            os.path.join(directory, WEIGHTS), metadata={'format': 'pt'})
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(cfg, f, indent=2)
  with open(os.path.join(directory, PROCESSOR), 'w') as f:
    json.dump(processor_config(model, image_size or grid * p, channels), f, indent=2)
