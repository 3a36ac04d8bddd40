"""The ViT .npz of google-research/vision_transformer and google-research/big_vision.

One array per parameter under its '/'-joined path. `load` detects, without flags, every layout
these projects write (names and shapes as in vision_transformer's `vit_jax/models_vit.py` and
big_vision's `big_vision/models/vit.py`):

* block modules named by flax's old global counter (`LayerNorm_0`, `MultiHeadDotProductAttention_1`,
  `LayerNorm_2`, `MlpBlock_3`: the published files and ours) or by today's per-type counter
  (`LayerNorm_0`, `MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`: the official
  code under current flax, and big_vision);
* the position embedding in `Transformer/posembed_input` over class token and patches, or at the
  top level (or in `Transformer/`) over the patches only, the class token getting none
  (big_vision adds it before concatenating the token), or none at all: big_vision's fixed
  `posemb="sincos2d"`, read as `model.posemb='sincos_2d'` (the same table, none for the class
  token). Such a file holds no patch grid: its image size is given after the file name,
  `FILE.npz@SIZE` (pixels per side), or, without it, is the size of the command that reads it
  (`vit.init_spec.load`'s `image_size`: fine-tuning's, prediction's --resolution);
* blocks stacked along a leading depth axis in `Transformer/encoderblock/...` (big_vision's
  `scan=True`);
* everything nested under `params/` (a big_vision checkpoint with optimiser state),
  `params/img/` or `img/` (the image tower of a two-tower model such as SigLIP), or
  `opt/target/` (old flax optimisers);
* bfloat16 arrays, which numpy stores as 2-byte void (big_vision's `recover_dtype`).

`save` writes the published layout (a sincos_2d model's as its learned table), and refuses a
model whose function the layout cannot state (the official code assumes tanh GELU, LayerNorm
eps 1e-6 and inputs x / 127.5 - 1).
"""
from __future__ import annotations

import os
import re
import zipfile
import zlib
from typing import Optional, Sequence

import numpy as np

from vit.errors import UserError, require_file
from vit.formats.tree import (TABLE_POSEMBS, Params, Read, as_learned_1d, check_finite,
                              check_floating, class_row_posemb, flatten, floating, posemb,
                              square_grid, unflatten)
from vit.models.spec import ModelSpec


SUFFIX = '.npz'  # save writes one file (vit.formats.registry.Format).
_PUBLISHED = ('LayerNorm_0', 'MultiHeadDotProductAttention_1', 'LayerNorm_2', 'MlpBlock_3')
_TODAY = ('LayerNorm_0', 'MultiHeadDotProductAttention_0', 'LayerNorm_1', 'MlpBlock_0')
_ROOTS = ('', 'params/', 'params/img/', 'img/', 'opt/target/', 'opt/target/img/')


def _read_npz(path: str) -> dict[str, np.ndarray]:
  require_file(path, f'vit_jax:{path}', 'an .npz file of named parameters')
  with open(path, 'rb') as f:
    magic = f.read(6)
  if magic == b'\x93NUMPY':
    raise UserError(f'vit_jax:{path}: a single .npy array, not an .npz of named parameters')
  if not magic.startswith(b'PK'):
    raise UserError(f'vit_jax:{path}: not a readable .npz file (no zip header)')
  try:
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  # zlib.error: a damaged member of an np.savez_compressed file (stored ones fail their CRC).
  # NotImplementedError: a compression zipfile cannot read (Deflate64); RuntimeError: one whose
  # module (bz2, lzma) this Python lacks. MemoryError: a damaged header's shape, allocated whole.
  except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError,
          MemoryError) as e:
    raise UserError(f'vit_jax:{path}: not a readable .npz file ({e})') from None
  except ValueError as e:  # Object arrays need pickle: refused; else a damaged .npy header.
    if 'allow_pickle' in str(e):
      raise UserError(f'vit_jax:{path}: holds pickled objects, which are never loaded ({e})'
                      ) from None
    raise UserError(f'vit_jax:{path}: not a readable .npz file ({e})') from None


def _float32(a: np.ndarray) -> np.ndarray:
  a = floating(a)  # bfloat16 saved by np.savez is 2-byte void.
  return a.astype(np.float32) if a.dtype != np.float32 else a


def _root(path: str, flat: dict) -> str:
  roots = [r for r in _ROOTS if f'{r}embedding/kernel' in flat]
  if not roots:
    raise UserError(f'vit_jax:{path}: no "embedding/kernel" array (also looked under '
                    f'{", ".join(r for r in _ROOTS if r)}); not an official ViT checkpoint '
                    f'(first keys: {", ".join(sorted(flat)[:5])})')
  return roots[0]


def _unstack(path: str, t: dict) -> None:
  """big_vision's scanned encoder: one `encoderblock` whose arrays lead with the depth."""
  stacked = t.pop('encoderblock')
  depths = {a.shape[0] for a in flatten(stacked).values()}
  if len(depths) != 1:
    raise UserError(f'vit_jax:{path}: Transformer/encoderblock arrays disagree on the depth '
                    f'axis ({sorted(depths)})')
  for i in range(depths.pop()):
    t[f'encoderblock_{i}'] = unflatten({k: v[i] for k, v in flatten(stacked).items()})


def _rename_block(path: str, name: str, block: dict) -> dict:
  names = tuple(sorted(block))
  if names == tuple(sorted(_PUBLISHED)):
    return block
  if names == tuple(sorted(_TODAY)):
    return {new: block[old] for old, new in zip(_TODAY, _PUBLISHED)}
  raise UserError(f'vit_jax:{path}: Transformer/{name} holds {", ".join(names)}; a ViT block '
                  f'holds {", ".join(_PUBLISHED)} (or {", ".join(_TODAY)})')


def _position_embedding(path: str, params: dict) -> str:
  """Moves the position embedding to `Transformer/posembed_input`, over 1 + N tokens when
  the model has a class token; the model's posemb: 'learned_1d', or 'sincos_2d' for a file
  without one (big_vision's `posemb="sincos2d"` computes it and saves no parameter)."""
  t = params['Transformer']
  if 'posembed_input' in t:
    return 'learned_1d'
  pe = params.pop('pos_embedding', None)
  pe = t.pop('pos_embedding', None) if pe is None else pe
  if pe is None:
    return 'sincos_2d'
  has_cls = 'cls' in params
  if has_cls and square_grid(pe.shape[1] - 1) and not square_grid(pe.shape[1]):
    t['posembed_input'] = {'pos_embedding': pe}  # big_vision's older combined cls + patches.
  elif square_grid(pe.shape[1]):
    t['posembed_input'] = {'pos_embedding': class_row_posemb(pe, has_cls)}
  else:
    raise UserError(f'vit_jax:{path}: pos_embedding has {pe.shape[1]} entries, not a square '
                    f'grid of patches (non-square position grids are not supported)')
  return 'learned_1d'


def _sized(path: str) -> tuple[str, Optional[int]]:
  """`FILE.npz@SIZE` as (FILE.npz, SIZE); (path, None) without the suffix, or for a file
  whose name itself ends so. UserError for a suffix that is no size (`@0`, `@-1`, `@abc`
  after an existing file), which would otherwise read as size 0 or as a missing file."""
  if os.path.exists(path):
    return path, None
  match = re.fullmatch(r'(.+)@(\d+)', path)
  if match is not None and int(match[2]) > 0:
    return match[1], int(match[2])
  head, _, tail = path.rpartition('@')
  if head and '/' not in tail and (match is not None or os.path.isfile(head)):
    raise UserError(f'vit_jax:{path}: @{tail} is not an image size; give the size in pixels '
                    f'per side after the file name, vit_jax:{head}@SIZE (e.g. @224)')
  return path, None


def load(path: str) -> Read:
  """The official parameter tree of a ViT .npz in any layout above (never unpickles), and
  for a file without position embeddings (big_vision's sincos2d) `stated` posemb sincos_2d
  and the image size `path`'s `@SIZE` gives (None without one).

  Raises UserError naming the file and what is unsupported (MAP-head pooling, a non-square
  grid, unknown block modules), and for `@SIZE` on a file with a learned table.
  """
  path, size = _sized(path)
  flat = _read_npz(path)
  check_finite(flat, f'vit_jax:{path}')
  root = _root(path, flat)
  # Only the model's arrays: a big_vision file's optimiser state holds integer step counts.
  check_floating({k: v for k, v in flat.items() if k.startswith(root)}, f'vit_jax:{path}')
  params = unflatten({k[len(root):]: _float32(v) for k, v in flat.items()
                      if k.startswith(root)})
  if 'MAPHead_0' in params:
    raise UserError(f'vit_jax:{path}: pools with a MAP head (MAPHead_0, big_vision '
                    f'pool_type="map"), which this ViT does not have')
  t = params.get('Transformer')
  if not isinstance(t, dict):
    raise UserError(f'vit_jax:{path}: no Transformer/ arrays; not a ViT checkpoint')
  if 'encoderblock' in t:
    _unstack(path, t)
  for name in [k for k in t if re.fullmatch(r'encoderblock_\d+', k)]:
    t[name] = _rename_block(path, name, t[name])
  if _position_embedding(path, params) == 'learned_1d':
    if size is not None:  # Its table's grid is its size; prediction flags pick another.
      raise UserError(f'vit_jax:{path}@{size}: @{size} gives the image size of a file without '
                      f'position embeddings (big_vision posemb="sincos2d"); this file\'s '
                      f'learned ones give its own: drop @{size}')
    return Read(params, {})
  # big_vision's posemb_sincos_2d is `vit.models.vit.sincos_2d`, added before the class token
  # is concatenated (none for it), as model.posemb='sincos_2d' adds it. Without @SIZE the
  # size is the reading command's (vit.init_spec.load's image_size), or it is refused there.
  return Read(params, {'posemb': 'sincos_2d'}, image_size=size)


# What the official code assumes where the .npz states nothing (models_vit.py, input_pipeline).
# key: (what the layout implies, how a model's other value is named, what readers assume).
_IMPLIED = {'gelu_approximate': (True, lambda v: 'exact (erf) GELU', 'tanh GELU'),
            'layer_norm_epsilon': (1e-6, lambda v: f'LayerNorm epsilon {v:g}',
                                   'LayerNorm epsilon 1e-6'),
            'pixels': (None, lambda v: f'input normalisation (x * {v.rescale:.6g} - mean '
                                       f'{list(v.mean)}) / std {list(v.std)}',
                       'inputs x / 127.5 - 1'),
            'posemb': ('learned_1d', lambda v: f'posemb {v}', 'a learned 1D position table'),
            'attention': ('global', lambda v: f'{v} attention', 'global attention')}


def check_expressible(params: Params, model: Optional[ModelSpec]) -> None:
  """UserError naming what an official-layout .npz of `model` could not hold (the tree itself
  it holds whole). `model`: the resolved model (None: the official defaults). Which other
  formats hold it is `vit.formats.registry.check_expressible`'s to say."""
  values = {key: getattr(model, key) if model else implied
            for key, (implied, _, _) in _IMPLIED.items()}
  # Readers refuse a tree without the learned 1D table; `save` writes the other kinds as one.
  kind = posemb(params, model)
  values['posemb'] = 'learned_1d' if kind in TABLE_POSEMBS else kind
  lost = [(describe(values[key]), assumed) for key, (implied, describe, assumed)
          in _IMPLIED.items() if values[key] != implied]
  if lost:
    held, assumed = zip(*lost)
    raise UserError(f'--format vit_jax: the .npz layout cannot hold {", ".join(held)} (its '
                    f'readers assume {", ".join(assumed)}), so the logits would change')


def save(params: Params, out: str, model: Optional[ModelSpec] = None, *,
         class_names: Optional[Sequence[str]] = None, image_size: Optional[int] = None,
         view: Optional[dict] = None) -> None:
  """Writes the published .npz layout to the file `out` (the inverse of `load` for that
  layout).

  With `model` (the resolved model, a ModelSpec), refuses one the layout cannot express
  (`check_expressible`), and writes learned_2d, sincos_2d and none position embeddings as the
  learned 1D table at the model's grid (`image_size`'s for the last two), with a one-line
  warning of what a reader then does differently (`as_learned_1d`). The .npz holds
  parameters only: `class_names`, `image_size` and `view` have no place in it (readers take
  the size from the position embeddings).
  """
  del class_names, view
  check_expressible(params, model)
  params = as_learned_1d(params, model, image_size, '--format vit_jax')
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, 'wb') as f:  # A file object keeps numpy from appending '.npz' to the name.
    np.savez(f, **{k: np.asarray(v) for k, v in flatten(params).items()})
