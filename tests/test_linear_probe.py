"""Probes whose L2 the held-out split chooses, and the representations they read."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit import config as config_lib
from vit.errors import ConfigError
from vit.evaluators import fewshot, linear_probe

MODEL = config_lib.upgrade(dict(hidden_size=16, patches=dict(size=(4, 4)),
                                transformer=dict(mlp_dim=32, num_heads=2, num_layers=2)))


def _blobs(n, seed, noise=1.0):
  rng = np.random.default_rng(seed)
  y = np.arange(n) % 3
  centres = np.array([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
  return centres[y] + noise * rng.normal(size=(n, 4)), y


def test_choose_l2_takes_the_best_held_out_strength():
  train, held, test = _blobs(60, 0), _blobs(300, 1), _blobs(300, 2)
  grid = (1e-3, 1e9)  # 1e9 shrinks the weights to nothing: chance.
  out = linear_probe.choose_l2(*train, *held, *test, 3, grid)
  solver = fewshot.LeastSquares(*train, 3)
  assert out['l2'] == 1e-3 and out['holdout'] == solver.accuracy(*held, 1e-3)
  assert out['test'] == solver.accuracy(*test, 1e-3) and out['test'] > 0.9


def test_draw_shots_is_balanced_and_seeded():
  labels = np.repeat(np.arange(4), 7)
  a = linear_probe.draw_shots(labels, 3, seed=0)
  assert np.bincount(labels[a]).tolist() == [3, 3, 3, 3]
  assert a.tolist() == linear_probe.draw_shots(labels, 3, seed=0).tolist()
  assert sorted(a.tolist()) != sorted(linear_probe.draw_shots(labels, 3, seed=1).tolist())


def test_probe_reports_every_shot_count_and_the_full_probe():
  out = linear_probe.probe(_blobs(90, 0), _blobs(90, 1), _blobs(90, 2), 3, shots=(2, 5),
                           draws=3)
  assert set(out) == {'2shot', '2shot_std', '2shot_l2', '5shot', '5shot_std', '5shot_l2',
                      'linear', 'linear_l2', 'linear_holdout'}
  assert out['linear'] > 0.85 and out['2shot_std'] > 0.0


def test_representations_are_the_class_token_the_mean_patch_and_a_block():
  net = config_lib.build_model(MODEL, num_classes=None, classifier='unpooled')
  images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), np.uint8)
  params = nn.unbox(net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)['params'])
  out = linear_probe.representations_fn(MODEL, block=0)(params, images)
  token = fewshot.make_representation_fn(MODEL.replace(classifier='token'))(params, images)
  np.testing.assert_allclose(out['class_token'], token, rtol=1e-5, atol=1e-6)
  last = linear_probe.representations_fn(MODEL, block=1)(params, images)
  # Block 1 is the last block: its output, before encoder_norm, differs from the normed one.
  assert out['block0_mean_patch'].shape == (3, 16)
  assert not np.allclose(last['block1_mean_patch'], last['mean_patch'])
  with pytest.raises(ConfigError, match=r'config.probe_block=2: must be in \[0, 2\)'):
    linear_probe.representations_fn(MODEL, block=2)
