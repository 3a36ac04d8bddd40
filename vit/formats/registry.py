"""The published checkpoint formats by name, and the contract every format module keeps.

`FORMATS` maps a format's name (`--format NAME` of `vit.export`, `NAME:PATH` of an init spec)
to its module; `vit.export` and `vit.init_spec` look formats up here and nowhere else, so a new
format is one module that keeps `Format` and one entry below.
"""
from __future__ import annotations

from typing import Optional, Protocol, Sequence

from vit.errors import UserError
from vit.formats import hf, timm, vit_jax
from vit.formats.tree import Params, Read
from vit.models.spec import ModelSpec


class Format(Protocol):
  """What a format module defines (`vit/formats/vit_jax.py`, `hf.py`, `timm.py`).

  `SUFFIX`: the suffix of the one file `save` writes ('.npz'); None when it writes a
  directory (whose other files it leaves alone).
  """
  SUFFIX: Optional[str]

  def load(self, path: str) -> Read:
    """The official tree (float32 numpy) and what the files state; UserError naming `path`
    for anything the format cannot read."""

  def check_expressible(self, params: Params, model: Optional[ModelSpec]) -> None:
    """UserError ('--format NAME: ...', one line) naming what the format cannot hold of this
    tree and resolved model (None: the official defaults) without changing its logits; not
    which other format would (`check_expressible` below says that)."""

  def save(self, params: Params, out: str, model: Optional[ModelSpec] = None, *,
           class_names: Optional[Sequence[str]] = None, image_size: Optional[int] = None,
           view: Optional[dict] = None) -> None:
    """Writes `params` (the official tree) at `out` so that `load` reads it back bitwise
    (a learned_2d, sincos_2d or none position embedding as the learned 1D table it adds at
    the model's grid, with a one-line warning: `tree.as_learned_1d`); `check_expressible`
    first. What the format cannot state of `class_names`, `image_size` (pixels per side; the
    grid of sincos_2d and none) and `view` (EvalView's fields) is left out."""


FORMATS: dict[str, Format] = {'vit_jax': vit_jax, 'hf': hf, 'timm': timm}


def check_expressible(name: str, params: Params, model: Optional[ModelSpec]) -> None:
  """FORMATS[name].check_expressible, its one-line refusal ending with the formats that do
  hold the model ('; export with --format hf or timm'), only those whose own check accepts
  it, or saying that none does. A format knows what it cannot hold; only here are the others
  known (each suggested its favourite before, which could refuse the model too)."""
  try:
    FORMATS[name].check_expressible(params, model)
  except UserError as e:
    others = [other for other in FORMATS if other != name]
    holders = [other for other in others if _holds(FORMATS[other], params, model)]
    raise UserError(f'{e}; ' + (f'export with --format {" or ".join(holders)}' if holders else
                                f'no other format ({", ".join(others)}) holds it either')
                    ) from None


def _holds(fmt: Format, params: Params, model: Optional[ModelSpec]) -> bool:
  try:
    fmt.check_expressible(params, model)
  except UserError:
    return False
  return True
