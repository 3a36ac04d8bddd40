"""LayerNorm (Ba et al., 2016) whose reductions over the features are matrix-vector products.

The parameters, their names (`scale`, `bias`) and the arithmetic are `flax.linen.LayerNorm`'s
(float32 statistics, var = E[x^2] - E[x]^2 clipped at 0, as its default `use_fast_variance`),
so checkpoints and numbers do not change (tests/test_models.py: outputs and gradients within
1e-5). What changes is how XLA's CPU backend runs it: a reduction over 64 or 192 features is
rewritten into a reduce-window of 32 plus a reduce (XLA's tree-reduction pass, for accuracy),
and that pair ran ~17% of a small ViT's step (small-32 profile, docs/performance.md). Written
as x @ (1/D), the mean is a matrix-vector dot; the backward pass, written out here, needs only
dots as well (the row sums of the parameter gradients included). Other backends keep flax's
reductions, which they fuse well.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def _mean_last(x: Array) -> Array:
  """Mean over the last axis as a dot with a constant vector: [..., D] -> [...]."""
  return x @ jnp.full((x.shape[-1],), 1.0 / x.shape[-1], x.dtype)


def _normalise(x: Array, epsilon: float, mean_last=_mean_last) -> tuple[Array, Array]:
  mean = mean_last(x)
  var = jnp.maximum(mean_last(x * x) - mean * mean, 0.0)
  rstd = jax.lax.rsqrt(var + epsilon)
  return (x - mean[..., None]) * rstd[..., None], rstd


@jax.custom_vjp
def layer_norm_dots(x: Array, scale: Array, bias: Array, epsilon: float) -> Array:
  """float32 x [..., D], scale and bias [D] -> [..., D]; the means are dots (see module)."""
  return _normalise(x, epsilon)[0] * scale + bias


def _forward(x, scale, bias, epsilon):
  return layer_norm_dots(x, scale, bias, epsilon), (x, scale, epsilon)


def _backward(saved, dy):
  x, scale, epsilon = saved
  x_hat, rstd = _normalise(x, epsilon)  # Recomputed: keeps x alone alive between the passes.
  g = dy * scale
  # d/dx of (x - mean) * rstd: the standard LayerNorm gradient, its two means as dots.
  dx = rstd[..., None] * (g - _mean_last(g)[..., None]
                          - x_hat * _mean_last(g * x_hat)[..., None])
  width = x.shape[-1]
  rows = jnp.ones((x.size // width,), x.dtype)
  d_scale = rows @ (dy * x_hat).reshape(-1, width)
  d_bias = rows @ dy.reshape(-1, width)
  return dx, d_scale, d_bias, None


layer_norm_dots.defvjp(_forward, _backward)


IMPLEMENTATIONS = ('dots', 'reduce')


def implementation_for(platform: str) -> str:
  """The faster implementation on `platform` ('cpu', 'gpu', 'tpu'): dots on CPU only."""
  return 'dots' if platform == 'cpu' else 'reduce'


class LayerNorm(nn.Module):
  """`flax.linen.LayerNorm` over the last axis, same parameters; reductions as dots on CPU.

  x: [..., D] of any float dtype; statistics in float32; returns `dtype`. `implementation`:
  'dots' (the means as matrix-vector products, see the module), 'reduce' (flax's reductions),
  or None: the one for the platform this process runs on (`implementation_for`). A program
  compiled for another platform (vit.plan for a TPU on a CPU host) names it.
  """
  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scale_init: Callable = nn.initializers.ones
  bias_init: Callable = nn.initializers.zeros
  implementation: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = x.shape[-1]
    scale = self.param('scale', self.scale_init, (width,), self.param_dtype)
    bias = self.param('bias', self.bias_init, (width,), self.param_dtype)
    x, scale, bias = (a.astype(jnp.float32) for a in (x, scale, bias))
    implementation = self.implementation or implementation_for(jax.default_backend())
    if implementation not in IMPLEMENTATIONS:
      raise ValueError(f'model.layer_norm={implementation!r}: must be one of auto, '
                       f'{", ".join(IMPLEMENTATIONS)}')
    if implementation == 'dots':
      y = layer_norm_dots(x, scale, bias, self.epsilon)
    else:  # Fused reductions are fast there: flax's own arithmetic, differentiated by JAX.
      y = _normalise(x, self.epsilon, lambda a: jnp.mean(a, axis=-1))[0] * scale + bias
    return y.astype(self.dtype)
