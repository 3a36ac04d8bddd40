"""The official ViT parameter tree: flat '/'-joined names, and what every reader shares."""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional

import ml_dtypes
import numpy as np

from vit.errors import UserError
from vit.models.spec import ModelSpec, Pixels
from vit.models.vit import learned_2d_table, patch_grid, sincos_2d

logger = logging.getLogger(__name__)

Params = dict[str, Any]

# (x * rescale - mean) / std of the official models: x / 127.5 - 1 (vit_jax's input_pipeline).
OFFICIAL_PIXELS = Pixels(rescale=1 / 255, mean=(0.5,), std=(0.5,))


class Read(NamedTuple):
  """What a reader found: `params` (official tree, float32 numpy), `stated` (vit.config model
  keys the files state and shapes cannot tell: GELU flavour, LayerNorm epsilon, pixels),
  `class_names` and `image_size` (pixels per side) when the files give them, and `view`, the
  evaluation view the files state beyond a plain resize to `image_size` (timm's crop_pct,
  interpolation and crop_mode: `vit.data.transforms.EvalView`'s fields)."""
  params: Params
  stated: dict
  class_names: Optional[list[str]] = None
  image_size: Optional[int] = None
  view: Optional[dict] = None


def flatten(params: Params, prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x}, the key layout of the official .npz files."""
  out = {}
  for key, value in params.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, f'{prefix}{key}/'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def unflatten(flat: dict[str, Any]) -> Params:
  """The inverse of `flatten`."""
  tree: Params = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split('/')
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def pixels(rescale: float, mean, std, channels: int) -> Optional[dict]:
  """The model's `pixels` key for inputs (x * rescale - mean) / std, x the uint8 values.

  None when that is the official x / 127.5 - 1 (to float32 rounding), so that such a model
  stays exportable to layouts that cannot state a normalisation. Means and stds have one entry
  per channel (one entry is broadcast). Raises ValueError for lengths that fit no channel count,
  a std of 0 or a value that is not finite.
  """
  mean = [float(v) for v in np.atleast_1d(mean)]
  std = [float(v) for v in np.atleast_1d(std)]
  for name, values in (('mean', mean), ('std', std)):
    if len(values) not in (1, channels):
      raise ValueError(f'{len(values)} {name} values for {channels}-channel images')
  if any(s == 0 for s in std):
    raise ValueError('a std of 0')
  if not all(np.isfinite([rescale, *mean, *std])):  # JSON readers take NaN and Infinity.
    raise ValueError(f'a value that is not finite (rescale {rescale}, mean {mean}, std {std})')
  if (abs(rescale - OFFICIAL_PIXELS.rescale) < 1e-12 and set(mean) == {0.5}
      and set(std) == {0.5}):
    return None
  return dict(rescale=float(rescale), mean=tuple(mean), std=tuple(std))


def class_row_posemb(posemb: np.ndarray, has_cls: bool) -> np.ndarray:
  """A position embedding over the patches only ([1, N, D], big_vision and timm's
  `no_embed_class`: the class token gets none) as the official [1, 1 + N, D] one: the class
  token's row is zero, which computes the same function."""
  if not has_cls:
    return posemb
  return np.concatenate([np.zeros_like(posemb[:, :1]), posemb], axis=1)


def square_grid(tokens: int) -> Optional[int]:
  """The side of a square grid of `tokens` patches, or None."""
  side = int(round(np.sqrt(tokens)))
  return side if side * side == tokens else None


POSEMB = 'Transformer/posembed_input/pos_embedding'  # The learned 1D table every format names.
# The posembs every format holds: the learned 1D table itself, or one `as_learned_1d` writes as
# that table (exactly, at the model's own grid). Relative biases are no per-token table.
TABLE_POSEMBS = ('learned_1d', 'learned_2d', 'sincos_2d', 'none')
# What a tree of each posemb holds under Transformer/ (as `posemb` tells them apart).
_HELD = {'learned_1d': 'learned_1d', 'learned_2d': 'learned_2d', 'relative': 'relative',
         'sincos_2d': 'sincos_2d or none', 'none': 'sincos_2d or none'}


def posemb(params: Params, model: Optional[ModelSpec]) -> str:
  """The model's `posemb` as a format's check takes it: `model.posemb` (None: the official
  'learned_1d') while the tree holds that kind's parameters (the learned 1D table `POSEMB`;
  row and column tables; relposemb_*; none for sincos_2d and none), else a description that
  is no posemb and names the mismatch, which every format refuses in one line. Without
  `model`, a tree without the learned 1D table is named by what it shows instead, the table
  named missing: 'learned_2d (...)', 'relative (...)', 'sincos_2d or none (...)': only the
  model's config says how to write such a tree as the table (`as_learned_1d`)."""
  t = params.get('Transformer', {})
  pos = t.get('posembed_input', {})
  shown = ('learned_1d' if 'pos_embedding' in pos else
           'learned_2d' if 'pos_embedding_row' in pos else
           'relative' if any(k.startswith('relposemb_') for k in t) else 'sincos_2d or none')
  if model is None:
    return shown if shown == 'learned_1d' else f'{shown} (no {POSEMB})'
  if _HELD.get(model.posemb) == shown:
    return model.posemb
  return f'{model.posemb} (but the parameters are of {shown})'


def as_learned_1d(params: Params, model: Optional[ModelSpec], image_size: Optional[int],
                  fmt: str) -> Params:
  """`params` with the model's position embedding as the learned 1D table every format writes
  (`POSEMB`: float32 [1, prefix + gh * gw, D], the prefix the class token; a learned_1d tree
  is returned as it is). Any other posemb is logged as one warning line, '{fmt}: posemb ...
  is written as ...', that says what a reader then does differently. The table adds what the
  model adds at its own grid, so the export computes the same function there: learned_2d's
  patch (r, c) gets its row's and its column's halves concatenated and the class token its
  own entry (`AddPositionEmbs2D`); sincos_2d the fixed table, zero for the class token, and
  none zeros (`Encoder`). The grid is the row and column tables' for learned_2d, else that of
  `image_size` (pixels per side, the model's). Call it after the format's
  `check_expressible`. UserError '{fmt}: ...' without `image_size` where it is needed, and
  for a grid that is not square (every format's reader takes the table's grid for square)."""
  kind = model.posemb if model else 'learned_1d'
  if kind == 'learned_1d':
    return params
  t, width = params['Transformer'], int(params['embedding']['kernel'].shape[-1])
  prefix = 1 if 'cls' in params else 0
  if kind == 'learned_2d':
    pos = t['posembed_input']
    row, col = (np.asarray(pos[f'pos_embedding_{k}'], np.float32) for k in ('row', 'col'))
    gh, gw = row.shape[0], col.shape[0]
    patches = np.asarray(learned_2d_table(row, col), np.float32)
    first = np.asarray(pos.get('pos_embedding_prefix', np.zeros((0, width))), np.float32)
    if first.shape[0] != prefix:
      raise UserError(f'{fmt}: posemb learned_2d with {first.shape[0]} prefix entries '
                      f'(pos_embedding_prefix), a model {"with" if prefix else "without"} a '
                      'class token')
  elif kind in ('sincos_2d', 'none'):
    if image_size is None:
      raise UserError(f'{fmt}: posemb {kind} has no parameters to give the patch grid; the '
                      f'image size the model runs at is needed to write its table')
    gh, gw = patch_grid((image_size, image_size), model.patch_size, model.resnet)
    patches = (sincos_2d((gh, gw), width) if kind == 'sincos_2d' else
               np.zeros((gh * gw, width), np.float32))
    first = np.zeros((prefix, width), np.float32)
  else:  # What `check_expressible` refuses: relative biases are no table of tokens.
    raise UserError(f'{fmt}: posemb {kind} has no learned 1D table to write')
  if gh != gw:
    raise UserError(f'{fmt}: posemb {kind} at a {gh}x{gw} patch grid; the formats\' readers '
                    f'take the learned 1D table\'s grid for a square one')
  table = np.concatenate([first, patches])[None].astype(np.float32)
  out = dict(params, Transformer=dict(t, posembed_input={'pos_embedding': table}))
  grid = f'{gh}x{gw}'
  detail = {
      'learned_2d': f"(row and column halves concatenated; exact at grid {grid}; a reader "
                    f"fine-tunes each of its {gh * gw} patch entries on its own, not row and "
                    f"column tables)",
      'sincos_2d': f'(exact at grid {grid}; a reader fine-tunes it as learned, and resizing '
                   f'interpolates it rather than recomputing sin-cos)',
      'none': 'of zeros (exact at any grid; a reader fine-tunes it as learned, so the model '
              'gains position embeddings it did not have)'}[kind]
  logger.warning(f"{fmt}: posemb {kind} is written as the format's learned 1D table {detail}")
  return out


def input_pixels(model: Optional[ModelSpec]) -> Pixels:
  """The input normalisation of `model` (None: the official defaults): its `pixels`, else the
  official x / 127.5 - 1 (`OFFICIAL_PIXELS`)."""
  return (model.pixels if model else None) or OFFICIAL_PIXELS


def read_json_object(path: str, fmt: str) -> dict:
  """The JSON object in `path` (a checkpoint's config.json, index or processor file).

  Raises UserError '{fmt}:{path}: not valid JSON (...)' or '... not a JSON object'.
  """
  try:
    with open(path) as f:
      out = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f'{fmt}:{path}: not valid JSON ({e})') from None
  if not isinstance(out, dict):
    raise UserError(f'{fmt}:{path}: not a JSON object')
  return out


def floating(value) -> Optional[np.ndarray]:
  """`value` as an array of real floating-point numbers that numpy can test, bfloat16 and the
  float8 types included (big_vision's bfloat16, which np.savez stores as 2-byte void, viewed
  as bfloat16); None when its dtype is not real floating point (integers, booleans,
  complex)."""
  value = np.asarray(value)
  if value.dtype.kind == 'V' and value.dtype.itemsize == 2:
    value = value.view(ml_dtypes.bfloat16)
  if value.dtype.kind == 'c':
    return None
  try:
    ml_dtypes.finfo(value.dtype)  # numpy's own floats and ml_dtypes' (bfloat16, float8).
  except ValueError:
    return None
  return value


def check_floating(tensors: Mapping[str, Any], where: str) -> None:
  """UserError naming `where` (the file), the first tensor whose dtype is not real floating
  point and that dtype, when any is not: a weight read as integers (a header naming another
  dtype) would be cast to wrong values silently. `tensors` maps the file's names to arrays."""
  bad = [(name, np.asarray(value).dtype) for name, value in tensors.items()
         if floating(value) is None]
  if bad:
    (name, dtype), more = bad[0], f'; {len(bad) - 1} more tensors too' if len(bad) > 1 else ''
    raise UserError(f'{where}: tensor {name} is {dtype}, not floating point{more}; weights are '
                    f'floating-point numbers (a wrong dtype in the file, or not a weight), so '
                    f'they are not loaded')


def check_finite(tensors: Mapping[str, Any], where: str) -> None:
  """UserError naming `where` (the file), the first tensor with NaN or infinite values and the
  count, when any has some: such weights compute NaN logits (a float16 save whose values
  overflowed, a diverged run) and must not load silently. `tensors` maps the names the file
  uses (or '/'-joined tree paths) to arrays; every floating-point one is checked, bfloat16
  (also as an .npz's 2-byte void) and float8 included."""
  bad = []
  for name, value in tensors.items():
    value = floating(value)
    if value is not None:
      count = int(value.size - np.count_nonzero(np.isfinite(value)))
      if count:
        bad.append((name, count, value.size))
  if bad:
    name, count, size = bad[0]
    more = f'; {len(bad) - 1} more tensors too' if len(bad) > 1 else ''
    raise UserError(f'{where}: tensor {name} has {count} non-finite values (NaN or inf) of '
                    f'{size}{more}; the weights are damaged or overflowed their dtype (e.g. '
                    f'float16), so they are not loaded')
