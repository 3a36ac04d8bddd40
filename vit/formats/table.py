"""A checkpoint format as one table: its reader and its writer both follow from the rows.

A `Row` pairs official parameter paths ('/'-joined, as in `vit/models/vit.py`) with the
format's tensor name, and gives the transform from the format's layout to the official one
and its inverse. `read` and `write` walk the same rows, so the two directions agree by
construction (timm's `_load_weights` and big_vision's `fix_old_checkpoints` each do one
direction by hand). '{i}' in a row stands for an encoder block's index: a run of such rows is
repeated for each block, in order, so that the tree read has the official order of keys.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, NamedTuple, Optional, Union

import numpy as np

from vit.errors import UserError
from vit.formats.tree import Params, flatten, unflatten


class Dims(NamedTuple):
  """What a transform needs beyond its array: the width D and the attention heads H."""
  width: int
  heads: int

  @property
  def head_dim(self) -> int:
    return self.width // self.heads

  @classmethod
  def of(cls, params: Params) -> 'Dims':
    """Those of an official tree: its first query kernel is [D, H, D / H]."""
    width, heads, _ = params['Transformer']['encoderblock_0'][
        'MultiHeadDotProductAttention_1']['query']['kernel'].shape
    return cls(int(width), int(heads))


# transform(array, dims) -> array: the format's layout to the official one; its inverse the
# way back. A row of several official paths fuses them: its transform returns a tuple in their
# order and its inverse takes that tuple.
Transform = Callable[[Any, Dims], Any]


def same(x, dims: Dims):
  """The identity: a tensor stored in the official layout."""
  del dims
  return x


class Row(NamedTuple):
  """One tensor of a format: its official path(s), its name in the format, the transform from
  the format's layout to the official one and its inverse.

  `when` names the format's tensor whose presence means the row's optional layer is there (a
  classifier, a pooler): without it, reading skips the row, and writing skips it when the
  official tree lacks the path. `default(dims)` gives the format's array for a tensor the file
  may leave out (the zero q/k/v biases of `qkv_bias=False`)."""
  official: Union[str, tuple[str, ...]]
  foreign: str
  transform: Transform = same
  inverse: Transform = same
  when: Optional[str] = None
  default: Optional[Callable[[Dims], np.ndarray]] = None


def expand(rows: Iterable[Row], blocks: Iterable[int]) -> list[Row]:
  """The rows with '{i}' repeated for each block index, each run of block rows kept together
  (block 0's rows, then block 1's, ...)."""
  blocks, out, run = list(blocks), [], []

  def flush():
    out.extend(_at(r, i) for i in blocks for r in run)
    run.clear()

  for row in rows:
    if '{i}' in row.foreign:
      run.append(row)
    else:
      flush()
      out.append(row)
  flush()
  return out


def _at(row: Row, i: int) -> Row:
  paths = row.official if isinstance(row.official, tuple) else (row.official,)
  paths = tuple(p.replace('{i}', str(i)) for p in paths)
  return row._replace(official=paths if isinstance(row.official, tuple) else paths[0],
                      foreign=row.foreign.replace('{i}', str(i)),
                      when=row.when and row.when.replace('{i}', str(i)))


def names(rows: Iterable[Row], blocks: Iterable[int]) -> set[str]:
  """Every tensor name the format may hold for these blocks."""
  return {r.foreign for r in expand(rows, blocks)}


def read(rows: Iterable[Row], tensors: dict[str, np.ndarray], blocks: Iterable[int],
         dims: Dims, missing: Callable[[str], str]) -> Params:
  """The official tree of a format's `tensors` (name -> array); tensors no row names are left
  out. Raises UserError(missing(name)) for the first required tensor the file lacks."""
  flat = {}
  for row in expand(rows, blocks):
    if row.when and row.when not in tensors:
      continue
    if row.foreign in tensors:
      value = tensors[row.foreign]
    elif row.default is not None:
      value = row.default(dims)
    else:
      raise UserError(missing(row.foreign))
    out = row.transform(value, dims)
    if isinstance(row.official, tuple):
      flat.update(zip(row.official, out))
    else:
      flat[row.official] = out
  return unflatten(flat)


def write(rows: Iterable[Row], params: Params, blocks: Iterable[int],
          dims: Dims) -> dict[str, np.ndarray]:
  """The format's tensors (name -> array) of an official tree: the inverse of `read`.

  Official parameters no row names are not written; the writer refuses such models first
  (`check_expressible`)."""
  flat = flatten(params)
  out = {}
  for row in expand(rows, blocks):
    paths = row.official if isinstance(row.official, tuple) else (row.official,)
    if row.when and paths[0] not in flat:
      continue
    values = tuple(np.asarray(flat[p]) for p in paths)
    out[row.foreign] = row.inverse(values if isinstance(row.official, tuple) else values[0],
                                   dims)
  return out


def block_count(params: Params) -> int:
  """How many `encoderblock_{i}` an official tree has."""
  return sum(1 for k in params['Transformer'] if re.fullmatch(r'encoderblock_\d+', k))
