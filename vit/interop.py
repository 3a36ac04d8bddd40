"""Published ViT checkpoint formats, both directions; one function per format and direction.

Every function here speaks the official ViT parameter tree (nested dicts named as in
`vit/models/vit.py`, numpy arrays). Two external formats:

* `vit_jax`: the official `.npz` of google-research/vision_transformer, one array per
  parameter under its '/'-joined path (`Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel`).
* `hf`: a Hugging Face transformers ViT directory, `config.json` + `model.safetensors`, in the
  layout `save_pretrained` writes (`vit.encoder.layer.{i}.attention.attention.query.weight`;
  the renamed in-memory layout `vit.layers.{i}.attention.q_proj.weight` is read too).

Nothing here unpickles: `.npz` files are read with `allow_pickle=False` and HF weights only
from safetensors.
"""
from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Mapping
from typing import Any, Optional, Sequence

import numpy as np

from vit.errors import UserError

Params = dict[str, Any]

# --------------------------------------------------------------------------------------------
# Official vit_jax .npz


def flatten(params: Params, prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x}, the key layout of the official .npz files."""
  out = {}
  for key, value in params.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, f'{prefix}{key}/'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def unflatten(flat: dict[str, np.ndarray]) -> Params:
  tree: Params = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split('/')
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def load_vit_jax(path: str) -> Params:
  """The parameter tree of an official-layout .npz (never unpickles)."""
  if not os.path.isfile(path):
    raise UserError(f'vit_jax:{path}: file not found')
  with open(path, 'rb') as f:
    magic = f.read(6)
  if magic == b'\x93NUMPY':
    raise UserError(f'vit_jax:{path}: a single .npy array, not an .npz of named parameters')
  if not magic.startswith(b'PK'):
    raise UserError(f'vit_jax:{path}: not a readable .npz file (no zip header)')
  try:
    with np.load(path, allow_pickle=False) as data:
      flat = {k: data[k] for k in data.files}
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise UserError(f'vit_jax:{path}: not a readable .npz file ({e})') from None
  except ValueError as e:  # Object arrays need pickle: refused.
    raise UserError(f'vit_jax:{path}: holds pickled objects, which are never loaded ({e})'
                    ) from None
  if 'embedding/kernel' not in flat:
    raise UserError(f'vit_jax:{path}: no "embedding/kernel" array; not an official ViT '
                    f'checkpoint (first keys: {", ".join(sorted(flat)[:5])})')
  return unflatten(flat)


def save_vit_jax(params: Params, path: str) -> None:
  """Writes the official .npz layout (the inverse of `load_vit_jax`)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'wb') as f:  # A file object keeps numpy from appending '.npz' to the name.
    np.savez(f, **{k: np.asarray(v) for k, v in flatten(params).items()})


# --------------------------------------------------------------------------------------------
# Hugging Face transformers ViT

# Exact GELU is HF's 'gelu'; the tanh approximation of the official checkpoints is
# 'gelu_pytorch_tanh' (or the older, numerically identical 'gelu_new').
_HF_GELU = {'gelu': False, 'gelu_pytorch_tanh': True, 'gelu_new': True}

# In-memory names of transformers >= 5 -> the names `save_pretrained` writes (checkpoint names).
_HF_RENAMES = [
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


def _hf_checkpoint_names(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for key, value in weights.items():
    for pattern, repl in _HF_RENAMES:
      new = re.sub(pattern, repl, key)
      if new != key:
        key = new
        break
    out[key[len('vit.'):] if key.startswith('vit.') else key] = value
  return out


def read_hf_config(directory: str) -> dict:
  path = os.path.join(directory, 'config.json')
  if not os.path.isdir(directory):
    raise UserError(f'hf:{directory}: directory not found')
  if not os.path.isfile(path):
    raise UserError(f'hf:{directory}: no config.json (a Hugging Face model directory holds '
                    f'config.json and model.safetensors)')
  try:
    with open(path) as f:
      cfg = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f'hf:{path}: not valid JSON ({e})') from None
  if cfg.get('model_type') != 'vit':
    raise UserError(f'hf:{path}: model_type={cfg.get("model_type")!r}, only "vit" is supported')
  act = cfg.get('hidden_act', 'gelu')
  if act not in _HF_GELU:
    raise UserError(f'hf:{path}: hidden_act={act!r}; supported: {", ".join(_HF_GELU)}')
  return cfg


def _read_safetensors(directory: str) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError
  from safetensors.numpy import load_file
  path = os.path.join(directory, 'model.safetensors')
  if not os.path.isfile(path):
    found = [f for f in os.listdir(directory) if f.endswith(('.bin', '.pt', '.pth'))]
    hint = f' (found {", ".join(found)}: pickled weights are never loaded)' if found else ''
    raise UserError(f'hf:{directory}: no model.safetensors{hint}')
  try:
    return load_file(path)
  except (SafetensorError, OSError, ValueError) as e:
    raise UserError(f'hf:{path}: not a readable safetensors file ({e})') from None


def _pair(value) -> tuple[int, int]:
  return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def load_hf(directory: str) -> tuple[Params, dict]:
  """The official parameter tree of a transformers ViT directory, and its config.json.

  Layouts: torch Linear weights are [out, in] (transposed here); q/k/v/out are reshaped to the
  DenseGeneral layouts [D, heads, head_dim] and [heads, head_dim, D]; the patch conv goes from
  OIHW to HWIO. A ViTModel pooler (dense + tanh) is the official `pre_logits` layer.
  """
  cfg = read_hf_config(directory)
  w = _hf_checkpoint_names(_read_safetensors(directory))
  heads, width = cfg['num_attention_heads'], cfg['hidden_size']
  head_dim = width // heads

  def get(name):
    if name not in w:
      raise UserError(f'hf:{directory}: model.safetensors lacks "{name}" '
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
    raise UserError(f'hf:{directory}: model.safetensors holds no encoder layers')
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
  return params, cfg


def hf_model(cfg: dict) -> dict:
  """The architecture keys (vit.config's model layout) a transformers ViT config states."""
  return dict(patches=dict(size=_pair(cfg.get('patch_size', 16))),
              hidden_size=cfg['hidden_size'],
              transformer=dict(mlp_dim=cfg['intermediate_size'],
                               num_heads=cfg['num_attention_heads'],
                               num_layers=cfg['num_hidden_layers']),
              gelu_approximate=_HF_GELU[cfg.get('hidden_act', 'gelu')],
              layer_norm_epsilon=float(cfg.get('layer_norm_eps', 1e-12)))


def hf_class_names(cfg: dict) -> Optional[list[str]]:
  id2label = cfg.get('id2label')
  if not id2label:
    return None
  names = [id2label.get(str(i), id2label.get(i)) for i in range(len(id2label))]
  return None if any(n is None for n in names) else names


def save_hf(params: Params, model: dict, directory: str, *,
            class_names: Optional[Sequence[str]] = None) -> None:
  """Writes config.json + model.safetensors that `ViTForImageClassification.from_pretrained`
  (or `ViTModel`, for a headless backbone) loads and runs with the same logits.

  `model` is a resolved model dict (vit.config). HF ViT has no GAP classifier, no ResNet stem
  and no representation layer before its classifier; such models are refused.
  """
  from safetensors.numpy import save_file
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
            os.path.join(directory, 'model.safetensors'), metadata={'format': 'pt'})
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(cfg, f, indent=2)
