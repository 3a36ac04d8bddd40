"""The architecture an official ViT parameter tree implies, and the check that a tree fits one.

Shapes fix the sizes (patch, width, MLP, heads, layers, the ResNet stem of a hybrid, the heads
on top); what shapes cannot tell (GELU flavour, LayerNorm epsilon, input normalisation) is
for the checkpoint's files to state (`vit.formats`) or takes the official defaults. Models are
`vit.models.ModelSpec`s, ready for `vit.config.build_model`.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit import config as config_lib
from vit.errors import UserError
from vit.formats.tree import flatten
from vit.models import resnet
from vit.models.spec import ModelSpec
from vit.models.vit import VisionTransformer

_MAX_LISTED = 12


def infer_model(params: dict, stated: Optional[Mapping[str, Any]] = None) -> ModelSpec:
  """The architecture an official parameter tree implies, with what its files state.

  Shapes fix the sizes; `stated` (model keys in `config.model`'s nested layout: a format
  reader's `Read.stated`, e.g. GELU flavour, LayerNorm eps, pixels) is laid over them, and
  what neither tells takes the official defaults (tanh GELU, 1e-6, x / 127.5 - 1): the dict
  becomes a spec through `vit.config.upgrade`. Raises UserError when the tree is not a ViT's.
  """
  model = _sizes(params)
  stated = copy.deepcopy(dict(stated or {}))
  model['transformer'].update(stated.pop('transformer', {}))
  model.update(stated)
  return config_lib.upgrade(model)


def _sizes(params: dict) -> dict:
  """`config.model`'s nested keys at their defaults, the sizes and heads from the shapes."""
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
               representation_size=out_dim(params, 'pre_logits'),
               num_classes=out_dim(params, 'head'))
  model['transformer'].update(mlp_dim=int(mlp.shape[1]), num_heads=int(query.shape[1]),
                              num_layers=len(blocks))
  if 'conv_root' in params:
    stages = sorted(k for k in params if k.startswith('block') and k[5:].isdigit())
    units = tuple(sum(1 for u in params[s] if u.startswith('unit')) for s in stages)
    width = params['conv_root']['kernel'].shape[-1] / 64
    model['resnet'] = dict(num_layers=units, width_factor=float(width))
  return model


def out_dim(params: dict, name: str) -> Optional[int]:
  """The output width of the top-level dense layer `name` ('head', 'pre_logits'), or None.

  Read from its kernel, or from its bias where the kernel is missing: the model then has the
  layer, and `check_shapes` names the missing kernel with the shape it wants, one line as for
  any other missing array (a KeyError traceback before)."""
  layer = params.get(name)
  if not isinstance(layer, Mapping):
    return None
  for key in ('kernel', 'bias'):
    shape = getattr(layer.get(key), 'shape', ())
    if shape:
      return int(shape[-1])
  return None


def patch_stride(model: ModelSpec) -> int:
  """Pixels per token side: the patch size, times the ResNet stem's stride for hybrids."""
  return model.patch_size[0] * (resnet.total_stride(model.resnet) if model.resnet else 1)


def grid_at(model: ModelSpec, image_size: int) -> tuple[int, int]:
  """The patch grid a model sees at a square `image_size`."""
  side = image_size // patch_stride(model)
  return side, side


def input_geometry(params: dict, model: ModelSpec, image_size: Optional[int] = None,
                   what: str = 'checkpoint') -> tuple[int, int]:
  """(image_size, channels) the checkpoint was trained at: from its posemb grid by default.

  Raises UserError naming `what` when the position embedding is missing or not a square grid.
  """
  first = params['conv_root'] if 'conv_root' in params else params['embedding']
  if image_size is None:
    posemb = params['Transformer'].get('posembed_input', {}).get('pos_embedding')
    if posemb is None:
      raise UserError('checkpoint has no learned 1D position embeddings to read its '
                      'resolution from')
    tokens = posemb.shape[1] - (1 if model.classifier == 'token' else 0)
    side = int(round(np.sqrt(tokens)))
    if side * side != tokens:
      raise UserError(f'{what}: its position embedding has {tokens} patch entries, not a '
                      f'square grid (non-square position grids are not supported)')
    image_size = side * patch_stride(model)
  return int(image_size), int(first['kernel'].shape[2])


def abstract_params(model: ModelSpec, image_size: int, channels: int, **overrides) -> dict:
  """Shapes of a model's parameters at `image_size` (ShapeDtypeStructs), without allocating
  them. `overrides` go to `vit.config.build_model` (e.g. num_classes=0)."""
  net = config_lib.build_model(model, **overrides)
  x = jnp.zeros((1, image_size, image_size, channels), jnp.float32)
  return nn.unbox(jax.eval_shape(lambda: net.init(jax.random.key(0), x, train=False))['params'])


def check_shapes(params: dict, model: ModelSpec, image_size: int, channels: int, what: str) -> None:
  """Every parameter has the shape `model` gives it (at the position embeddings' grid when
  there are some, else at `image_size`); UserError naming `what` and listing those that
  don't."""
  if 'pos_embedding' in params['Transformer'].get('posembed_input', {}):
    image_size = input_geometry(params, model)[0]  # A processor may state another size.
  want = abstract_params(model, image_size, channels)
  problems = differences(flatten(params), flatten(want))
  if problems:
    raise UserError(f'init {what}: parameters disagree with the architecture they imply '
                    f'({summary(model)}): ' + listing(problems))


def differences(have: dict, want: dict) -> list[str]:
  """Each key of two flat trees whose shapes differ or that only one holds, in words."""
  out = []
  for key, leaf in want.items():
    if key not in have:
      out.append(f'{key}: missing (model wants {tuple(leaf.shape)})')
    elif tuple(have[key].shape) != tuple(leaf.shape):
      out.append(f'{key}: checkpoint {tuple(have[key].shape)} vs model {tuple(leaf.shape)}')
  out += [f'{key}: in the checkpoint only {tuple(have[key].shape)}' for key in have
          if key not in want]
  return out


def listing(problems: list[str]) -> str:
  """The first problems joined for one error line, and how many more there are."""
  more = len(problems) - _MAX_LISTED
  return '; '.join(problems[:_MAX_LISTED]) + (f'; and {more} more' if more > 0 else '')


def summary(model: ModelSpec) -> str:
  """'patches (16, 16), hidden 768, mlp 3072, heads 12, layers 12', then what is not the
  default, which changes the parameters a checkpoint holds: ', posemb sincos_2d' (not
  learned_1d), ', axial attention' (row and column blocks), ', ResNet stem (3, 4, 9)' (a
  hybrid's, with ' width 2' where its width factor is not 1), ', pre-logits 768' (a
  representation layer before the head)."""
  line = (f'patches {model.patch_size}, hidden {model.hidden_size}, mlp {model.mlp_dim}, '
          f'heads {model.num_heads}, layers {model.num_layers}')
  if model.resnet is not None:
    line += f', ResNet stem {tuple(model.resnet.num_layers)}'
    if model.resnet.width_factor != 1:
      line += f' width {model.resnet.width_factor:g}'
  if model.attention != 'global':
    line += f', {model.attention} attention'
  if model.posemb != VisionTransformer.posemb:
    line += f', posemb {model.posemb}'
  if model.representation_size is not None:
    line += f', pre-logits {model.representation_size}'
  return line
