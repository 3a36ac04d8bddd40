"""BiT ResNet (weight-standardised convolutions + GroupNorm) as the stem of the R+ViT hybrid.

As in the official `models_resnet.py`: for R50+ViT-B/16 the ResNet-50's stage 4 is removed and
stage 3 holds 9 units instead of 6 (paper §3.1, Appendix D.2), so the feature map has stride 16
and ViT then uses 1x1 patches on it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
  """The hybrid's ResNet: units per stage, and the multiplier of its 64 root channels."""
  num_layers: Sequence[int]  # Units per stage; the official hybrid uses (3, 4, 9).
  width_factor: float = 1.0


def total_stride(config: ResNetConfig) -> int:
  """Root conv (2) x max pool (2) x one stride-2 stage transition per stage after the first."""
  return 4 * 2 ** max(len(config.num_layers) - 1, 0)


def weight_standardize(w: jax.Array, axis, eps: float) -> jax.Array:
  """The kernel `w` minus its mean, divided by its std + `eps`, both over `axis` (BiT's weight
  standardisation; StdConv reduces [0, 1, 2], all but the output axis of an HWIO kernel). No
  keepdims: the reduced axes must be the leading ones."""
  w = w - jnp.mean(w, axis=axis)
  return w / (jnp.std(w, axis=axis) + eps)


class StdConv(nn.Conv):
  """Conv whose kernel is standardised on the fly (BiT, Kolesnikov et al. 2020)."""

  def param(self, name, *args, **kwargs):
    param = super().param(name, *args, **kwargs)
    if name == 'kernel':
      param = weight_standardize(param, axis=[0, 1, 2], eps=1e-5)
    return param


class ResidualUnit(nn.Module):
  """Bottleneck unit: 1x1 -> 3x3 (strided) -> 1x1 with 4x expansion, pre-activation-free."""
  features: int
  strides: Sequence[int] = (1, 1)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda f, k, s, name: StdConv(f, k, s, use_bias=False, dtype=self.dtype, name=name)
    gn = lambda name, **kw: nn.GroupNorm(dtype=self.dtype, name=name, **kw)
    residual = x
    if x.shape[-1] != self.features * 4 or tuple(self.strides) != (1, 1):
      residual = gn('gn_proj')(conv(self.features * 4, (1, 1), self.strides, 'conv_proj')(x))
    y = nn.relu(gn('gn1')(conv(self.features, (1, 1), (1, 1), 'conv1')(x)))
    y = nn.relu(gn('gn2')(conv(self.features, (3, 3), self.strides, 'conv2')(y)))
    # Zero-initialised last norm: each unit starts as the identity (BiT).
    y = gn('gn3', scale_init=nn.initializers.zeros)(conv(self.features * 4, (1, 1), (1, 1),
                                                         'conv3')(y))
    return nn.relu(residual + y)


class ResNetStage(nn.Module):
  """`block_size` bottleneck units of `nout` features (4 * `nout` out), the first with
  `first_stride`, named unit1, unit2, ... as in the official checkpoints."""
  block_size: int
  nout: int
  first_stride: Sequence[int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = ResidualUnit(self.nout, self.first_stride, self.dtype, name='unit1')(x)
    for i in range(1, self.block_size):
      x = ResidualUnit(self.nout, (1, 1), self.dtype, name=f'unit{i + 1}')(x)
    return x


def stem(x: jax.Array, config: ResNetConfig, dtype) -> jax.Array:
  """The ResNet part of the hybrid; call it inside the ViT's compact `__call__`."""
  width = int(64 * config.width_factor)
  x = StdConv(width, (7, 7), (2, 2), use_bias=False, dtype=dtype, name='conv_root')(x)
  x = nn.relu(nn.GroupNorm(dtype=dtype, name='gn_root')(x))
  x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
  for i, block_size in enumerate(config.num_layers):
    x = ResNetStage(block_size, width * 2 ** i, (1, 1) if i == 0 else (2, 2), dtype,
                    name=f'block{i + 1}')(x)
  return x
