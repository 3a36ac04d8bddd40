"""Frozen-feature evaluation with the held-out split choosing the L2 strength.

The k-shot and full linear probes of the study (docs/study/protocol.md): the closed-form regularised
least squares of the few-shot evaluator (fewshot.LeastSquares, big_vision's `fewshot_lsr`
formulation) fit on training features, its L2 strength chosen on the held-out split
(data.holdout, never the test split), then test accuracy at that strength. Features come from
raw pixels (the baseline any representation must beat) or from a backbone, three ways: the
class token, the mean patch token of the last block, and the mean patch token of an
intermediate block (pre-norm residual stream, as `capture_intermediates` sees the block output).
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import ml_collections
import numpy as np

from vit import sharding
from vit.data import pipeline, subsets
from vit.errors import ConfigError
from vit.evaluators import embedding
from vit.evaluators.fewshot import LeastSquares
from vit.models import factory
from vit.models.spec import ModelSpec
from vit.preprocess import input_fn

L2_GRID = tuple(2.0 ** k for k in range(-4, 17, 2))  # 1/16 .. 65536, as big_vision's sweep.


def choose_l2(train_x, train_y, held_x, held_y, test_x, test_y, num_classes: int,
              l2_grid: Sequence[float] = L2_GRID) -> dict:
  """Fits once, picks the L2 of best held-out accuracy; {'l2', 'holdout', 'test'} (fractions)."""
  solver = LeastSquares(train_x, train_y, num_classes)
  held = [solver.accuracy(held_x, held_y, l2) for l2 in l2_grid]
  best = int(np.argmax(held))
  return {'l2': float(l2_grid[best]), 'holdout': held[best],
          'test': solver.accuracy(test_x, test_y, l2_grid[best])}


def draw_shots(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
  """k indices of every class, by a seeded permutation (draw `seed` of the k-shot set)."""
  order = np.random.default_rng(seed).permutation(len(labels))
  return np.concatenate([order[labels[order] == c][:k] for c in np.unique(labels)])


def probe(train, held, test, num_classes: int, shots: Sequence[int] = (5, 10, 25),
          draws: int = 3, l2_grid: Sequence[float] = L2_GRID) -> dict:
  """k-shot (mean and std over `draws` seeded draws) and full-data probes of one feature set.

  train/held/test: (features float [N, D], labels int [N]). Per k, one L2 is chosen for all
  draws by their mean held-out accuracy. Returns accuracies as fractions:
  {'{k}shot', '{k}shot_std', '{k}shot_l2', 'linear', 'linear_l2', 'linear_holdout'}.
  """
  (tx, ty), (hx, hy), (sx, sy) = train, held, test
  out = {}
  for k in shots:
    runs = []
    for d in range(draws):
      rows = draw_shots(ty, k, d)
      solver = LeastSquares(tx[rows], ty[rows], num_classes)
      runs.append(([solver.accuracy(hx, hy, l2) for l2 in l2_grid], solver))
    best = int(np.argmax(np.mean([h for h, _ in runs], axis=0)))
    tests = [s.accuracy(sx, sy, l2_grid[best]) for _, s in runs]
    out.update({f'{k}shot': float(np.mean(tests)), f'{k}shot_std': float(np.std(tests, ddof=1))
                if draws > 1 else 0.0, f'{k}shot_l2': float(l2_grid[best])})
  full = choose_l2(tx, ty, hx, hy, sx, sy, num_classes, l2_grid)
  out.update(linear=full['test'], linear_l2=full['l2'], linear_holdout=full['holdout'])
  return out


def splits(config: ml_collections.ConfigDict) -> dict:
  """The three sources a probe reads: 'train' (all its labels), 'holdout' and 'test'."""
  if not config.data.holdout:
    raise ConfigError('data.holdout', config.data.holdout,
                      'must be > 0: the probes choose their L2 on the held-out split')
  full = ml_collections.ConfigDict(config.to_dict())
  full.data.train_fraction = 1.0
  return {'train': pipeline.make_source(full, full.data.train_split),
          'holdout': pipeline.make_source(full, subsets.HOLDOUT_SPLIT),
          'test': pipeline.make_source(full, full.data.eval_split)}


def pixels(source) -> tuple[np.ndarray, np.ndarray]:
  """Raw pixels float64 [N, H*W*C] (0..255, as stored) and labels of an array source."""
  images = np.stack([source[i]['image'] for i in range(len(source))])
  return images.reshape(len(images), -1).astype(np.float64), subsets.labels_of(source)


def representations_fn(model: ModelSpec, block: int) -> Callable:
  """params, uint8 images [B, H, W, C] -> {'class_token', 'mean_patch', 'block{b}_mean_patch'}:
  float [B, D] each. `block` counts from 0; the last block's outputs are after encoder_norm.
  """
  if not 0 <= block < model.num_layers:
    raise ConfigError('probe_block', block, f'must be in [0, {model.num_layers}) for this model')
  net = factory.build_model(model, num_classes=None, classifier='unpooled')
  name, to_input = f'encoderblock_{block}', input_fn(model)

  def representation(params, images):
    params = {k: v for k, v in params.items() if k != 'head'}
    encoded, state = net.apply({'params': params}, to_input(images), train=False,
                               capture_intermediates=lambda m, _: m.name == name,
                               mutable=['intermediates'])
    inner = state['intermediates']['Transformer'][name]['__call__'][0]
    return {'class_token': encoded[:, 0], 'mean_patch': encoded[:, 1:].mean(axis=1),
            f'block{block}_mean_patch': inner[:, 1:].mean(axis=1)}
  return representation


def probe_backbone(config, model: ModelSpec, params, block: int, shots=(5, 10, 25),
                   draws: int = 3) -> dict:
  """Every probe of every representation of a backbone: {'{rep}/{probe}': accuracy}."""
  fn = jax.jit(representations_fn(model, block))
  mesh = sharding.make_mesh(config.mesh)
  sources = splits(config)
  embedded = {name: embedding.embed(config, fn, params, s, mesh) for name, s in sources.items()}
  num_classes = int(embedded['train'][1].max()) + 1
  out = {}
  for rep in embedded['train'][0]:
    parts = [(embedded[s][0][rep], embedded[s][1]) for s in ('train', 'holdout', 'test')]
    out.update({f'{rep}/{k}': v for k, v in probe(*parts, num_classes, shots, draws).items()})
  return out


def probe_pixels(config, shots=(5, 10, 25), draws: int = 3) -> dict:
  """The raw-pixel baseline: {'pixels/{probe}': accuracy}."""
  parts = [pixels(s) for s in splits(config).values()]
  num_classes = int(parts[0][1].max()) + 1
  return {f'pixels/{k}': v for k, v in probe(*parts, num_classes, shots, draws).items()}
