"""A Hugging Face transformers ViT directory, both directions.

`config.json` + `model.safetensors` (or the shards `model-0000k-of-0000n.safetensors` that
`model.safetensors.index.json` lists) in the layout `save_pretrained` writes
(`vit.encoder.layer.{i}.attention.attention.query.weight`; transformers >= 5's in-memory names
`vit.layers.{i}.attention.q_proj.weight` are read too), and `preprocessor_config.json`, whose
image processor keys (do_rescale/rescale_factor, do_normalize/image_mean/image_std, size,
do_center_crop/crop_size, resample) fix the model's input: they become the model's `pixels`
key, the checkpoint's image size and its evaluation view (`vit.data.transforms.EvalView`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from typing import Optional, Sequence

import numpy as np

from vit.errors import UserError, require_directory
from vit.data import transforms
from vit.formats import safetensors_dir, table
from vit.formats.table import Dims, Row
from vit.formats.torch_layout import CONV, HEADS_BIAS, HEADS_IN, HEADS_OUT, LINEAR, zeros
from vit.formats.tree import (OFFICIAL_PIXELS, TABLE_POSEMBS, Params, Read, as_learned_1d,
                              check_floating, input_pixels, pixels, posemb, read_json_object)
from vit.models.spec import ModelSpec

logger = logging.getLogger(__name__)

# Exact GELU is HF's 'gelu'; the tanh approximation of the official checkpoints is
# 'gelu_pytorch_tanh' (or the older, numerically identical 'gelu_new').
_GELU = {'gelu': False, 'gelu_pytorch_tanh': True, 'gelu_new': True}
SUFFIX = None  # save writes a directory (vit.formats.registry.Format).
WEIGHTS, INDEX, PROCESSOR = safetensors_dir.WEIGHTS, 'model.safetensors.index.json', \
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


def config_kind(cfg: dict) -> str:
  """'hf' (a transformers ViT), 'timm' (timm's own config.json, written by save_for_hf) or what
  else a config.json names (its model_type, e.g. "model_type='bert'")."""
  if 'model_type' not in cfg and 'architecture' in cfg:
    return 'timm'
  return 'hf' if cfg.get('model_type') == 'vit' else f'model_type={cfg.get("model_type")!r}'


def read_config(directory: str) -> dict:
  """config.json of a transformers ViT; UserError naming the file for anything else."""
  path = os.path.join(directory, 'config.json')
  require_directory(directory, f'hf:{directory}', 'a model directory (config.json, '
                    'model.safetensors)')
  if not os.path.isfile(path):
    raise UserError(f'hf:{directory}: no config.json (a Hugging Face model directory holds '
                    f'config.json and model.safetensors)')
  cfg = _json(path)
  if config_kind(cfg) == 'timm':
    raise UserError(f'hf:{directory}: a timm folder (config.json has architecture='
                    f'{cfg["architecture"]!r}); load it with timm:{directory}')
  if cfg.get('model_type') != 'vit':
    raise UserError(f'hf:{path}: model_type={cfg.get("model_type")!r}, only "vit" is supported')
  act = cfg.get('hidden_act', 'gelu')
  if act not in _GELU:
    raise UserError(f'hf:{path}: hidden_act={act!r}; supported: {", ".join(_GELU)}')
  return cfg


def read_weights(directory: str) -> dict[str, np.ndarray]:
  """Every tensor of `model.safetensors`, or of the shards its index lists."""
  single, index = os.path.join(directory, WEIGHTS), os.path.join(directory, INDEX)
  if os.path.isfile(single):
    return safetensors_dir.read_weights(single, 'hf')
  if not os.path.isfile(index):
    raise UserError(f'hf:{directory}: no {WEIGHTS} nor {INDEX}'
                    f'{safetensors_dir.pickled_hint(directory)}')
  weight_map = _json(index).get('weight_map')
  if not isinstance(weight_map, dict) or not weight_map:
    raise UserError(f'hf:{index}: no "weight_map" of tensor names to shard files')
  odd = next((k for k, v in weight_map.items() if not isinstance(v, str)), None)
  if odd is not None:  # A null or number was os.path.join's TypeError traceback.
    raise UserError(f'hf:{index}: weight_map gives {odd} the shard '
                    f'{json.dumps(weight_map[odd])}, not a file name')
  out = {}
  for shard in sorted(set(weight_map.values())):
    path = os.path.join(directory, shard)
    if os.path.basename(shard) != shard or not shard.endswith('.safetensors'):
      raise UserError(f'hf:{index}: shard {shard!r} is not a .safetensors file in {directory}')
    if not os.path.isfile(path):
      raise UserError(f'hf:{index}: lists shard {shard}, which is missing')
    out.update(safetensors_dir.read_weights(path, 'hf'))
  missing = sorted(set(weight_map) - set(out))
  if missing:
    raise UserError(f'hf:{index}: {len(missing)} listed tensors are in no shard (first: '
                    f'{missing[0]})')
  return out


def _side(path: str, size, key: str) -> int:
  """The side of a square `size` key (an int, {"height", "width"} or {"shortest_edge"});
  UserError naming the file and key for any other, or a side that is not a positive int."""
  if isinstance(size, (list, tuple)) and len(size) == 2:  # (height, width), as get_size_dict.
    size = dict(height=size[0], width=size[1])
  if isinstance(size, dict) and set(size) == {'shortest_edge'}:
    side = size['shortest_edge']
  elif isinstance(size, dict) and 'height' in size and 'width' in size:
    if size['height'] != size['width']:
      raise UserError(f'hf:{path}: {key} is {size["height"]}x{size["width"]}; only square '
                      f'inputs are supported')
    side = size['height']
  elif isinstance(size, int) and not isinstance(size, bool):
    side = size
  else:
    raise UserError(f'hf:{path}: {key}={size!r}; supported: an int or {{"height", "width"}}')
  if not isinstance(side, int) or isinstance(side, bool) or side < 1:
    raise UserError(f'hf:{path}: {key}={size!r}: a side must be a positive number of pixels')
  return side


# What a processor class does for the keys its file leaves out, where that is not
# ViTImageProcessor's (transformers' DeiTImageProcessorPil class attributes).
_CLASS_DEFAULTS = {'DeiTImageProcessor': dict(
    do_resize=True, size={'height': 256, 'width': 256}, resample=3, do_center_crop=True,
    crop_size={'height': 224, 'width': 224})}


def read_processor(directory: str, channels: int) -> tuple[Optional[dict], Optional[int],
                                                          Optional[dict]]:
  """(pixels model key, image size, view) from preprocessor_config.json; (None, None, None)
  without one (transformers' ViTImageProcessor defaults are the official x / 127.5 - 1).

  A centre crop (`do_center_crop`, `crop_size`) sets the size the model sees. `view` is what
  the processor does beyond a bilinear resize straight to that size, as
  `vit.data.transforms.EvalView` fields (a resize to `size` then a centre crop, another PIL
  filter), computed as transformers' PIL image processors compute it; None for a plain resize.
  A view EvalView cannot compute (a crop of the image as it comes, a longest_edge bound, an
  unknown filter) is a one-line warning naming it, and a plain resize.
  """
  path = os.path.join(directory, PROCESSOR)
  if not os.path.isfile(path):
    return None, None, None
  p = _json(path)
  kind = str(p.get('image_processor_type') or p.get('feature_extractor_type') or '')
  kind = re.sub(r'(Fast|Pil)$', '', kind.replace('FeatureExtractor', 'ImageProcessor'))
  p = {**_CLASS_DEFAULTS.get(kind, {}), **p}
  if isinstance(p.get('size'), int) and p.get('default_to_square') is False:
    p['size'] = {'shortest_edge': p['size']}  # As transformers' get_size_dict reads it.
  rescale = p.get('rescale_factor', OFFICIAL_PIXELS.rescale) if p.get('do_rescale', True) else 1
  if p.get('do_normalize', True):
    mean, std = p.get('image_mean', [0.5] * 3), p.get('image_std', [0.5] * 3)
  else:
    mean, std = 0.0, 1.0
  try:
    stated = pixels(float(rescale), mean, std, channels)
  except (ValueError, TypeError) as e:
    raise UserError(f'hf:{path}: rescale_factor/image_mean/image_std: {e}') from None
  size = None
  if p.get('do_center_crop') and p.get('crop_size') is None:
    raise UserError(f'hf:{path}: do_center_crop is true and crop_size is missing (transformers '
                    f'refuses such a processor too)')
  if p.get('do_center_crop') and p.get('crop_size') is not None:
    size = _side(path, p['crop_size'], 'crop_size')
  elif p.get('do_resize', True) and p.get('size') is not None:
    if isinstance(p['size'], dict) and 'shortest_edge' in p['size']:
      raise UserError(f'hf:{path}: size={p["size"]!r} without a centre crop gives inputs of the '
                      f'image\'s shape; only square inputs are supported')
    size = _side(path, p['size'], 'size')
  view, unsupported = _view(path, p, size)
  if unsupported:
    logger.warning(f'hf:{path}: {" and ".join(unsupported)}; this repository resizes straight '
                   f'to {size}x{size} bilinearly, so its inputs and logits differ from '
                   f'transformers\' pipeline')
  return stated, size, view


# PIL's resampling filter numbers, which the processors' `resample` key holds.
_RESAMPLE = {0: 'nearest', 1: 'lanczos', 2: 'bilinear', 3: 'bicubic', 4: 'box', 5: 'hamming'}


def _view(path: str, p: dict, size: Optional[int]) -> tuple[Optional[dict], list[str]]:
  """(EvalView fields, what cannot be applied) of a processor's resize, centre crop and filter
  (e.g. DeiTImageProcessor's bicubic resize to 256 x 256, then the centre 224 x 224)."""
  if size is None:
    return None, []
  crops = p.get('do_center_crop') and p.get('crop_size') is not None
  if not p.get('do_resize', True):
    return None, [f'the processor centre-crops {size}x{size} out of the image as it comes, '
                  f'without resizing'] if crops else []
  resample = p.get('resample', 2)
  # transformers' PIL processors resample bilinearly for anything but a filter number.
  interpolation = _RESAMPLE.get(resample) if isinstance(resample, int) else 'bilinear'
  if interpolation is None:
    return None, [f'it resamples with resample={resample!r} (unknown filter)']
  scale, mode = size, 'squash'
  resized = p.get('size')
  if crops and resized is not None:
    if isinstance(resized, dict) and set(resized) == {'shortest_edge'}:
      scale, mode = _side(path, resized, 'size'), 'center'
    elif isinstance(resized, dict) and 'shortest_edge' in resized:
      return None, [f'the processor resizes to size={resized!r} then centre-crops '
                    f'{size}x{size}']
    else:
      scale = _side(path, resized, 'size')
  if (scale, mode, interpolation) == (size, 'squash', 'bilinear'):
    return None, []
  return dict(crop_pct=transforms.crop_pct_for(size, scale), interpolation=interpolation,
              crop_mode=mode, crop_offsets='floor'), []


def _pair(value) -> tuple[int, int]:
  return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


_BLOCK = 'Transformer/encoderblock_{i}/'
_ATTN = _BLOCK + 'MultiHeadDotProductAttention_1/'
_LAYER = 'encoder.layer.{i}.'
# The format, one row per tensor (names as `save_pretrained` writes them, without the `vit.`
# prefix of ViTForImageClassification): official path, transformers' name, transform, inverse.
# A ViTModel pooler (dense + tanh) is the official `pre_logits` layer.
ROWS = (
    Row('embedding/kernel', 'embeddings.patch_embeddings.projection.weight', *CONV),
    Row('embedding/bias', 'embeddings.patch_embeddings.projection.bias'),
    Row('cls', 'embeddings.cls_token'),
    Row('Transformer/posembed_input/pos_embedding', 'embeddings.position_embeddings'),
    Row('Transformer/encoder_norm/scale', 'layernorm.weight'),
    Row('Transformer/encoder_norm/bias', 'layernorm.bias'),
    Row(_BLOCK + 'LayerNorm_0/scale', _LAYER + 'layernorm_before.weight'),
    Row(_BLOCK + 'LayerNorm_0/bias', _LAYER + 'layernorm_before.bias'),
    *[row for n in ('query', 'key', 'value') for row in (
        Row(f'{_ATTN}{n}/kernel', f'{_LAYER}attention.attention.{n}.weight', *HEADS_IN),
        Row(f'{_ATTN}{n}/bias', f'{_LAYER}attention.attention.{n}.bias', *HEADS_BIAS,
            default=zeros(1)))],  # qkv_bias=False: no bias tensors.
    Row(_ATTN + 'out/kernel', _LAYER + 'attention.output.dense.weight', *HEADS_OUT),
    Row(_ATTN + 'out/bias', _LAYER + 'attention.output.dense.bias'),
    Row(_BLOCK + 'LayerNorm_2/scale', _LAYER + 'layernorm_after.weight'),
    Row(_BLOCK + 'LayerNorm_2/bias', _LAYER + 'layernorm_after.bias'),
    Row(_BLOCK + 'MlpBlock_3/Dense_0/kernel', _LAYER + 'intermediate.dense.weight', *LINEAR),
    Row(_BLOCK + 'MlpBlock_3/Dense_0/bias', _LAYER + 'intermediate.dense.bias'),
    Row(_BLOCK + 'MlpBlock_3/Dense_1/kernel', _LAYER + 'output.dense.weight', *LINEAR),
    Row(_BLOCK + 'MlpBlock_3/Dense_1/bias', _LAYER + 'output.dense.bias'),
    Row('pre_logits/kernel', 'pooler.dense.weight', *LINEAR, when='pooler.dense.weight'),
    Row('pre_logits/bias', 'pooler.dense.bias', when='pooler.dense.weight'),
    Row('head/kernel', 'classifier.weight', *LINEAR, when='classifier.weight'),
    Row('head/bias', 'classifier.bias', when='classifier.weight'),
)


def load(path: str) -> Read:
  """The official parameter tree of the transformers ViT directory `path`, and what its files
  state.

  Layouts (`ROWS`): torch Linear weights are [out, in] (transposed here); q/k/v/out are
  reshaped to the DenseGeneral layouts [D, heads, head_dim] and [heads, head_dim, D]; the patch
  conv goes from OIHW to HWIO. Raises UserError naming the directory or file for what is not
  a transformers ViT.
  """
  cfg = read_config(path)
  w = _checkpoint_names(read_weights(path))
  _check_sizes(path, cfg, w)
  layers = sorted({int(m[1]) for k in w for m in [re.match(r'encoder\.layer\.(\d+)\.', k)] if m})
  if not layers:
    raise UserError(f'hf:{path}: the weights hold no encoder layers')
  rows = ROWS if cfg.get('pooler_act', 'tanh') == 'tanh' else [
      r for r in ROWS if not r.official.startswith('pre_logits/')]
  # The tensors this reads only: a transformers file may keep integer buffers a ViT never uses.
  used = table.names(rows, layers)
  weights_file = os.path.join(path, WEIGHTS if os.path.isfile(os.path.join(path, WEIGHTS))
                               else INDEX)
  check_floating({k: v for k, v in w.items() if k in used}, f'hf:{weights_file}')
  params = table.read(
      rows, {k: np.asarray(v, np.float32) for k, v in w.items() if k in used}, layers,
      Dims(cfg['hidden_size'], cfg['num_attention_heads']),
      missing=lambda name: f'hf:{path}: the weights lack "{name}" (has {len(w)} tensors; '
                           f'is this a ViT checkpoint?)')
  stated = model_keys(cfg)
  stated['pixels'], size, view = read_processor(path, params['embedding']['kernel'].shape[2])
  if 'head' not in params and 'ViTForImageClassification' in (cfg.get('architectures') or ()):
    logger.warning(f'hf:{path}: config.json names ViTForImageClassification, but the weights '
                   'have no classifier (classifier.weight): read as a headless encoder')
  names = class_names(cfg) if 'head' in params else None
  if names and len(names) != params['head']['kernel'].shape[1]:
    names = None  # An edited id2label that names other than the head's outputs: numbered.
  return Read(params, stated, names, size, view)


_SIZES = ('hidden_size', 'num_attention_heads', 'intermediate_size', 'num_hidden_layers')


def _check_sizes(path: str, cfg: dict, w: dict[str, np.ndarray]) -> None:
  """UserError naming config.json's key when a size is no positive integer, the heads do not
  divide the width, the width or patch size is not the weights' (another model's config.json),
  layer_norm_eps is no number, or id2label no object: each was a traceback or a misleading line
  in the reader."""
  where = f'hf:{os.path.join(path, "config.json")}'
  for key in _SIZES:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise UserError(f'{where}: {key}={value!r}: must be a positive integer')
  hidden, heads = cfg['hidden_size'], cfg['num_attention_heads']
  if hidden % heads:
    raise UserError(f'{where}: num_attention_heads={heads} does not divide hidden_size={hidden}')
  cls = w.get('embeddings.cls_token')
  if cls is not None and cls.shape[-1] != hidden:
    raise UserError(f'{where}: hidden_size={hidden}, but the weights are {cls.shape[-1]} wide '
                    '(embeddings.cls_token): is config.json this model\'s?')
  # The patch size sets the grid the position embeddings are read on: a wrong one was a
  # warning that they are for another resolution, then a shape error on the patch kernel.
  kernel = w.get('embeddings.patch_embeddings.projection.weight')
  stated = cfg.get('patch_size', 16)  # transformers' ViTConfig default.
  unset = '' if 'patch_size' in cfg else " (unset: transformers' default)"
  if kernel is not None and kernel.ndim == 4 and _pair(stated) != tuple(kernel.shape[2:]):
    raise UserError(f'{where}: patch_size={stated!r}{unset}, but '
                    f'the weights\' patches are {kernel.shape[2]}x{kernel.shape[3]} '
                    '(embeddings.patch_embeddings.projection.weight): is config.json this '
                    'model\'s?')
  try:
    float(cfg.get('layer_norm_eps', 1e-12))
  except (TypeError, ValueError):
    raise UserError(f'{where}: layer_norm_eps={cfg["layer_norm_eps"]!r}: must be a '
                    'number') from None
  id2label = cfg.get('id2label')
  if id2label is not None and not isinstance(id2label, dict):  # transformers refuses it too.
    kind = {list: 'an array', str: 'a string', bool: 'a boolean'}.get(type(id2label), 'a number')
    raise UserError(f'{where}: id2label is {kind}, not an object of label numbers to names '
                    '({"0": "cat", ...})')


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
  """The label names of a transformers config.json (`cfg`), from id2label (keys '0', '1', ... or
  ints) in label order; None when it has none or lacks one of the labels 0..n-1."""
  id2label = cfg.get('id2label')
  if not id2label:
    return None
  names = [id2label.get(str(i), id2label.get(i)) for i in range(len(id2label))]
  return None if any(n is None for n in names) else names


def processor_config(model: Optional[ModelSpec], image_size: int, channels: int,
                     view: Optional[dict] = None) -> dict:
  """The image processor settings that reproduce the model's input (`pixels`) at its size:
  ViTImageProcessor's plain resize, or with `view` (EvalView's fields) DeiTImageProcessor's
  resize (both sides, or the short side for crop_mode 'center') then centre crop, with the
  view's PIL filter. A 3-channel model's processor converts other images to RGB
  (`do_convert_rgb`), as predict repeats a grey image's channel: without it transformers
  refuses grey images."""
  px = input_pixels(model)
  out = dict(image_processor_type='ViTImageProcessor', do_resize=True,
             size=dict(height=int(image_size), width=int(image_size)), resample=2,
             do_rescale=True, rescale_factor=float(px.rescale), do_normalize=True,
             image_mean=safetensors_dir.per_channel(px.mean, channels),
             image_std=safetensors_dir.per_channel(px.std, channels))
  if channels == 3:
    out['do_convert_rgb'] = True
  if view:
    scale = math.floor(image_size / view['crop_pct'])
    out['resample'] = {v: k for k, v in _RESAMPLE.items()}[view['interpolation']]
    if transforms.crops(view, image_size):
      out.update(image_processor_type='DeiTImageProcessor', do_center_crop=True,
                 crop_size=dict(height=int(image_size), width=int(image_size)),
                 size=dict(shortest_edge=scale) if view['crop_mode'] == 'center' else
                 dict(height=scale, width=scale))
  return out


def check_expressible(params: Params, model: Optional[ModelSpec]) -> None:
  """UserError naming what transformers' ViT cannot compute the same way: a ResNet stem,
  global average pooling, a representation layer before the classifier, relative position
  biases (other position embeddings are written as its learned 1D table: `as_learned_1d`),
  axial attention. `model`: the resolved model (None: the official defaults). Which other
  formats hold it is `vit.formats.registry.check_expressible`'s to say."""
  if model and model.resnet:
    raise UserError('--format hf: hybrid R+ViT models have no transformers ViT equivalent')
  if 'cls' not in params:
    raise UserError('--format hf: transformers ViT classifies from the class token; this '
                    'model uses global average pooling (model.classifier=gap)')
  if 'head' in params and 'pre_logits' in params:
    raise UserError('--format hf: ViTForImageClassification has no representation layer '
                    '(pre_logits: a model fine-tuned without model.representation_size has '
                    'none)')
  kind, attention = posemb(params, model), model.attention if model else 'global'
  if kind not in TABLE_POSEMBS or attention != 'global':
    raise UserError(f'--format hf: transformers ViT has learned 1D position embeddings and '
                    f'global attention; this model has posemb {kind} and {attention} '
                    f'attention')


def save(params: Params, out: str, model: Optional[ModelSpec] = None, *,
         class_names: Optional[Sequence[str]] = None, image_size: Optional[int] = None,
         view: Optional[dict] = None) -> None:
  """Writes config.json + model.safetensors + preprocessor_config.json in the directory `out`
  that `ViTForImageClassification.from_pretrained` (or `ViTModel`, for a headless backbone)
  and `AutoImageProcessor.from_pretrained` (transformers' PIL processors) load and run with
  the same logits.

  `model` is the resolved model (a ModelSpec; None: the official defaults); `image_size` the
  processor's input size (default: the position embeddings' grid). The processor states this
  repository's view: a bilinear resize to that size, or the checkpoint's own evaluation view
  (`view`: EvalView's fields, e.g. timm's crop_pct 0.875 and bicubic filter) as
  DeiTImageProcessor's resize and centre crop. transformers centres a crop with offsets
  rounded down, timm and torchvision to the nearest (`EvalView.crop_offsets`): for a view of
  the latter the input can be one pixel off, which a one-line warning says. Models
  `check_expressible` refuses are refused; learned_2d, sincos_2d and none position embeddings
  are written as the learned 1D table at the model's grid (`image_size`'s for the last two),
  with a one-line warning of what a reader then does differently (`as_learned_1d`).
  """
  check_expressible(params, model)
  params = as_learned_1d(params, model, image_size, '--format hf')
  p, _, channels, _ = params['embedding']['kernel'].shape
  size = image_size or _grid(params) * p
  if view and view.get('crop_offsets', 'round') != 'floor' and transforms.offsets_differ(view,
                                                                                         size):
    logger.warning(f'--format hf: transformers centres its crop at offsets rounded down, this '
                   f'checkpoint\'s view (crop_pct {view["crop_pct"]:g}, crop_mode '
                   f'{view["crop_mode"]}) at rounded ones: '
                   f'{transforms.offsets_note(view, size)}')
  # ViTForImageClassification holds the backbone under `vit.`, its classifier beside it.
  prefix = 'vit.' if 'head' in params else ''
  tensors = table.write(ROWS, params, range(table.block_count(params)), Dims.of(params))
  tensors = {k if k.startswith('classifier.') else prefix + k: v for k, v in tensors.items()}
  safetensors_dir.write(out, tensors, {
      'config.json': _config(params, model, class_names),
      PROCESSOR: processor_config(model, size, channels, view)})


def _grid(params: Params) -> int:
  """The side of the patch grid of an official tree with a class token."""
  tokens = params['Transformer']['posembed_input']['pos_embedding'].shape[1] - 1
  return int(round(np.sqrt(tokens)))


def _config(params: Params, model: Optional[ModelSpec],
            class_names: Optional[Sequence[str]]) -> dict:
  """The config.json of `save`: sizes from the parameters, the function from `model` (None:
  the official tanh GELU and LayerNorm epsilon 1e-6, no dropout)."""
  t, (width, heads) = params['Transformer'], Dims.of(params)
  p, _, channels, _ = params['embedding']['kernel'].shape
  grid = _grid(params)
  gelu_approximate, dropout, attention_dropout, epsilon = (
      (model.gelu_approximate, model.dropout_rate, model.attention_dropout_rate,
       model.layer_norm_epsilon) if model else (True, 0.0, 0.0, 1e-6))
  cfg = dict(
      model_type='vit',
      architectures=['ViTForImageClassification' if 'head' in params else 'ViTModel'],
      hidden_size=width, num_hidden_layers=table.block_count(params), num_attention_heads=heads,
      intermediate_size=int(t['encoderblock_0']['MlpBlock_3']['Dense_0']['kernel'].shape[1]),
      hidden_act='gelu_pytorch_tanh' if gelu_approximate else 'gelu',
      hidden_dropout_prob=float(dropout), attention_probs_dropout_prob=float(attention_dropout),
      layer_norm_eps=float(epsilon),
      image_size=int(grid * p), patch_size=int(p), num_channels=int(channels),
      qkv_bias=True, encoder_stride=int(p), initializer_range=0.02, pooler_act='tanh')
  if 'pre_logits' in params:
    cfg['pooler_output_size'] = int(params['pre_logits']['kernel'].shape[1])
  if 'head' in params:
    num = params['head']['kernel'].shape[1]
    names = list(class_names) if class_names and len(class_names) == num else [
        f'LABEL_{i}' for i in range(num)]
    cfg['id2label'] = {str(i): n for i, n in enumerate(names)}
    cfg['label2id'] = {n: i for i, n in enumerate(names)}
  return cfg
