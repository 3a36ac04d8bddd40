"""Vision Transformer (Dosovitskiy et al., 2021), as in the official `vit_jax/models_vit.py`.

Submodule names are the checkpoint format: `embedding`, `cls`, `Transformer/posembed_input`,
`Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2,
MlpBlock_3}`, `Transformer/encoder_norm`, `pre_logits`, `head`. Renaming one breaks every
published checkpoint, so names are given explicitly rather than left to linen's counters.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `kv`, ...); vit/sharding.py
maps them to mesh axes, so the model never names a mesh axis.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit.models import resnet
from vit.models.gelu import gelu_tanh
from vit.models.layer_norm import LayerNorm

Array = jax.Array
Dtype = Any

# The official initialisers (models_vit.py): Xavier-uniform kernels, tiny-normal MLP biases,
# zero head so a fresh head starts from uniform logits (paper §3.1, fine-tuning).
_xavier = nn.initializers.xavier_uniform()
_mlp_bias = nn.initializers.normal(stddev=1e-6)


# Appendix D.4 / D.6 ablations; the first of each is the paper's ViT (docs/ablations.md).
POSEMBS = ('learned_1d', 'learned_2d', 'relative', 'sincos_2d', 'none')
ATTENTIONS = ('global', 'axial')
SCANNED_BLOCKS = 'encoderblock'  # The stacked blocks' name under `Transformer` (scan_layers).


def check_choice(key: str, value, allowed: Sequence) -> None:
  """ValueError, in one line naming `model.<key>`, when `value` is not one of `allowed`."""
  if value not in allowed:
    raise ValueError(f'model.{key}={value!r}: must be one of {", ".join(map(str, allowed))}')


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


class AddPositionEmbs2D(nn.Module):
  """Learned 2D position embeddings (Appendix D.4 ablation, `model.posemb='learned_2d'`).

  A row table and a column table, each of half the width; a patch's embedding is its row's and
  its column's concatenated. Prefix tokens (the class token) have no grid position, so they get
  their own learned embedding (`pos_embedding_prefix`).
  """
  grid: tuple[int, int]
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    (gh, gw), width = self.grid, x.shape[2]
    init = nn.initializers.normal(stddev=0.02)
    # Replicated: half-width tables need not divide evenly over an 'embed'-sharded mesh axis.
    row = self.param('pos_embedding_row', _logical(init, (None, None)), (gh, width // 2),
                     self.param_dtype)
    col = self.param('pos_embedding_col', _logical(init, (None, None)), (gw, width // 2),
                     self.param_dtype)
    pe = learned_2d_table(row, col)
    prefix = x.shape[1] - gh * gw
    if prefix:
      pe = jnp.concatenate([self.param('pos_embedding_prefix', _logical(init, (None, 'embed')),
                                       (prefix, width), self.param_dtype), pe])
    return x + pe[None].astype(x.dtype)


def learned_2d_table(row: Array, col: Array) -> Array:
  """The patches' position embeddings [gh * gw, 2 * half] of learned_2d's row table [gh, half]
  and column table [gw, half], row-major: patch (r, c) gets row[r] then col[c] concatenated
  (`AddPositionEmbs2D`; the formats' writers write it as the learned 1D table)."""
  (gh, half), gw = row.shape, col.shape[0]
  return jnp.concatenate([jnp.broadcast_to(row[:, None], (gh, gw, half)),
                          jnp.broadcast_to(col[None], (gh, gw, half))],
                         axis=-1).reshape(gh * gw, 2 * half)


def sincos_2d(grid: Sequence[int], width: int, temperature: float = 10_000.0) -> np.ndarray:
  """Fixed 2D sine-cosine position embeddings [gh * gw, width] (`model.posemb='sincos_2d'`).

  A quarter of the channels each for sin(x), cos(x), sin(y), cos(y) over geometric frequencies,
  as big_vision's `posemb_sincos_2d`; `width` must be a multiple of 4.
  """
  gh, gw = grid
  y, x = np.mgrid[:gh, :gw]
  omega = np.arange(width // 4) / max(width // 4 - 1, 1)
  omega = 1.0 / temperature ** omega
  y = np.einsum('m,d->md', y.ravel(), omega)
  x = np.einsum('m,d->md', x.ravel(), omega)
  return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


class RelativePositionBias(nn.Module):
  """Learned relative position biases added to attention logits (`model.posemb='relative'`).

  One bias per head for every 2D offset between two patches (Appendix D.4's relative
  attention, in the bias form of Swin/BEiT). The class token has no offset: class->patch,
  patch->class and class->class each get one learned bias per head, as in BEiT.
  Returns [1, heads, T, T] for T = prefix + gh * gw tokens.
  """
  grid: tuple[int, int]
  num_heads: int
  num_prefix_tokens: int

  @nn.compact
  def __call__(self) -> Array:
    gh, gw = self.grid
    init = nn.initializers.normal(stddev=0.02)
    table = self.param('rel_table', _logical(init, (None, None, 'heads')),
                       (2 * gh - 1, 2 * gw - 1, self.num_heads))
    r, c = np.divmod(np.arange(gh * gw), gw)
    bias = table[r[:, None] - r[None] + gh - 1, c[:, None] - c[None] + gw - 1]  # [N, N, heads]
    p, n = self.num_prefix_tokens, gh * gw
    if p:
      pb = self.param('prefix_bias', _logical(init, (None, 'heads')), (3, self.num_heads))
      fill = lambda i, rows, cols: jnp.broadcast_to(pb[i], (rows, cols, self.num_heads))
      bias = jnp.concatenate([jnp.concatenate([fill(2, p, p), fill(0, p, n)], axis=1),
                              jnp.concatenate([fill(1, n, p), bias], axis=1)], axis=0)
    return jnp.transpose(bias, (2, 0, 1))[None]


class MlpBlock(nn.Module):
  """The Transformer block's MLP: Dense to `mlp_dim`, GELU (tanh-approximate unless
  `gelu_approximate` is False), dropout, Dense back to the input width, dropout. Dense_0 and
  Dense_1 are the official checkpoints' names."""
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
    y = gelu_tanh(y) if self.gelu_approximate else nn.gelu(y, approximate=False)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    y = nn.Dense(width, dtype=self.dtype, name='Dense_1',
                 kernel_init=_logical(_xavier, ('mlp', 'embed')),
                 bias_init=_logical(_mlp_bias, ('embed',)))(y)
    return nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)


def _qkv_projection(num_heads, head_dim, dtype, name):
  return nn.DenseGeneral((num_heads, head_dim), dtype=dtype, name=name,
                         kernel_init=_logical(_xavier, ('embed', 'heads', 'kv')),
                         bias_init=_logical(nn.initializers.zeros, ('heads', 'kv')))


# Axial attention (Appendix D.6, `model.attention='axial'`): patch tokens attend along their row
# (or column) of the patch grid and to the prefix tokens; prefix tokens (the class token) attend
# to every token, so the class token still gathers the whole image at linear cost.

def axial_mask(grid: Sequence[int], num_tokens: int, axis: str) -> np.ndarray:
  """Which keys each query may see under axial attention: bool [T, T], prefix tokens first."""
  gh, gw = grid
  p = num_tokens - gh * gw
  r, c = np.divmod(np.arange(gh * gw), gw)
  line = r if axis == 'row' else c
  mask = np.ones((num_tokens, num_tokens), bool)
  mask[p:, p:] = line[:, None] == line[None]
  return mask


def axial_attention(q: Array, k: Array, v: Array, grid: Sequence[int], axis: str) -> Array:
  """Attention along rows or columns by reshaping: [B, T, heads, head_dim] in and out.

  Costs O(T * (gh + gw)) rather than O(T^2); equal to global attention under `axial_mask`.
  """
  b, t, h, d = q.shape
  gh, gw = grid
  p = t - gh * gw

  def lines(a):
    a = a[:, p:].reshape(b, gh, gw, h, d)
    return a if axis == 'row' else a.swapaxes(1, 2)

  ql, kl, vl = lines(q), lines(k), lines(v)
  n_lines, n = ql.shape[1], ql.shape[2]
  if p:
    prefix = lambda a: jnp.broadcast_to(a[:, None, :p], (b, n_lines, p, h, d))
    kl, vl = (jnp.concatenate([prefix(a), al], axis=2) for a, al in ((k, kl), (v, vl)))
  flat = lambda a: a.reshape(b * n_lines, a.shape[2], h, d)
  y = jax.nn.dot_product_attention(flat(ql), flat(kl), flat(vl)).reshape(b, n_lines, n, h, d)
  y = (y if axis == 'row' else y.swapaxes(1, 2)).reshape(b, gh * gw, h, d)
  if p:
    y = jnp.concatenate([jax.nn.dot_product_attention(q[:, :p], k, v), y], axis=1)
  return y


def attention_padded_to_even(q: Array, k: Array, v: Array, implementation: Optional[str]
                             ) -> Array:
  """Attention over an odd number of tokens (ViT's 1 + 14 * 14 = 197) computed on one more,
  masked out: cuDNN's fused training kernels refuse odd sequence lengths."""
  b, t = q.shape[:2]
  pad = lambda a: jnp.pad(a, ((0, 0), (0, 1), (0, 0), (0, 0)))
  lengths = jnp.full((b,), t, jnp.int32)
  y = jax.nn.dot_product_attention(pad(q), pad(k), pad(v), query_seq_lengths=lengths,
                                   key_value_seq_lengths=lengths, implementation=implementation)
  return y[:, :t]


class MultiHeadDotProductAttention(nn.Module):
  """Self-attention with the parameter layout of `flax.linen.MultiHeadDotProductAttention`.

  query/key/value kernels are [embed, heads, head_dim] and out is [heads, head_dim, embed], as
  in the official checkpoints. Written here rather than taken from linen so that the weights can
  be sown for inspection (§4.5) and the fused `jax.nn.dot_product_attention` used otherwise.
  """
  num_heads: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  axis: Optional[str] = None  # 'row' | 'col': axial attention over the patch `grid`.
  grid: Optional[tuple[int, int]] = None
  # `implementation` of jax.nn.dot_product_attention: None lets JAX choose (XLA today),
  # 'cudnn' asks for cuDNN's fused attention on NVIDIA GPUs (bf16/fp16 only).
  kernel: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool,
               logits_bias: Optional[Array] = None) -> Array:
    width = x.shape[-1]
    head_dim = width // self.num_heads
    q, k, v = (_qkv_projection(self.num_heads, head_dim, self.dtype, n)(x)
               for n in ('query', 'key', 'value'))
    want_weights = self.is_mutable_collection('intermediates')
    use_dropout = not deterministic and self.dropout_rate > 0.0
    fast_axial = self.axis is not None and not (want_weights or use_dropout or
                                                logits_bias is not None)
    if self.axis is not None and not fast_axial:
      # The same axial attention as global attention under a mask, so that the sown weights
      # keep their [B, heads, T, T] layout for inspection and biases/dropout apply unchanged.
      mask = jnp.where(axial_mask(self.grid, x.shape[1], self.axis), 0.0, -1e9)[None, None]
      logits_bias = mask if logits_bias is None else logits_bias + mask
    if fast_axial:
      y = axial_attention(q, k, v, self.grid, self.axis)
    elif want_weights or use_dropout:
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
      if self.kernel == 'cudnn' and bias is None and q.shape[1] % 2:
        y = attention_padded_to_even(q, k, v, 'cudnn')
      else:
        y = jax.nn.dot_product_attention(q, k, v, bias=bias, implementation=self.kernel)
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
  attention_axis: Optional[str] = None  # Axial blocks (Appendix D.6): 'row' | 'col'.
  grid: Optional[tuple[int, int]] = None
  attention_kernel: Optional[str] = None  # See MultiHeadDotProductAttention.kernel.
  layer_norm: Optional[str] = None  # See vit.models.layer_norm.LayerNorm.implementation.

  @nn.compact
  def __call__(self, x: Array, deterministic: bool,
               logits_bias: Optional[Array] = None) -> Array:
    return _block(self, x, deterministic, logits_bias)


def _block(block: Encoder1DBlock, x: Array, deterministic: bool,
           logits_bias: Optional[Array]) -> Array:
  """The block's arithmetic; its submodules belong to `block` (called from its compact method)."""
  ln = lambda name: LayerNorm(epsilon=block.layer_norm_epsilon, dtype=block.dtype, name=name,
                              scale_init=_logical(nn.initializers.ones, ('embed',)),
                              bias_init=_logical(nn.initializers.zeros, ('embed',)),
                              implementation=block.layer_norm)
  y = ln('LayerNorm_0')(x)
  y = MultiHeadDotProductAttention(block.num_heads, block.attention_dropout_rate, block.dtype,
                                   axis=block.attention_axis, grid=block.grid,
                                   kernel=block.attention_kernel,
                                   name='MultiHeadDotProductAttention_1')(
                                       y, deterministic=deterministic, logits_bias=logits_bias)
  y = nn.Dropout(block.dropout_rate)(y, deterministic=deterministic)
  x = x + y
  y = ln('LayerNorm_2')(x)
  y = MlpBlock(block.mlp_dim, block.dropout_rate, block.gelu_approximate, block.dtype,
               name='MlpBlock_3')(y, deterministic=deterministic)
  return x + y


class _ScannedBlock(Encoder1DBlock):
  """One step of `nn.scan` over the blocks: (carry, output) as lax.scan wants; no output."""

  @nn.compact
  def __call__(self, x: Array, deterministic: bool,
               logits_bias: Optional[Array] = None) -> tuple[Array, None]:
    return _block(self, x, deterministic, logits_bias), None


class Encoder(nn.Module):
  """Position embeddings, the blocks and the final LayerNorm (`Transformer` in checkpoints).

  `scan_layers`: the blocks as one `nn.scan` (compiled once, not once per layer; big_vision's
  `scan=True`, MaxText's `scan_layers`), their parameters stacked on a leading 'layers' axis
  under `encoderblock`; `stack_blocks` / `unstack_blocks` convert to and from the official
  `encoderblock_{i}` tree. `remat` recomputes each block's forward pass in the backward pass,
  saving what `remat_policy` names (a `jax.checkpoint_policies` name; None: nothing).
  """
  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  gelu_approximate: bool = True
  layer_norm_epsilon: float = 1e-6
  remat: bool = False
  dtype: Dtype = jnp.float32
  # Ablations (Appendix D.4, D.6); the defaults are the paper's ViT and its checkpoint layout.
  posemb: str = 'learned_1d'  # 'learned_1d' | 'learned_2d' | 'relative' | 'sincos_2d' | 'none'
  attention: str = 'global'  # 'global' | 'axial'
  grid: Optional[tuple[int, int]] = None  # The patch grid (rows, cols) after prefix tokens.
  attention_kernel: Optional[str] = None  # See MultiHeadDotProductAttention.kernel.
  scan_layers: bool = False
  remat_policy: Optional[str] = None
  layer_norm: Optional[str] = None  # See vit.models.layer_norm.LayerNorm.implementation.

  @nn.compact
  def __call__(self, x: Array, *, train: bool, keep: Optional[Array] = None) -> Array:
    check_choice('posemb', self.posemb, POSEMBS)
    check_choice('attention', self.attention, ATTENTIONS)
    prefix = x.shape[1] - (self.grid[0] * self.grid[1] if self.grid else 0)
    if self.posemb == 'learned_1d':
      x = AddPositionEmbs(name='posembed_input')(x)
    elif self.posemb == 'learned_2d':
      x = AddPositionEmbs2D(tuple(self.grid), name='posembed_input')(x)
    elif self.posemb == 'sincos_2d':
      pe = np.concatenate([np.zeros((prefix, x.shape[2]), np.float32),
                           sincos_2d(self.grid, x.shape[2])])
      x = x + jnp.asarray(pe, x.dtype)[None]
    if keep is not None:
      # MAE (He et al., 2022): the encoder sees only the visible patches, each with its own
      # position embedding, added before the others are dropped (the prefix tokens stay).
      if self.posemb == 'relative' or self.attention != 'global':
        raise ValueError(f'keep: the patch grid is needed by posemb={self.posemb} and '
                         f'attention={self.attention}; dropping patches needs learned_1d, '
                         'learned_2d, sincos_2d or none with global attention')
      kept = jnp.take_along_axis(x[:, prefix:], keep[..., None], axis=1)
      x = jnp.concatenate([x[:, :prefix], kept], axis=1)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    x = self._scanned(x, train) if self.scan_layers else self._looped(x, train, prefix)
    return LayerNorm(epsilon=self.layer_norm_epsilon, name='encoder_norm',
                     scale_init=_logical(nn.initializers.ones, ('embed',)),
                     bias_init=_logical(nn.initializers.zeros, ('embed',)),
                     implementation=self.layer_norm)(x)

  def _block_args(self) -> tuple:
    return (self.mlp_dim, self.num_heads, self.dropout_rate, self.attention_dropout_rate,
            self.gelu_approximate, self.layer_norm_epsilon, self.dtype)

  def _remat(self, block_cls, **kwargs):
    # `deterministic` is passed positionally: remat must treat it as static (argnum 2 counts
    # self), or `not deterministic` would be traced.
    policy = None
    if self.remat_policy is not None:
      policy = getattr(jax.checkpoint_policies, self.remat_policy, None)
      if not callable(policy):
        raise ValueError(f'model.remat_policy={self.remat_policy!r}: not a '
                         'jax.checkpoint_policies name, e.g. nothing_saveable')
    return nn.remat(block_cls, static_argnums=(2,), policy=policy, **kwargs)

  def _looped(self, x: Array, train: bool, prefix: int) -> Array:
    block_cls = self._remat(Encoder1DBlock) if self.remat else Encoder1DBlock
    # An axial layer is two blocks, row then column attention, each with its own MLP, as the
    # paper's AxialViT (Appendix D.6).
    axes = ((None, ''),) if self.attention == 'global' else (('row', '_row'), ('col', '_col'))
    for i in range(self.num_layers):
      for axis, suffix in axes:
        kwargs = {}
        if self.posemb == 'relative':
          kwargs['logits_bias'] = RelativePositionBias(
              tuple(self.grid), self.num_heads, prefix, name=f'relposemb_{i}{suffix}')()
        x = block_cls(*self._block_args(), attention_axis=axis,
                      grid=None if axis is None else tuple(self.grid),
                      attention_kernel=self.attention_kernel, layer_norm=self.layer_norm,
                      name=f'encoderblock_{i}{suffix}')(x, not train, **kwargs)
    return x

  def _scanned(self, x: Array, train: bool) -> Array:
    if self.posemb == 'relative' or self.attention != 'global':
      raise ValueError(f'model.scan_layers=True: needs global attention and no relative '
                       f'position biases (posemb={self.posemb}, attention={self.attention})')
    # prevent_cse=False: inside a scan, XLA cannot merge the recomputation away (flax's advice).
    block_cls = self._remat(_ScannedBlock, prevent_cse=False) if self.remat else _ScannedBlock
    blocks = nn.scan(block_cls, variable_axes={'params': 0},
                     split_rngs={'params': True, 'dropout': True}, in_axes=nn.broadcast,
                     length=self.num_layers, metadata_params={nn.PARTITION_NAME: 'layers'})
    x, _ = blocks(*self._block_args(), attention_kernel=self.attention_kernel,
                  layer_norm=self.layer_norm, name=SCANNED_BLOCKS)(x, not train)
    return x


class VisionTransformer(nn.Module):
  """ViT and the R+ViT hybrid.

  `classifier`: 'token' (class token, the paper's default), 'gap' (global average pooling,
  Appendix D.3), or 'unpooled' (the whole encoded sequence, class token first: for MPP).
  `patch_transform` is applied to the patch embeddings before the class token and position
  embeddings are added: masked patch prediction corrupts the input there (Appendix B.1.2), as
  SimMIM puts its mask token. `keep` (int [B, K], indices into the row-major patch grid) keeps
  only those patch tokens, after their position embeddings are added: MAE's encoder.
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
  posemb: str = 'learned_1d'  # Appendix D.4 ablations; see `Encoder`.
  attention: str = 'global'  # 'axial': Appendix D.6.
  attention_kernel: Optional[str] = None  # See MultiHeadDotProductAttention.kernel.
  scan_layers: bool = False  # See `Encoder`.
  remat_policy: Optional[str] = None
  layer_norm: Optional[str] = None  # See vit.models.layer_norm.LayerNorm.implementation.

  @nn.compact
  def __call__(self, images: Array, *, train: bool,
               patch_transform: Optional[Callable[[Array], Array]] = None,
               keep: Optional[Array] = None) -> Array:
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
                self.remat, self.dtype, posemb=self.posemb, attention=self.attention,
                grid=(h, w), attention_kernel=self.attention_kernel,
                scan_layers=self.scan_layers, remat_policy=self.remat_policy,
                layer_norm=self.layer_norm, name='Transformer')(x, train=train, keep=keep)
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
                   # Split over fsdp like every weight: an ImageNet-21k head is 16.8M values.
                   kernel_init=_logical(nn.initializers.zeros, ('embed', 'classes')),
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


def _linear_zoom(array: np.ndarray, factors: Sequence[float]) -> np.ndarray:
  """scipy.ndimage.zoom with order=1. scipy is imported here, on the first resize: its import
  takes about 0.2 s of a core, which every command that imports the model (all of them, a
  one-line config error included) would otherwise pay."""
  import scipy.ndimage
  return scipy.ndimage.zoom(array, factors, order=1)


def resize_posemb(posemb: np.ndarray, new_grid: tuple[int, int], num_prefix_tokens: int = 1
                  ) -> np.ndarray:
  """Resizes learned 1D position embeddings [1, prefix + gh*gw, D] to a new patch grid.

  The prefix (class token) embedding is kept; the grid is interpolated linearly in 2D, as the
  official fine-tuning code does (checkpoint.py uses scipy.ndimage.zoom with order=1).
  """
  posemb = np.asarray(posemb)
  prefix, grid = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
  old = int(round(np.sqrt(grid.shape[0])))
  if old * old != grid.shape[0]:
    raise ValueError(f'position embeddings hold {grid.shape[0]} patch tokens, not a square grid')
  gh, gw = new_grid
  if (old, old) == (gh, gw):
    return posemb
  grid = grid.reshape(old, old, -1)
  grid = _linear_zoom(grid, (gh / old, gw / old, 1))
  grid = grid.reshape(1, gh * gw, -1)
  return np.concatenate([prefix, grid], axis=1).astype(posemb.dtype)


def _zoom(table: np.ndarray, shape: Sequence[int]) -> np.ndarray:
  """Linear interpolation of the leading axes of `table` to `shape` (corners aligned)."""
  table = np.asarray(table)
  factors = [n / o for n, o in zip(shape, table.shape)] + [1] * (table.ndim - len(shape))
  if tuple(shape) == table.shape[:len(shape)]:
    return table
  return _linear_zoom(table, factors).astype(table.dtype)


def resize_position_params(params: dict, new_grid: Sequence[int]) -> dict:
  """Resizes every learned position parameter of a ViT to a new patch grid (fine-tuning).

  Works for each `model.posemb` kind, read from the parameter names: `learned_1d`
  (`posembed_input/pos_embedding`, via `resize_posemb`), `learned_2d` (row and column tables,
  each interpolated along its axis), `relative` (`relposemb_*/rel_table`, offsets
  interpolated in 2D); `sincos_2d` and `none` have nothing to resize. Prefix-token entries are
  kept. `params` is the host tree of the whole model; a new tree is returned.
  """
  gh, gw = new_grid
  enc = dict(params['Transformer'])
  pos = enc.get('posembed_input')
  if pos is not None and 'pos_embedding' in pos:
    prefix = 1 if 'cls' in params else 0
    pos = dict(pos, pos_embedding=resize_posemb(pos['pos_embedding'], (gh, gw), prefix))
  elif pos is not None:
    pos = dict(pos, pos_embedding_row=_zoom(pos['pos_embedding_row'], (gh,)),
               pos_embedding_col=_zoom(pos['pos_embedding_col'], (gw,)))
  if pos is not None:
    enc['posembed_input'] = pos
  for name, sub in enc.items():
    if name.startswith('relposemb_'):
      enc[name] = dict(sub, rel_table=_zoom(sub['rel_table'], (2 * gh - 1, 2 * gw - 1)))
  return dict(params, Transformer=enc)


def stack_blocks(params: dict) -> dict:
  """The official looped tree -> the scanned one (`model.scan_layers`), values unchanged.

  `Transformer/encoderblock_{i}/...` for i = 0..L-1 become `Transformer/encoderblock/...` with
  a leading [L] axis (numpy in, numpy out; jax arrays stay jax arrays); every other entry is
  kept. Raises ValueError when the blocks are not numbered 0..L-1 or are already stacked.
  """
  t = dict(params['Transformer'])
  if SCANNED_BLOCKS in t:
    raise ValueError(f'Transformer/{SCANNED_BLOCKS}: the blocks are already stacked')
  numbers = sorted(int(k.split('_')[1]) for k in t if re.fullmatch(r'encoderblock_\d+', k))
  if not numbers or numbers != list(range(len(numbers))):
    raise ValueError(f'Transformer: blocks {numbers} are not encoderblock_0..L-1 (axial '
                     'blocks, encoderblock_{i}_row/_col, cannot be scanned)')
  blocks = [t.pop(f'encoderblock_{i}') for i in numbers]
  t[SCANNED_BLOCKS] = jax.tree.map(_stack, *blocks)
  return {**params, 'Transformer': t}


def unstack_blocks(params: dict) -> dict:
  """The scanned tree -> the official looped one (`encoderblock_{i}`): `stack_blocks`'s
  inverse. A tree without stacked blocks is returned as it is."""
  t = dict(params.get('Transformer', {}))
  if SCANNED_BLOCKS not in t:
    return params
  stacked = t.pop(SCANNED_BLOCKS)
  layers = jax.tree.leaves(stacked)[0].shape[0]
  for i in range(layers):
    t[f'encoderblock_{i}'] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return {**params, 'Transformer': t}


def _stack(*arrays):
  return np.stack(arrays) if isinstance(arrays[0], np.ndarray) else jnp.stack(arrays)
