"""The official ViT parameter tree: flat '/'-joined names, and what every reader shares."""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional

import ml_dtypes
import numpy as np

from vit.errors import UserError
from vit.models.spec import ModelSpec, Pixels

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


def posemb(params: Params, model: Optional[ModelSpec]) -> str:
  """The model's `posemb` as a format's refusal names it: `model.posemb` (None: the official
  'learned_1d') while the tree holds the learned 1D table (`POSEMB`), else what the tree shows
  instead, the missing table named: 'learned_2d (...)' (row and column tables), 'relative (...)'
  (relposemb_*), 'sincos_2d or none (...)' (no position parameters; the model's own posemb
  where `model` names one other than learned_1d). A tree without the table is never taken for
  learned_1d, so a writer refuses it in one line instead of failing on the missing tensor."""
  t = params.get('Transformer', {})
  pos = t.get('posembed_input', {})
  if 'pos_embedding' in pos:
    return model.posemb if model else 'learned_1d'
  if model is not None and model.posemb not in (None, 'learned_1d'):
    return f'{model.posemb} (no {POSEMB})'  # A saved run's config says which.
  shown = ('learned_2d' if 'pos_embedding_row' in pos else
           'relative' if any(k.startswith('relposemb_') for k in t) else 'sincos_2d or none')
  return f'{shown} (no {POSEMB})'


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
