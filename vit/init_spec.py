"""Where a model's weights come from:
`mpp:DIR | mae:DIR | simmim:DIR | supervised:DIR | vit_jax:FILE.npz | hf:DIR | timm:DIR`.

`load(spec)` turns a spec into the official ViT parameter tree, the architecture it implies
(a model dict in vit.config's layout, ready for `vit.config.build_model`) and the class names
when the checkpoint knows them. `adapt_params` then maps those weights onto another model of
the same backbone, at another resolution or with a new head, exactly as fine-tuning does
(paper §3.2): position embeddings interpolated in 2D, the head zeroed.

This module only dispatches: each published format has its reader (and writer) in
`vit/formats/` (vit_jax.py, hf.py, timm.py), which states what the files say beyond shapes
(GELU flavour, LayerNorm epsilon, input normalisation as the model's `pixels` key, image size).

Checkpoints of this project (`mpp:`, `mae:`, `simmim:`, `supervised:`) are read at their latest
step, and their Polyak average (EMA parameters) is used when the run kept one: it is the run's
reported model (the paper evaluates and transfers the averaged weights, Appendix B.1). Pass
`use_ema=False` for the raw parameters.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vit import atomic_write
from vit.formats import registry
from vit.formats.tree import check_finite, flatten, unflatten
from vit.models import vit as vit_model
from vit.errors import ConfigError, UserError

# Pretraining workdirs: params['backbone'] is the ViT; the objective's own top-level parameters
# beside it tell them apart (mpp/, mae/, simmim/ objective.py).
PRETRAINING = {'mpp': ('an MPP', {'mask_embedding', 'head'}),
               'mae': ('an MAE', {'decoder'}),
               'simmim': ('a SimMIM', {'mask_token', 'decoder'})}
FORMATS = (*PRETRAINING, 'supervised', *registry.FORMATS)
# Keys that fix the shapes (or the function) of the backbone; checkpoints state them.
BACKBONE_KEYS = ('patches.size', 'hidden_size', 'transformer.mlp_dim', 'transformer.num_heads',
                 'transformer.num_layers', 'resnet.num_layers', 'resnet.width_factor',
                 'classifier', 'gelu_approximate', 'layer_norm_epsilon', 'posemb', 'attention',
                 'pixels.rescale', 'pixels.mean', 'pixels.std')
HEAD_KEYS = ('head', 'pre_logits')
CLASS_NAMES_FILE = 'class_names.json'
_MAX_LISTED = 12


class Checkpoint(NamedTuple):
  params: dict          # The official ViT tree (numpy arrays), head included when present.
  model: dict           # vit.config model dict; num_classes/representation_size from the params.
  class_names: Optional[list[str]]
  image_size: int       # Its input resolution: a processor's, else its position embeddings'.
  channels: int
  view: Optional[dict] = None  # Its stated evaluation view (EvalView's fields); None: resize.


def load(spec: str, *, use_ema: bool = True) -> Checkpoint:
  """Loads `spec` = `FORMAT:PATH` with FORMAT one of mpp, mae, simmim, supervised, vit_jax, hf,
  timm.

  Returns a `Checkpoint`: `params`, the official ViT tree as host numpy arrays (a pretraining
  run's backbone only; `head`/`pre_logits` when the checkpoint has them); `model`, a vit.config
  model dict that `vit.config.build_model(model)` turns into the network these params fit;
  `class_names` when known; `image_size` and `channels` it was trained at. `use_ema` picks a
  workdir's Polyak-averaged parameters when the run kept them.

  Raises UserError naming the spec for a malformed spec, a missing path, a file of the wrong
  format, or parameters whose shapes disagree with the architecture they imply (each key with
  both shapes).
  """
  fmt, sep, path = spec.partition(':')
  if not sep or fmt not in FORMATS or not path:
    raise UserError(f'init spec {spec!r}: expected FORMAT:PATH with FORMAT one of '
                    f'{", ".join(FORMATS)} (e.g. vit_jax:ViT-B_16.npz, hf:./vit-base)')
  if fmt in registry.FORMATS:
    read = registry.FORMATS[fmt].load(path)
    params, names, size = read.params, read.class_names, read.image_size
    # Shapes fix the sizes; the files state the rest (an official .npz states nothing, and
    # the official checkpoints all use tanh GELU, LayerNorm eps 1e-6 and x / 127.5 - 1).
    try:
      model = infer_model(params)
    except UserError as e:
      raise UserError(f'{spec}: {e}') from None
    stated = copy.deepcopy(read.stated)
    model['transformer'].update(stated.pop('transformer', {}))
    model.update(stated)
    _input_geometry(params, model, None, spec)  # Its own grid must be square, whatever the size.
  else:
    params, model, names, size = _load_workdir(fmt, path, use_ema)
  if size is not None and size % patch_stride(model):
    raise UserError(f'init {spec}: its input size {size}px is not a multiple of the patch '
                    f'stride {patch_stride(model)}')
  ckpt = Checkpoint(params, model, names, *_input_geometry(params, model, size, spec),
                    view=read.view if fmt in registry.FORMATS else None)
  check_shapes(ckpt, spec)
  return ckpt


def load_workdir(path: str, *, use_ema: bool = True) -> Checkpoint:
  """A workdir of this project's trainers, MPP or supervised (told apart by its params)."""
  params, model, names, size = _load_workdir(None, path, use_ema)
  ckpt = Checkpoint(params, model, names, *_input_geometry(params, model, size))
  check_shapes(ckpt, path)
  return ckpt


def _load_workdir(fmt: Optional[str], path: str, use_ema: bool):
  from vit import checkpoints, config as config_lib
  if not os.path.isdir(path):
    raise UserError(f'{fmt}:{path}: directory not found' if fmt else
                    f'--checkpoint {path}: directory not found (a trainer workdir, or FORMAT:PATH)')
  saved, params, step = checkpoints.read_params(path, use_ema=use_ema)  # The newest readable.
  check_finite(flatten(params), f'{path}/checkpoints/{step}')
  found = _pretraining_kind(params)
  if fmt is None:
    fmt = found or 'supervised'
  if fmt in PRETRAINING:
    if found != fmt:
      raise UserError(f'{fmt}:{path}: not {PRETRAINING[fmt][0]} checkpoint (params hold '
                      f'{", ".join(sorted(params))}); try {found or "supervised"}:{path}')
    params = params['backbone']
  elif found:
    raise UserError(f'supervised:{path}: {PRETRAINING[found][0]} checkpoint (params hold '
                    f'"backbone"); use {found}:{path}')
  # The official looped tree whatever the run trained (model.scan_layers stacks the blocks).
  params = vit_model.unstack_blocks(jax.tree.map(np.asarray, dict(params)))
  model = config_lib.resolved_model(ml_collections.ConfigDict(saved))
  model['scan_layers'] = False
  # The saved config has the architecture (also the ablations' posemb and axial blocks, which
  # shapes alone cannot tell); only the heads may have been changed since.
  model.update(num_classes=_out_dim(params, 'head'),
               representation_size=_out_dim(params, 'pre_logits'))
  if model['classifier'] == 'unpooled':  # MPP reads every token; the class token is still there.
    model['classifier'] = 'token' if 'cls' in params else 'gap'
  return params, model, read_class_names(path, model['num_classes']), saved.get('image_size')


def _pretraining_kind(params) -> Optional[str]:
  """'mpp', 'mae' or 'simmim' for a pretraining run's params; None for a classifier's."""
  if 'backbone' not in params:
    return None
  others = set(params) - {'backbone'}
  return next((k for k, (_, keys) in PRETRAINING.items() if keys == others), None)


def write_class_names(workdir: str, names: Optional[Sequence[str]]) -> None:
  """Stores a classifier's label names beside its checkpoints (for prediction and export)."""
  if names and jax.process_index() == 0:
    try:
      path = os.path.join(workdir, CLASS_NAMES_FILE)
      with atomic_write.file(path) as partial, open(partial, 'w') as f:
        json.dump(list(names), f)
    except OSError as e:
      raise UserError(f'--workdir {workdir}: not writable ({e.strerror})') from None


def read_class_names(workdir: str, num_classes: Optional[int]) -> Optional[list[str]]:
  path = os.path.join(workdir, CLASS_NAMES_FILE)
  if not num_classes or not os.path.isfile(path):
    return None
  with open(path) as f:
    names = json.load(f)
  return names if isinstance(names, list) and len(names) == num_classes else None


def infer_model(params: dict) -> dict:
  """The architecture an official parameter tree implies, as a vit.config model dict.

  Shapes fix the sizes; what shapes cannot tell (GELU flavour, LayerNorm eps) takes the
  official defaults (tanh GELU, 1e-6).
  """
  from vit import config as config_lib
  model = config_lib.model_defaults().to_dict()
  try:
    t = params['Transformer']
    blocks = sorted(int(k.split('_')[1]) for k in t if k.startswith('encoderblock_'))
    query = t['encoderblock_0']['MultiHeadDotProductAttention_1']['query']['kernel']
    mlp = t['encoderblock_0']['MlpBlock_3']['Dense_0']['kernel']
    patch = params['embedding']['kernel'].shape
  except (KeyError, TypeError, IndexError) as e:
    raise UserError(f'checkpoint lacks a ViT parameter ({e}): not a ViT checkpoint') from None
  if blocks != list(range(len(blocks))):
    raise UserError(f'checkpoint encoder blocks are not numbered 0..n-1: {blocks}')
  if len(query.shape) != 3:
    raise UserError(f'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel '
                    f'has shape {tuple(query.shape)}, expected [hidden, heads, head_dim]')
  model.update(patches=dict(size=(int(patch[0]), int(patch[1]))), hidden_size=int(patch[3]),
               classifier='token' if 'cls' in params else 'gap',
               representation_size=_out_dim(params, 'pre_logits'),
               num_classes=_out_dim(params, 'head'))
  model['transformer'].update(mlp_dim=int(mlp.shape[1]), num_heads=int(query.shape[1]),
                              num_layers=len(blocks))
  if 'conv_root' in params:
    stages = sorted(k for k in params if k.startswith('block') and k[5:].isdigit())
    units = tuple(sum(1 for u in params[s] if u.startswith('unit')) for s in stages)
    width = params['conv_root']['kernel'].shape[-1] / 64
    model['resnet'] = dict(num_layers=units, width_factor=float(width))
  return model


def _out_dim(params, name):
  return int(params[name]['kernel'].shape[-1]) if name in params else None


def patch_stride(model: dict) -> int:
  """Pixels per token side: the patch size, times the ResNet stem's stride for hybrids."""
  from vit import config as config_lib
  from vit.models import resnet
  res = config_lib._resnet_config(model)
  return model['patches']['size'][0] * (resnet.total_stride(res) if res else 1)


def _input_geometry(params: dict, model: dict, image_size: Optional[int] = None,
                    what: str = 'checkpoint') -> tuple[int, int]:
  """(image_size, channels) the checkpoint was trained at: from its posemb grid by default."""
  first = params['conv_root'] if 'conv_root' in params else params['embedding']
  if image_size is None:
    posemb = params['Transformer'].get('posembed_input', {}).get('pos_embedding')
    if posemb is None:
      raise UserError('checkpoint has no learned 1D position embeddings to read its '
                      'resolution from')
    tokens = posemb.shape[1] - (1 if model['classifier'] == 'token' else 0)
    side = int(round(np.sqrt(tokens)))
    if side * side != tokens:
      raise UserError(f'{what}: its position embedding has {tokens} patch entries, not a '
                      f'square grid (non-square position grids are not supported)')
    image_size = side * patch_stride(model)
  return int(image_size), int(first['kernel'].shape[2])


def abstract_params(model: dict, image_size: int, channels: int, **overrides) -> dict:
  """Shapes of a model's parameters at `image_size`, without allocating them."""
  from vit import config as config_lib
  import flax.linen as nn
  net = config_lib.build_model(model, **overrides)
  x = jnp.zeros((1, image_size, image_size, channels), jnp.float32)
  return nn.unbox(jax.eval_shape(lambda: net.init(jax.random.key(0), x, train=False))['params'])


def check_shapes(ckpt: Checkpoint, spec: str) -> None:
  """Every parameter has the shape the inferred architecture gives it; lists those that don't."""
  size = ckpt.image_size
  if 'pos_embedding' in ckpt.params['Transformer'].get('posembed_input', {}):
    size = _input_geometry(ckpt.params, ckpt.model)[0]  # A processor may state another size.
  want = abstract_params(ckpt.model, size, ckpt.channels)
  problems = _differences(flatten(ckpt.params), flatten(want))
  if problems:
    raise UserError(f'init {spec}: parameters disagree with the architecture they imply '
                    f'({_model_summary(ckpt.model)}): ' + _listing(problems))


def _differences(have: dict, want: dict) -> list[str]:
  out = []
  for key, leaf in want.items():
    if key not in have:
      out.append(f'{key}: missing (model wants {tuple(leaf.shape)})')
    elif tuple(have[key].shape) != tuple(leaf.shape):
      out.append(f'{key}: checkpoint {tuple(have[key].shape)} vs model {tuple(leaf.shape)}')
  out += [f'{key}: in the checkpoint only {tuple(have[key].shape)}' for key in have
          if key not in want]
  return out


def _listing(problems: list[str]) -> str:
  more = len(problems) - _MAX_LISTED
  return '; '.join(problems[:_MAX_LISTED]) + (f'; and {more} more' if more > 0 else '')


def _model_summary(model: dict) -> str:
  t = model['transformer']
  return (f'patches {tuple(model["patches"]["size"])}, hidden {model["hidden_size"]}, '
          f'mlp {t["mlp_dim"]}, heads {t["num_heads"]}, layers {t["num_layers"]}')


def _get(d: dict, dotted: str):
  for part in dotted.split('.'):
    d = d.get(part) if isinstance(d, dict) else None
  return tuple(d) if isinstance(d, list) else d


def merge_model(config_model: ml_collections.ConfigDict, ckpt_model: dict,
                what: str = 'the init checkpoint') -> dict:
  """The checkpoint's backbone with the config's other model keys (dropout, head, dtype...).

  A backbone key that the config sets explicitly (differs from vit.config's default, or comes
  from the preset in model.name) to another value than the checkpoint's is a UserError
  listing every such key.
  """
  from vit import config as config_lib
  from vit.models import presets
  given = config_model.to_dict()
  defaults = config_lib.model_defaults().to_dict()
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
  conflicts = [f'model.{k}: config {v!r} vs checkpoint {_get(ckpt_model, k)!r}'
               for k, v in explicit.items() if v != _get(ckpt_model, k)
               and not (k.startswith('resnet.') and _get(ckpt_model, 'resnet.num_layers') is None
                        and _get(given, 'resnet.num_layers') is None)]
  if conflicts:
    raise UserError(f'config.model conflicts with {what}: ' + _listing(conflicts)
                    + ' (unset these keys to take the checkpoint\'s)')
  merged = copy.deepcopy(given)
  for key in BACKBONE_KEYS:
    value = _get(ckpt_model, key)
    if key.startswith('resnet.') and ckpt_model.get('resnet') is None:
      value = _get(defaults, key)
    _assign(merged, key, value)
  return merged


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
  from vit.models.vit import resize_position_params
  try:
    loaded = resize_position_params(dict(loaded), tuple(grid))
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
  problems = _differences(have, {k: v for k, v in want.items() if k not in head_keys})
  if problems:
    raise UserError(f'{what}: the checkpoint does not fit the model: ' + _listing(problems))
  out = {k: np.asarray(v, dtype=want[k].dtype) for k, v in have.items()}
  fresh_tree = None
  for key in head_keys:
    if key.startswith('head/'):
      out[key] = np.zeros(want[key].shape, want[key].dtype)
    else:
      fresh_tree = flatten(fresh()) if fresh_tree is None and fresh else fresh_tree
      if fresh_tree is None:
        raise UserError(f'{what}: {key} is not in the checkpoint and no initialiser was given')
      out[key] = np.asarray(fresh_tree[key])
  return unflatten(out)


def grid_at(model: dict, image_size: int) -> tuple[int, int]:
  """The patch grid a model sees at a square `image_size`."""
  side = image_size // patch_stride(model)
  return side, side


def describe(ckpt: Checkpoint) -> str:
  return (f'{_model_summary(ckpt.model)}, classifier {ckpt.model["classifier"]}, trained at '
          f'{ckpt.image_size}px, head {ckpt.model["num_classes"]}')
