"""The fine-tuning and pretraining optimisers and Polyak averaging, against hand computation."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs.finetune import fashion_mnist as ft_config
from configs.mpp import fashion_mnist as mpp_config
from configs.supervised import fashion_mnist as sup_config
from mpp import objective
from vit import config as config_lib
from vit.training import optimizers, step as step_lib
from vit.training.state import TrainState


def _state(params, tx, ema=True):
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    ema_params=params if ema else None,
                    rng=jax.random.key_data(jax.random.key(0)),
                    skipped_steps=jnp.zeros((), jnp.int32))


def _linear_loss(coef):
  """L(w) = sum(coef * w): the gradient is `coef` whatever w is."""
  def loss_fn(params, batch, rng, train):
    del batch, rng, train
    return sum(jnp.sum(c * p) for c, p in zip(jax.tree.leaves(coef), jax.tree.leaves(params))), {}
  return loss_fn


def _opt(**kw):
  opt = ft_config.get_config().optimizer
  opt.update(kw)
  return opt


def test_warmup_then_cosine_schedule():
  schedule = optimizers.learning_rate(_opt(learning_rate=0.1, warmup_steps=10), 110)
  for t in (0, 5, 10):
    np.testing.assert_allclose(schedule(t), 0.1 * t / 10, rtol=1e-6)
  for t in (10, 35, 60, 110):
    np.testing.assert_allclose(schedule(t), 0.05 * (1 + math.cos(math.pi * (t - 10) / 100)),
                               rtol=1e-5, atol=1e-8)
  linear = optimizers.learning_rate(_opt(learning_rate=0.1, warmup_steps=10, decay='linear'), 110)
  np.testing.assert_allclose(linear(60), 0.05, rtol=1e-6)


def test_sgd_momentum_with_clipping_and_polyak_average():
  """The fine-tuning step: clip to global norm 1, SGD momentum 0.9, no decay; EMA beside it."""
  opt = _opt(learning_rate=0.5, warmup_steps=0, decay='constant', grad_clip_norm=1.0)
  tx, schedule = optimizers.build(opt, 10)
  params = {'w': jnp.array([[1.0, -2.0], [0.5, 3.0]]), 'b': jnp.array([0.25, 0.0])}
  coef = {'w': jnp.array([[3.0, 0.0], [4.0, 0.0]]), 'b': jnp.array([0.0, 12.0])}  # norm 13
  decay = 0.8
  train_step = jax.jit(step_lib.make_train_step(_linear_loss(coef), tx, schedule,
                                                ema_decay=decay))
  state = _state(params, tx)
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  ema, momentum = dict(p), {k: np.zeros_like(v) for k, v in p.items()}
  g = {k: np.asarray(v, np.float64) / 13.0 for k, v in coef.items()}  # Clipped to norm 1.
  for _ in range(3):
    state, metrics = train_step(state, {})
    for k in p:
      momentum[k] = g[k] + 0.9 * momentum[k]
      p[k] = p[k] - 0.5 * momentum[k]
      ema[k] = decay * ema[k] + (1 - decay) * p[k]
    np.testing.assert_allclose(metrics['grad_norm'], 13.0, rtol=1e-6)
  for k in p:
    np.testing.assert_allclose(state.params[k], p[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.ema_params[k], ema[k], rtol=1e-5, atol=1e-6)
  assert int(state.step) == 3


def test_adam_with_decoupled_weight_decay():
  """The pretraining step: Adam (0.9, 0.999) plus wd * lr * w on kernels only (not biases)."""
  opt = sup_config.get_config().optimizer
  opt.update(learning_rate=0.01, warmup_steps=0, decay='constant', weight_decay=0.1,
             grad_clip_norm=0.0)
  tx, schedule = optimizers.build(opt, 10)
  params = {'kernel': jnp.array([[1.0, -2.0]]), 'bias': jnp.array([0.5, -0.5])}
  coef = {'kernel': jnp.array([[0.3, -1.0]]), 'bias': jnp.array([2.0, 0.1])}
  train_step = jax.jit(step_lib.make_train_step(_linear_loss(coef), tx, schedule))
  state = _state(params, tx, ema=False)
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t in range(1, 4):
    state, _ = train_step(state, {})
    for k in p:
      g = np.asarray(coef[k], np.float64)
      m[k] = 0.9 * m[k] + 0.1 * g
      v[k] = 0.999 * v[k] + 0.001 * g * g
      update = (m[k] / (1 - 0.9 ** t)) / (np.sqrt(v[k] / (1 - 0.999 ** t)) + 1e-8)
      decay = 0.1 * p[k] if k == 'kernel' else 0.0
      p[k] = p[k] - 0.01 * (update + decay)
  for k in p:
    np.testing.assert_allclose(state.params[k], p[k], rtol=1e-5, atol=1e-7)
  assert state.ema_params is None


def test_finetune_config_is_the_papers_recipe():
  opt = ft_config.get_config().optimizer
  assert (opt.name, opt.momentum, opt.weight_decay, opt.grad_clip_norm, opt.decay) == (
      'sgd', 0.9, 0.0, 1.0, 'cosine')
  assert ft_config.get_config().ema_decay > 0


def test_weight_decay_only_on_kernels_of_the_real_mpp_tree():
  """big_vision's rule ('.*/kernel$') on the MPP model's own tree: the class token, position
  embedding, mask embedding, LayerNorm scales and biases do not decay, every kernel does."""
  config = mpp_config.get_config()
  model = objective.build_model(config, config_lib.validate(config))
  params = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 3)), None, train=False))
  flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(
      optimizers.decay_mask(nn.unbox(params['params'])))}
  decayed = {k for k, v in flat.items() if v}
  assert decayed and all(k.endswith("['kernel']") for k in decayed)
  assert all(v for k, v in flat.items() if k.endswith("['kernel']"))
  for name in ('cls', 'pos_embedding', 'mask_embedding', 'scale', 'bias'):
    assert any(k.endswith(f"['{name}']") for k in flat), name
    assert not any(v for k, v in flat.items() if k.endswith(f"['{name}']")), name
  # 4 blocks x (q, k, v, out, 2 MLP) + patch embedding + MPP head.
  assert len(decayed) == 4 * 6 + 2


def test_rsqrt_schedule_needs_no_total_length():
  """rsqrt after warmup: the learning rate at step t is the same whatever the run's length."""
  opt = _opt(learning_rate=0.1, warmup_steps=10, decay='rsqrt')
  short, long = optimizers.learning_rate(opt, 100), optimizers.learning_rate(opt, 10_000)
  for t in (0, 5, 10, 50, 100):
    np.testing.assert_allclose(short(t), long(t), rtol=1e-6)
  np.testing.assert_allclose(long(5), 0.05, rtol=1e-6)
  np.testing.assert_allclose(long(10 + 30), 0.1 * math.sqrt(10 / 40), rtol=1e-6)
