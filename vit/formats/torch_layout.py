"""The layouts of torch modules against flax's, as (transform, inverse) pairs for table rows.

Shared by the formats whose weights come from torch (`hf`, `timm`): nn.Linear weights are
[out, in] where flax Dense kernels are [in, out]; nn.Conv2d weights are OIHW where flax's are
HWIO; the attention projections are plain Linears where the official ViT's are DenseGeneral
over the heads (`query`/`key`/`value` kernels [D, H, D / H] and biases [H, D / H], `out`
kernel [H, D / H, D]; vision_transformer's `models_vit.py`). Every pair is exact (transposes
and reshapes only), so a round trip is bitwise. Unpacked into a row:
`Row('head/kernel', 'head.weight', *LINEAR)`.
"""
from __future__ import annotations

import numpy as np

LINEAR = (lambda x, d: x.T, lambda x, d: x.T)
CONV = (lambda x, d: x.transpose(2, 3, 1, 0), lambda x, d: x.transpose(3, 2, 0, 1))
# A q, k or v Linear [H * D/H, D] <-> DenseGeneral kernel [D, H, D/H], and its bias.
HEADS_IN = (lambda x, d: x.T.reshape(d.width, d.heads, d.head_dim),
            lambda x, d: x.reshape(d.width, d.heads * d.head_dim).T)
HEADS_BIAS = (lambda x, d: x.reshape(d.heads, d.head_dim), lambda x, d: x.reshape(-1))
# The output projection [D, H * D/H] <-> DenseGeneral kernel [H, D/H, D].
HEADS_OUT = (lambda x, d: x.T.reshape(d.heads, d.head_dim, d.width),
             lambda x, d: x.reshape(d.heads * d.head_dim, d.width).T)


def fused(pair, parts: int = 3):
  """`pair` applied to each of `parts` tensors stacked along the first axis of one (timm's qkv
  Linear: q, k and v weights [3D, D] and biases [3D])."""
  transform, inverse = pair
  return (lambda x, d: tuple(transform(p, d) for p in np.split(x, parts)),
          lambda xs, d: np.concatenate([inverse(x, d) for x in xs]))


def zeros(size: int):
  """A `default` for a bias the file may leave out (`qkv_bias=False`): `size` widths of 0."""
  return lambda d: np.zeros(size * d.width, np.float32)
