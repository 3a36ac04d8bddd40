"""Vision Transformer (Dosovitskiy et al., 2021), as in the official `vit_jax/models_vit.py`.

Submodule names are the checkpoint format: `embedding`, `cls`, `Transformer/posembed_input`,
`Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2,
MlpBlock_3}`, `Transformer/encoder_norm`, `pre_logits`, `head`. Renaming one breaks every
published checkpoint, so names are given explicitly rather than left to linen's counters.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `kv`, ...); vit/sharding.py
maps them to mesh axes, so the model never names a mesh axis.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit.models import resnet

Array = jax.Array
Dtype = Any

# The official initialisers (models_vit.py): Xavier-uniform kernels, tiny-normal MLP biases,
# zero head so a fresh head starts from uniform logits (paper §3.1, fine-tuning).
_xavier = nn.initializers.xavier_uniform()
_mlp_bias = nn.initializers.normal(stddev=1e-6)


def _logical(init, names):
  return nn.with_logical_partitioning(init, names)


class AddPositionEmbs(nn.Module):
  """Learned 1D position embeddings (the paper's default, Appendix D.4)."""
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    shape = (1, x.shape[1], x.shape[2])
    pe = self.param('pos_embedding',
                    _logical(nn.initializers.normal(stddev=0.02), (None, 'tokens', 'embed')),
                    shape, self.param_dtype)
    return x + pe.astype(x.dtype)


class MlpBlock(nn.Module):
  mlp_dim: int
  dropout_rate: float = 0.1
  gelu_approximate: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    width = x.shape[-1]
    y = nn.Dense(self.mlp_dim, dtype=self.dtype, name='Dense_0',
                 kernel_init=_logical(_xavier, ('embed', 'mlp')),
                 bias_init=_logical(_mlp_bias, ('mlp',)))(x)
    # Official checkpoints use the tanh approximation; Hugging Face ViT uses the exact erf GELU.
    y = nn.gelu(y, approximate=self.gelu_approximate)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    y = nn.Dense(width, dtype=self.dtype, name='Dense_1',
                 kernel_init=_logical(_xavier, ('mlp', 'embed')),
                 bias_init=_logical(_mlp_bias, ('embed',)))(y)
    return nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)


def _qkv_projection(num_heads, head_dim, dtype, name):
  return nn.DenseGeneral((num_heads, head_dim), dtype=dtype, name=name,
                         kernel_init=_logical(_xavier, ('embed', 'heads', 'kv')),
                         bias_init=_logical(nn.initializers.zeros, ('heads', 'kv')))


class MultiHeadDotProductAttention(nn.Module):
  """Self-attention with the parameter layout of `flax.linen.MultiHeadDotProductAttention`.

  query/key/value kernels are [embed, heads, head_dim] and out is [heads, head_dim, embed], as
  in the official checkpoints. Written here rather than taken from linen so that the weights can
  be sown for inspection (§4.5) and the fused `jax.nn.dot_product_attention` used otherwise.
  """
  num_heads: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool,
               logits_bias: Optional[Array] = None) -> Array:
    width = x.shape[-1]
    head_dim = width // self.num_heads
    q, k, v = (_qkv_projection(self.num_heads, head_dim, self.dtype, n)(x)
               for n in ('query', 'key', 'value'))
    want_weights = self.is_mutable_collection('intermediates')
    use_dropout = not deterministic and self.dropout_rate > 0.0
    if want_weights or use_dropout:
      logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(head_dim).astype(q.dtype)
      if logits_bias is not None:
        logits = logits + logits_bias.astype(logits.dtype)
      weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
      self.sow('intermediates', 'attention_weights', weights)
      if use_dropout:
        # broadcast_dropout=False, as the official model.
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=False)
      y = jnp.einsum('bhqk,bkhd->bqhd', weights, v)
    else:
      bias = None if logits_bias is None else logits_bias.astype(q.dtype)
      y = jax.nn.dot_product_attention(q, k, v, bias=bias)
    out = nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, name='out',
                          kernel_init=_logical(_xavier, ('heads', 'kv', 'embed')),
                          bias_init=_logical(nn.initializers.zeros, ('embed',)))
    return out(y)


class Encoder1DBlock(nn.Module):
  """Pre-LayerNorm transformer block: LN -> MSA -> residual; LN -> MLP -> residual (Eq. 2-3)."""
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  gelu_approximate: bool = True
  layer_norm_epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool,
               logits_bias: Optional[Array] = None) -> Array:
    ln = lambda name: nn.LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype, name=name,
                                   scale_init=_logical(nn.initializers.ones, ('embed',)),
                                   bias_init=_logical(nn.initializers.zeros, ('embed',)))
    y = ln('LayerNorm_0')(x)
    y = MultiHeadDotProductAttention(self.num_heads, self.attention_dropout_rate, self.dtype,
                                     name='MultiHeadDotProductAttention_1')(
                                         y, deterministic=deterministic, logits_bias=logits_bias)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    x = x + y
    y = ln('LayerNorm_2')(x)
    y = MlpBlock(self.mlp_dim, self.dropout_rate, self.gelu_approximate, self.dtype,
                 name='MlpBlock_3')(y, deterministic=deterministic)
    return x + y


class Encoder(nn.Module):
  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  gelu_approximate: bool = True
  layer_norm_epsilon: float = 1e-6
  remat: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    x = AddPositionEmbs(name='posembed_input')(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    block_cls = nn.remat(Encoder1DBlock, static_argnums=()) if self.remat else Encoder1DBlock
    for i in range(self.num_layers):
      x = block_cls(self.mlp_dim, self.num_heads, self.dropout_rate,
                    self.attention_dropout_rate, self.gelu_approximate,
                    self.layer_norm_epsilon, self.dtype,
                    name=f'encoderblock_{i}')(x, deterministic=not train)
    return nn.LayerNorm(epsilon=self.layer_norm_epsilon, name='encoder_norm',
                        scale_init=_logical(nn.initializers.ones, ('embed',)),
                        bias_init=_logical(nn.initializers.zeros, ('embed',)))(x)


class VisionTransformer(nn.Module):
  """ViT and the R+ViT hybrid.

  `classifier`: 'token' (class token, the paper's default), 'gap' (global average pooling,
  Appendix D.3), or 'unpooled' (the whole encoded sequence, class token first: for MPP).
  `patch_transform` is applied to the patch embeddings before the class token and position
  embeddings are added: masked patch prediction corrupts the input there (Appendix B.1.2).
  """
  num_classes: Optional[int]
  patch_size: Sequence[int]
  hidden_size: int
  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  classifier: str = 'token'
  representation_size: Optional[int] = None
  resnet: Optional[resnet.ResNetConfig] = None
  gelu_approximate: bool = True
  layer_norm_epsilon: float = 1e-6
  head_bias_init: float = 0.0
  remat: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: Array, *, train: bool,
               patch_transform: Optional[Callable[[Array], Array]] = None) -> Array:
    x = images.astype(self.dtype)
    if self.resnet is not None:
      # Called inline so that conv_root, gn_root and block{i} sit at the top of the tree, as
      # in the official R50+ViT checkpoints.
      x = resnet.stem(x, self.resnet, self.dtype)
    x = nn.Conv(self.hidden_size, tuple(self.patch_size), strides=tuple(self.patch_size),
                padding='VALID', dtype=self.dtype, name='embedding',
                kernel_init=_logical(nn.initializers.lecun_normal(),
                                     (None, None, 'channels', 'embed')),
                bias_init=_logical(nn.initializers.zeros, ('embed',)))(x)
    b, h, w, c = x.shape
    x = jnp.reshape(x, (b, h * w, c))
    if patch_transform is not None:
      x = patch_transform(x)
    if self.classifier in ('token', 'unpooled'):
      cls = self.param('cls', _logical(nn.initializers.zeros, (None, None, 'embed')), (1, 1, c))
      x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (b, 1, 1)), x], axis=1)
    x = Encoder(self.num_layers, self.mlp_dim, self.num_heads, self.dropout_rate,
                self.attention_dropout_rate, self.gelu_approximate, self.layer_norm_epsilon,
                self.remat, self.dtype, name='Transformer')(x, train=train)
    if self.classifier == 'unpooled':
      return x
    x = x[:, 0] if self.classifier == 'token' else jnp.mean(x, axis=1)
    if self.representation_size is not None:
      x = nn.Dense(self.representation_size, dtype=self.dtype, name='pre_logits',
                   kernel_init=_logical(nn.initializers.lecun_normal(), ('embed', 'mlp')),
                   bias_init=_logical(nn.initializers.zeros, ('mlp',)))(x)
      x = jnp.tanh(x)
    if self.num_classes:
      x = nn.Dense(self.num_classes, dtype=self.dtype, name='head',
                   kernel_init=_logical(nn.initializers.zeros, (None, 'classes')),
                   bias_init=_logical(nn.initializers.constant(self.head_bias_init),
                                      ('classes',)))(x)
    return x.astype(jnp.float32)


def patch_grid(image_size: Sequence[int], patch_size: Sequence[int],
               resnet_config: Optional[resnet.ResNetConfig] = None) -> tuple[int, int]:
  """The (rows, cols) of the token grid a model sees at `image_size`."""
  h, w = image_size
  if resnet_config is not None:
    stride = resnet.total_stride(resnet_config)
    h, w = h // stride, w // stride
  return h // patch_size[0], w // patch_size[1]


def resize_posemb(posemb: np.ndarray, new_grid: tuple[int, int], num_prefix_tokens: int = 1
                  ) -> np.ndarray:
  """Resizes learned 1D position embeddings [1, prefix + gh*gw, D] to a new patch grid.

  The prefix (class token) embedding is kept; the grid is interpolated linearly in 2D, as the
  official fine-tuning code does (checkpoint.py uses scipy.ndimage.zoom with order=1).
  """
  import scipy.ndimage  # Only loading code needs scipy.
  posemb = np.asarray(posemb)
  prefix, grid = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
  old = int(round(np.sqrt(grid.shape[0])))
  if old * old != grid.shape[0]:
    raise ValueError(f'position embeddings hold {grid.shape[0]} patch tokens, not a square grid')
  gh, gw = new_grid
  if (old, old) == (gh, gw):
    return posemb
  grid = grid.reshape(old, old, -1)
  grid = scipy.ndimage.zoom(grid, (gh / old, gw / old, 1), order=1)
  grid = grid.reshape(1, gh * gw, -1)
  return np.concatenate([prefix, grid], axis=1).astype(posemb.dtype)
