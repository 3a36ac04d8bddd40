"""Writes the .npz layout fixtures of tests/test_formats_vit_jax.py with the projects' own code.

Each fixture is a tiny ViT (16 px, 4 px patches, width 16, 2 blocks, 2 heads, 5 classes) built,
initialised, run and saved by the code whose layout it shows; `expected.npz` holds the input
images ([-1, 1], as both projects feed them) and the logits that code computed. The
`big_vision_sincos_*` files (posemb='sincos2d') hold no position embedding, so they read as
`vit_jax:FILE.npz@16`. Regenerate with
checkouts of both repositories on PYTHONPATH (their code is not vendored here):

  git -C <big_vision mirror> archive 0127fb6b337ee2a27bf4e54dea79cff176527356 big_vision \
    | tar -x -C SRC
  git -C <vision_transformer mirror> archive c6de1e5378c9831a8477feb30994971bdc409e46 vit_jax \
      | tar -x -C SRC
  PYTHONPATH=SRC JAX_PLATFORMS=cpu python tests/testdata/npz_layouts/make_fixtures.py

The commits used are the two named above (google-research/big_vision, 2025-05-19;
google-research/vision_transformer, 2024-05-21), with flax 0.12.8 and jax 0.10.2. Rerun to add
the sincos2d files (2026-12-07, same commits and versions, CPU), it wrote the earlier weight
files byte for byte and their logits within 7.2e-7 of the earlier run's (another CPU).
"""
import os

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from big_vision import utils as bv_utils
from big_vision.models import vit as bv_vit
from vit_jax import models_vit

OUT = os.path.dirname(os.path.abspath(__file__))
SIZE, CLASSES = 16, 5
SIZES = dict(width=16, depth=2, mlp_dim=32, num_heads=2)


def _perturbed(params, seed):
  """Non-zero heads, class tokens and biases (their inits are zeros), so every tensor counts."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: np.asarray(p, np.float32)
                      + 0.3 * rng.standard_normal(p.shape).astype(np.float32), params)


def _npsave(tree, name):
  """big_vision's way (configs/proj/paligemma notebook `npsave`): tree_flatten_with_names."""
  names_and_vals, _ = bv_utils.tree_flatten_with_names(tree)
  with open(os.path.join(OUT, name), 'wb') as f:
    np.savez(f, **{k: np.asarray(v) for k, v in names_and_vals})


def official(images, seed=0):
  """vision_transformer's models_vit under today's flax: `MultiHeadDotProductAttention_0`..."""
  model = models_vit.VisionTransformer(
      num_classes=CLASSES, patches=ml_collections.ConfigDict(dict(size=(4, 4))),
      hidden_size=SIZES['width'], classifier='token', representation_size=None,
      transformer=dict(num_layers=SIZES['depth'], mlp_dim=SIZES['mlp_dim'],
                       num_heads=SIZES['num_heads'], dropout_rate=0.0,
                       attention_dropout_rate=0.0))
  params = model.init(jax.random.key(seed), images[:1], train=False)['params']
  params = _perturbed(flax.core.unfreeze(params), seed)
  logits = model.apply({'params': params}, images, train=False)
  flat = flax.traverse_util.flatten_dict(params, sep='/')  # As vit_jax/checkpoint.py's.
  with open(os.path.join(OUT, 'vit_jax_today.npz'), 'wb') as f:
    np.savez(f, **flat)
  # The published files predate flax's per-type counters: the same modules, numbered globally.
  old = {'MultiHeadDotProductAttention_0': 'MultiHeadDotProductAttention_1',
         'LayerNorm_1': 'LayerNorm_2', 'MlpBlock_0': 'MlpBlock_3'}
  published = {'/'.join(old.get(part, part) for part in k.split('/')): v for k, v in flat.items()}
  with open(os.path.join(OUT, 'vit_jax_published.npz'), 'wb') as f:
    np.savez(f, **published)
  return {'vit_jax_today': logits, 'vit_jax_published': logits}


def big_vision(images):
  """big_vision's vit.Model: class token ('tok'), scanned GAP with pre_logits, SigLIP's img/;
  and with fixed sine-cosine position embeddings (posemb='sincos2d', which saves none): GAP
  with pre_logits as configs/vit_s16_i1k.py's model section, and a scanned class token."""
  out = {}
  cases = {
      # A training checkpoint: params and optimiser state, nested under params/.
      'big_vision_tok': (dict(pool_type='tok'), lambda p: {'params': p,
                                                            'opt': optax.adam(1e-3).init(p)}),
      'big_vision_gap_scan': (dict(pool_type='gap', scan=True, rep_size=8), lambda p: p),
      # A two-tower (SigLIP-like) checkpoint: the image tower under params/img/.
      'big_vision_img': (dict(pool_type='tok'), lambda p: {'params': {
          'img': p, 'txt': {'Embed_0': {'embedding': np.ones((7, 4), np.float32)}},
          't': np.zeros((1,), np.float32)}}),
      'big_vision_sincos_gap': (dict(pool_type='gap', rep_size=True, posemb='sincos2d'),
                                lambda p: {'params': p}),
      'big_vision_sincos_tok_scan': (dict(pool_type='tok', scan=True, posemb='sincos2d'),
                                     lambda p: p),
  }
  for seed, (name, (kw, wrap)) in enumerate(cases.items(), start=1):
    kw = {'posemb': 'learn', **kw}
    model = bv_vit.Model(num_classes=CLASSES, patch_size=(4, 4), **SIZES, **kw)
    params = model.init(jax.random.key(seed), images[:1])['params']
    params = _perturbed(flax.core.unfreeze(params), seed)
    out[name], _ = model.apply({'params': params}, images)
    _npsave(wrap(params), f'{name}.npz')
  return out


def main():
  images = np.random.default_rng(0).uniform(-1, 1, (3, SIZE, SIZE, 3)).astype(np.float32)
  logits = {**official(jnp.asarray(images)), **big_vision(jnp.asarray(images))}
  np.savez(os.path.join(OUT, 'expected.npz'), images=images,
           **{f'logits/{k}': np.asarray(v, np.float32) for k, v in logits.items()})
  for name in sorted(os.listdir(OUT)):
    print(name, os.path.getsize(os.path.join(OUT, name)))


if __name__ == '__main__':
  main()
