"""Architecture ablations as config switches (issue 12): posemb kinds, axial attention, GAP."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.supervised import fashion_mnist as base_config
from supervised import objective
from vit import config as config_lib
from vit.data import fashion_mnist
from vit.errors import ConfigError
from vit.models import vit
from vit.training import optimizers, step as step_lib
from vit.training.state import TrainState


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _tiny(**model) -> ml_collections.ConfigDict:
  """Fashion-MNIST at 28 px, 4x4 patches (7x7 grid), width 32, 2 layers, 2 heads."""
  config = base_config.get_config()
  config.data.channels = 1
  config.model.hidden_size = 32
  config.model.transformer.mlp_dim = 64
  config.model.transformer.num_heads = 2
  config.model.transformer.num_layers = 2
  for key, value in model.items():
    config.model[key] = value
  return config


def _init_shapes(config, image_size=None):
  model = config_lib.build_model(config_lib.validate(config))
  size = image_size or config.image_size
  return jax.eval_shape(lambda: nn.unbox(model.init(
      jax.random.key(0), jnp.zeros((1, size, size, config.data.channels)),
      train=False)['params']))


def test_default_layout_is_the_official_one():
  params = _init_shapes(_tiny())
  assert set(params['Transformer']) == {'posembed_input', 'encoderblock_0', 'encoderblock_1',
                                        'encoder_norm'}
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 50, 32)
  config = config_lib.defaults()
  config.model.name, config.model.num_classes = 'ViT-B/16', 1000
  assert _count(_init_shapes(config)) == 86_567_656


@pytest.mark.parametrize('posemb, attention, extra', [
    # Relative to posemb='none' (no position parameters) with the same attention.
    ('learned_1d', 'global', 50 * 32),
    ('learned_2d', 'global', 7 * 16 + 7 * 16 + 32),          # rows, cols (half width), class
    ('relative', 'global', 2 * (13 * 13 * 2 + 3 * 2)),      # per layer: offsets x heads + cls
    ('sincos_2d', 'global', 0),
    ('learned_1d', 'axial', 50 * 32),
    ('relative', 'axial', 4 * (13 * 13 * 2 + 3 * 2)),       # two blocks per axial layer
])
def test_parameter_counts_per_switch(posemb, attention, extra):
  none = _count(_init_shapes(_tiny(posemb='none', attention=attention)))
  assert _count(_init_shapes(_tiny(posemb=posemb, attention=attention))) == none + extra


def test_axial_layer_is_two_full_blocks():
  # AxialViT (Appendix D.6): each layer is a row block and a column block, each with an MLP.
  glob = _init_shapes(_tiny(posemb='none'))['Transformer']
  axial = _init_shapes(_tiny(posemb='none', attention='axial'))['Transformer']
  assert sorted(axial) == ['encoder_norm', 'encoderblock_0_col', 'encoderblock_0_row',
                           'encoderblock_1_col', 'encoderblock_1_row']
  block = _count(glob['encoderblock_0'])
  assert _count(axial) == _count(glob) + 2 * block


@pytest.mark.parametrize('posemb, attention, classifier', [
    *((p, a, c) for p in config_lib.POSEMBS for a in config_lib.ATTENTIONS
      for c in ('token', 'unpooled')),
    ('learned_1d', 'axial', 'gap'), ('relative', 'global', 'gap'), ('learned_2d', 'global', 'gap')])
def test_output_shapes(posemb, attention, classifier):
  config = _tiny(posemb=posemb, attention=attention, classifier=classifier)
  model = config_lib.build_model(config_lib.validate(config))
  out = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((3, 28, 28, 1)), train=False)[0])
  assert out.shape == ((3, 50, 32) if classifier == 'unpooled' else
                       (3, 10))


def test_validation_names_the_key():
  with pytest.raises(ConfigError, match=r'config.model.posemb=.learned_3d.: must be one of'):
    config_lib.validate(_tiny(posemb='learned_3d'))
  with pytest.raises(ConfigError, match=r'config.model.attention=.local.: must be one of'):
    config_lib.validate(_tiny(attention='local'))
  config = _tiny(posemb='sincos_2d')
  config.model.hidden_size, config.model.transformer.num_heads = 34, 2
  with pytest.raises(ConfigError, match=r'model.hidden_size=34: must be a multiple of 4'):
    config_lib.validate(config)


def test_sincos_2d_values():
  pe = vit.sincos_2d((3, 5), 8)  # Two frequencies per quarter: 1 and 1/10000.
  assert pe.shape == (15, 8)
  row, col = 2, 3
  expected = [np.sin(col), np.sin(col * 1e-4), np.cos(col), np.cos(col * 1e-4),
              np.sin(row), np.sin(row * 1e-4), np.cos(row), np.cos(row * 1e-4)]
  np.testing.assert_allclose(pe[row * 5 + col], expected, rtol=1e-6, atol=1e-7)


def test_relative_bias_depends_only_on_the_offset():
  module = vit.RelativePositionBias((3, 4), num_heads=2, num_prefix_tokens=1)
  variables = nn.unbox(module.init(jax.random.key(0)))
  bias = np.asarray(module.apply(variables))[0]
  table = np.asarray(variables['params']['rel_table'])
  prefix = np.asarray(variables['params']['prefix_bias'])
  assert bias.shape == (2, 13, 13)
  for q, k in [(0, 5), (5, 0), (6, 11), (11, 2)]:
    (qr, qc), (kr, kc) = divmod(q, 4), divmod(k, 4)
    np.testing.assert_array_equal(bias[:, 1 + q, 1 + k], table[qr - kr + 2, qc - kc + 3])
  np.testing.assert_array_equal(bias[:, 0, 0], prefix[2])
  np.testing.assert_array_equal(bias[:, 0, 7], prefix[0])
  np.testing.assert_array_equal(bias[:, 7, 0], prefix[1])


def _reference_axial(x, p, grid, axis, heads):
  """Row-then-column attention written out: loops over lines of the grid, in numpy."""
  proj = lambda n: np.einsum('td,dhk->thk', x, p[n]['kernel']) + p[n]['bias']
  q, k, v = proj('query'), proj('key'), proj('value')
  t, h, d = q.shape
  gh, gw = grid
  prefix = t - gh * gw
  y = np.zeros_like(q)

  def attend(qi, keys):
    logits = np.einsum('hd,khd->hk', q[qi], k[keys]) / np.sqrt(d)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    y[qi] = np.einsum('hk,khd->hd', w, v[keys])

  for qi in range(prefix):
    attend(qi, np.arange(t))
  for r in range(gh):
    for c in range(gw):
      line = ([prefix + r * gw + j for j in range(gw)] if axis == 'row' else
              [prefix + i * gw + c for i in range(gh)])
      attend(prefix + r * gw + c, np.array(list(range(prefix)) + line))
  return np.einsum('thk,hkd->td', y, p['out']['kernel']) + p['out']['bias']


@pytest.mark.parametrize('axis', ['row', 'col'])
@pytest.mark.parametrize('prefix', [0, 1])
def test_axial_attention_equals_handwritten(axis, prefix):
  grid, width, heads = (3, 4), 8, 2
  x = jax.random.normal(jax.random.key(1), (2, prefix + 12, width))
  module = vit.MultiHeadDotProductAttention(heads, axis=axis, grid=grid)
  params = nn.unbox(module.init(jax.random.key(2), x, deterministic=True)['params'])
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(3), a.shape),
                        params)  # Non-zero biases too.
  fast = module.apply({'params': params}, x, deterministic=True)
  masked, state = module.apply({'params': params}, x, deterministic=True,
                               mutable=['intermediates'])
  host = jax.tree.map(np.asarray, params)
  for b in range(2):
    expected = _reference_axial(np.asarray(x[b]), host, grid, axis, heads)
    np.testing.assert_allclose(fast[b], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(masked[b], expected, rtol=1e-5, atol=1e-5)
  weights = np.asarray(state['intermediates']['attention_weights'][0])
  assert weights.shape == (2, heads, prefix + 12, prefix + 12)
  assert np.all(weights[..., ~vit.axial_mask(grid, prefix + 12, axis)] == 0)


@pytest.mark.parametrize('posemb', ['learned_1d', 'learned_2d', 'relative'])
def test_learned_posembs_resize(posemb):
  """Tables linear in position stay linear after resizing, and fit the model at a new size."""
  config = _tiny(posemb=posemb)
  model = config_lib.build_model(config_lib.validate(config))
  params = jax.device_get(nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)),
                                              train=False)['params']))
  enc = params['Transformer']
  ramp = lambda n: np.linspace(-1.0, 1.0, n, dtype=np.float32)
  if posemb == 'learned_1d':
    rows, cols = np.meshgrid(ramp(7), ramp(7), indexing='ij')
    grid = (rows + 2 * cols).reshape(1, 49, 1) * np.ones((1, 1, 32), np.float32)
    cls = enc['posembed_input']['pos_embedding'][:, :1]
    enc['posembed_input']['pos_embedding'] = np.concatenate([cls, grid], axis=1)
  elif posemb == 'learned_2d':
    enc['posembed_input']['pos_embedding_row'] = np.outer(ramp(7), np.ones(16, np.float32))
    enc['posembed_input']['pos_embedding_col'] = np.outer(ramp(7), 3 * np.ones(16, np.float32))
  else:
    dr, dc = np.meshgrid(ramp(13), ramp(13), indexing='ij')
    enc['relposemb_0']['rel_table'] = np.repeat((dr - dc)[..., None], 2, axis=-1)
  resized = vit.resize_position_params(params, (10, 10))  # 28 px -> 40 px.
  expected_shapes = jax.tree.map(lambda a: a.shape, _init_shapes(config, image_size=40))
  assert jax.tree.map(lambda a: a.shape, resized) == expected_shapes
  new = resized['Transformer']
  if posemb == 'learned_1d':
    pe = new['posembed_input']['pos_embedding']
    np.testing.assert_array_equal(pe[:, 0], cls[:, 0])
    rows, cols = np.meshgrid(ramp(10), ramp(10), indexing='ij')
    np.testing.assert_allclose(pe[0, 1:, 5], (rows + 2 * cols).ravel(), atol=1e-5)
  elif posemb == 'learned_2d':
    np.testing.assert_allclose(new['posembed_input']['pos_embedding_row'][:, 0], ramp(10),
                               atol=1e-6)
    np.testing.assert_allclose(new['posembed_input']['pos_embedding_col'][:, 3], 3 * ramp(10),
                               atol=1e-6)
    np.testing.assert_array_equal(new['posembed_input']['pos_embedding_prefix'],
                                  enc['posembed_input']['pos_embedding_prefix'])
  else:
    dr, dc = np.meshgrid(ramp(19), ramp(19), indexing='ij')
    np.testing.assert_allclose(new['relposemb_0']['rel_table'][..., 1], dr - dc, atol=1e-5)
    np.testing.assert_array_equal(new['relposemb_1']['prefix_bias'],
                                  enc['relposemb_1']['prefix_bias'])
  logits = model.apply({'params': resized}, jnp.zeros((2, 40, 40, 1)), train=False)
  assert logits.shape == (2, 10)


_VARIANTS = [
    dict(),  # The paper's ViT: learned 1D posemb, class token, global attention.
    dict(posemb='learned_2d'),
    dict(posemb='relative'),
    dict(posemb='sincos_2d'),
    dict(posemb='none'),
    dict(attention='axial'),
    dict(classifier='gap'),
]


@pytest.fixture(scope='module')
def fashion_batches():
  images, labels = fashion_mnist.load('train')
  return images[:2048].reshape(32, 64, 28, 28, 1), labels[:2048].reshape(32, 64)


@pytest.mark.parametrize('switch', _VARIANTS, ids=lambda s: ','.join(
    f'{k}={v}' for k, v in s.items()) or 'default')
def test_training_loss_falls(switch, fashion_batches):
  config = _tiny(**switch)
  config.model.transformer.num_layers = 1  # One layer (two blocks if axial) keeps compiles short.
  # 7x7 patches (a 4x4 grid, 17 tokens, not 50) and batches of 64: a step costs a sixth of what
  # 4x4 patches and 128 did, and the higher rate makes the fall clearer in fewer steps (every
  # variant measured fell 0.74 to 1.02 over three seeds; at 4x4, 128, 3e-3, 50 steps: 0.43 to 0.77).
  config.model.patches.size = (7, 7)
  config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-2, 5
  config.total_steps = 40
  model = config_lib.build_model(config_lib.validate(config))
  tx, schedule = optimizers.build(config.optimizer, config.total_steps)
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)),
                               train=False)['params'])
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     ema_params=None, rng=jax.random.key_data(jax.random.key(1)),
                     skipped_steps=jnp.zeros((), jnp.int32))
  train_step = jax.jit(step_lib.make_train_step(objective.make_loss_fn(model), tx, schedule))
  images, labels = fashion_batches
  losses = []
  for i in range(config.total_steps):
    state, metrics = train_step(state, {'image': images[i % 32], 'label': labels[i % 32]})
    losses.append(metrics['loss'])
  losses = np.asarray(jax.device_get(losses))
  assert np.isfinite(losses).all()
  # ln(10) = 2.30 at the start (zero head); 40 steps bring every variant to about 1.6 or below.
  assert losses[:3].mean() > 2.2
  assert losses[-5:].mean() < losses[:3].mean() - 0.4, losses


def test_remat_gives_the_same_logits_and_gradients_for_the_switches():
  config = _tiny(posemb='relative', attention='axial')
  config.model.transformer.num_layers = 1
  m = config_lib.validate(config)
  plain = config_lib.build_model(m)
  remat = config_lib.build_model(m.replace(remat=True))
  x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1), minval=-1, maxval=1)
  params = nn.unbox(plain.init(jax.random.key(1), x, train=False)['params'])
  params['head']['kernel'] = jax.random.normal(jax.random.key(2), params['head']['kernel'].shape)
  loss = lambda model: lambda p: jnp.sum(model.apply({'params': p}, x, train=False) ** 2)
  # Jitted, as the training step runs them: one compile each, not one per op.
  (a, ga), (b, gb) = (jax.jit(jax.value_and_grad(loss(model)))(params)
                      for model in (plain, remat))
  np.testing.assert_allclose(a, b, rtol=1e-5)
  # Gradients reach 3e5 here, and the keys' bias gets exactly zero in exact arithmetic: what the
  # two programs' rounding leaves is relative to the largest gradient (5e-6 on the keys' bias,
  # 5e-4 on an embedding bias of 1.9e3, with the tests' elemental emitters, tests/conftest.py),
  # so the absolute tolerance is 1e-7 of it. A recomputation that differed (another mask, rng or
  # block) moves gradients by their own size.
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(gb))
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-7 * scale),
               ga, gb)
