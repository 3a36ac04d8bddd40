"""Our MAE and SimMIM parameters as transformers' `ViTMAEForPreTraining` and
`ViTForMaskedImageModeling` state dicts (in-memory names of transformers >= 5), for the parity
tests and the speed benchmark. The library's own HF format (vit/formats/hf.py) writes a ViT
backbone; these add the pretraining heads, which no published format holds.

Layouts: torch Linear weights are [out, in]; our q/k/v kernels are [D, heads, head_dim] and the
attention output [heads, head_dim, D]; the patch conv goes HWIO -> OIHW. SimMIM's decoder is a
1x1 conv to ph * pw * C channels and a PixelShuffle, whose channel c * r * r + i * r + j is
pixel (i, j) of channel c; our Dense orders a patch's values (i, j, c) (rows, columns, channels).
"""
from __future__ import annotations

import jax
import numpy as np



def perturbed(params, seed: int = 0, scale: float = 0.2):
  """Every parameter moved off its initial value by `scale` times a standard normal (key
  `seed`), so that a parity test compares every tensor: zero biases, unit LayerNorm scales and
  the decoder's initial values would hide a dropped or transposed one."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                   for x, k in zip(leaves, keys)])

def _linear(d: dict, shape=None) -> tuple[np.ndarray, np.ndarray]:
  kernel = np.asarray(d['kernel'], np.float32)
  kernel = kernel.reshape(shape) if shape else kernel
  return kernel.T, np.asarray(d['bias'], np.float32).reshape(-1)


def block_state(block: dict, prefix: str) -> dict[str, np.ndarray]:
  """One ViT encoder block (LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2,
  MlpBlock_3)."""
  out = {}
  attn = block['MultiHeadDotProductAttention_1']
  width = attn['query']['kernel'].shape[0]
  for ours, theirs in (('query', 'q_proj'), ('key', 'k_proj'), ('value', 'v_proj')):
    out[f'{prefix}attention.{theirs}.weight'], out[f'{prefix}attention.{theirs}.bias'] = \
        _linear(attn[ours], (width, -1))
  out[f'{prefix}attention.o_proj.weight'], out[f'{prefix}attention.o_proj.bias'] = \
      _linear(attn['out'], (-1, width))
  for ours, theirs in (('LayerNorm_0', 'layernorm_before'), ('LayerNorm_2', 'layernorm_after')):
    out[f'{prefix}{theirs}.weight'] = np.asarray(block[ours]['scale'], np.float32)
    out[f'{prefix}{theirs}.bias'] = np.asarray(block[ours]['bias'], np.float32)
  for ours, theirs in (('Dense_0', 'fc1'), ('Dense_1', 'fc2')):
    out[f'{prefix}mlp.{theirs}.weight'], out[f'{prefix}mlp.{theirs}.bias'] = \
        _linear(block['MlpBlock_3'][ours])
  return out


def backbone_state(p: dict, prefix: str = 'vit.') -> dict[str, np.ndarray]:
  """Our ViT (embedding, cls, Transformer) as a transformers ViT / ViTMAE encoder."""
  t = p['Transformer']
  out = {f'{prefix}embeddings.cls_token': np.asarray(p['cls'], np.float32),
         f'{prefix}embeddings.position_embeddings':
             np.asarray(t['posembed_input']['pos_embedding'], np.float32),
         f'{prefix}embeddings.patch_embeddings.projection.weight':
             np.asarray(p['embedding']['kernel'], np.float32).transpose(3, 2, 0, 1),
         f'{prefix}embeddings.patch_embeddings.projection.bias':
             np.asarray(p['embedding']['bias'], np.float32),
         f'{prefix}layernorm.weight': np.asarray(t['encoder_norm']['scale'], np.float32),
         f'{prefix}layernorm.bias': np.asarray(t['encoder_norm']['bias'], np.float32)}
  layers = sum(1 for k in t if k.startswith('encoderblock_'))
  for i in range(layers):
    out.update(block_state(t[f'encoderblock_{i}'], f'{prefix}layers.{i}.'))
  return out


def mae_state(params: dict, decoder_pos_embed: np.ndarray) -> dict[str, np.ndarray]:
  """{'backbone', 'decoder'} -> `ViTMAEForPreTraining.state_dict()`; the decoder's fixed
  position table is a (frozen) parameter there, so it is passed in."""
  d = params['decoder']
  out = backbone_state(params['backbone'])
  out['decoder.decoder_embed.weight'], out['decoder.decoder_embed.bias'] = \
      _linear(d['decoder_embed'])
  out['decoder.mask_token'] = np.asarray(d['mask_token'], np.float32).reshape(1, 1, -1)
  out['decoder.decoder_pos_embed'] = np.asarray(decoder_pos_embed, np.float32).reshape(
      1, *np.shape(decoder_pos_embed)[-2:])
  layers = sum(1 for k in d if k.startswith('decoderblock_'))
  for i in range(layers):
    out.update(block_state(d[f'decoderblock_{i}'], f'decoder.decoder_layers.{i}.'))
  out['decoder.decoder_norm.weight'] = np.asarray(d['decoder_norm']['scale'], np.float32)
  out['decoder.decoder_norm.bias'] = np.asarray(d['decoder_norm']['bias'], np.float32)
  out['decoder.decoder_pred.weight'], out['decoder.decoder_pred.bias'] = \
      _linear(d['decoder_pred'])
  return out


def simmim_state(params: dict, patch: int, channels: int) -> dict[str, np.ndarray]:
  """{'backbone', 'mask_token', 'decoder'} -> `ViTForMaskedImageModeling.state_dict()`."""
  out = backbone_state(params['backbone'])
  out['vit.embeddings.mask_token'] = np.asarray(params['mask_token'], np.float32).reshape(
      1, 1, -1)
  kernel = np.asarray(params['decoder']['kernel'], np.float32)  # [D, (i, j, c)]
  width = kernel.shape[0]
  to_shuffle = lambda a: a.reshape(*a.shape[:-1], patch, patch, channels).transpose(
      *range(a.ndim - 1), a.ndim + 1, a.ndim - 1, a.ndim).reshape(*a.shape[:-1], -1)
  out['decoder.0.weight'] = to_shuffle(kernel).T.reshape(-1, width, 1, 1)
  out['decoder.0.bias'] = to_shuffle(np.asarray(params['decoder']['bias'], np.float32))
  return out
