"""The ViT backbone: parameter counts and names, heads, dropout, attention weights, posemb
resize, scanned blocks, remat policies, the LayerNorm's implementations."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit import architecture, config as config_lib
from vit.models import presets, summary, vit as vit_model
from vit.models.vit import VisionTransformer, resize_posemb

# The official figures: 1000 classes, 224 px, no representation layer (vit_jax models_test.py).
OFFICIAL_COUNTS = {
    'ViT-Ti/16': 5_717_416,
    'ViT-S/16': 22_050_664,
    'ViT-B/16': 86_567_656,
    'ViT-B/32': 88_224_232,
    'ViT-L/16': 304_326_632,
    'ViT-H/14': 632_045_800,
    'R50+ViT-B/16': 98_659_112,
    'ViT-S/32': 22_878_952,
    'ViT-L/32': 306_535_400,
}


def _preset(name, **overrides):
  config = config_lib.defaults()
  config.model.name = name
  config.model.num_classes = 1000
  config.image_size = 224
  for key, value in overrides.items():
    config.model[key] = value
  return config_lib.build_model(config_lib.validate(config, num_devices=1))


@pytest.mark.parametrize('name', sorted(OFFICIAL_COUNTS))
def test_parameter_count_matches_official(name):
  params = summary.abstract_params(_preset(name), 224)  # eval_shape: nothing allocated
  assert summary.count(params) == OFFICIAL_COUNTS[name]


def test_all_tested():
  # Every preset has its official count above (vit_jax's models_test `test_all_tested`).
  assert set(presets.PRESETS) == set(OFFICIAL_COUNTS)


def tiny(**kw):
  args = dict(num_classes=5, patch_size=(4, 4), hidden_size=16, num_layers=2, mlp_dim=32,
              num_heads=2)
  args.update(kw)
  return VisionTransformer(**args)


def _init(model, size=16, batch=2):
  x = jax.random.normal(jax.random.key(1), (batch, size, size, 3))
  params = nn.unbox(model.init(jax.random.key(0), x, train=False)['params'])
  return params, x


def _names(tree, prefix=''):
  out = set()
  for k, v in tree.items():
    out |= _names(v, f'{prefix}{k}/') if isinstance(v, dict) else {f'{prefix}{k}'}
  return out


def test_parameter_names_are_the_official_checkpoint_layout():
  params, _ = _init(tiny(representation_size=8))
  block = 'Transformer/encoderblock_1'
  expected = {
      'cls', 'embedding/kernel', 'embedding/bias',
      'Transformer/posembed_input/pos_embedding',
      'Transformer/encoder_norm/scale', 'Transformer/encoder_norm/bias',
      'pre_logits/kernel', 'pre_logits/bias', 'head/kernel', 'head/bias',
  }
  for block in ('Transformer/encoderblock_0', 'Transformer/encoderblock_1'):
    for ln in ('LayerNorm_0', 'LayerNorm_2'):
      expected |= {f'{block}/{ln}/scale', f'{block}/{ln}/bias'}
    for proj in ('query', 'key', 'value', 'out'):
      expected |= {f'{block}/MultiHeadDotProductAttention_1/{proj}/{w}'
                   for w in ('kernel', 'bias')}
    expected |= {f'{block}/MlpBlock_3/Dense_{i}/{w}' for i in (0, 1) for w in ('kernel', 'bias')}
  assert _names(params) == expected
  attn = params['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_1']
  assert attn['query']['kernel'].shape == (16, 2, 8)  # [embed, heads, head_dim]
  assert attn['out']['kernel'].shape == (2, 8, 16)
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 17, 16)
  assert not np.any(params['head']['kernel'])  # zero-initialised head


def test_token_gap_unpooled_and_representation_shapes():
  for classifier, has_cls in (('token', True), ('gap', False)):
    model = tiny(classifier=classifier)
    params, x = _init(model)
    assert ('cls' in params) == has_cls
    assert model.apply({'params': params}, x, train=False).shape == (2, 5)
  model = tiny(classifier='unpooled', num_classes=None)
  params, x = _init(model)
  assert model.apply({'params': params}, x, train=False).shape == (2, 17, 16)
  model = tiny(num_classes=None, representation_size=8)
  params, x = _init(model)
  features = model.apply({'params': params}, x, train=False)
  assert features.shape == (2, 8) and np.all(np.abs(features) <= 1.0)  # tanh


def test_gap_averages_the_encoded_tokens():
  gap = tiny(classifier='gap', num_classes=None)
  params, x = _init(gap)
  pooled, state = gap.apply({'params': params}, x, train=False, mutable=['intermediates'],
                            capture_intermediates=lambda mdl, _: mdl.name == 'Transformer')
  encoded = state['intermediates']['Transformer']['__call__'][0]
  assert encoded.shape == (2, 16, 16)  # no class token with GAP
  np.testing.assert_allclose(pooled, encoded.mean(axis=1), rtol=1e-6, atol=1e-6)


def test_dropout_is_deterministic_under_a_fixed_rng():
  model = tiny(dropout_rate=0.3, attention_dropout_rate=0.3, classifier='unpooled',
               num_classes=None)
  params, x = _init(model)
  run = jax.jit(lambda seed, train: model.apply({'params': params}, x, train=train,
                                                rngs={'dropout': jax.random.key(seed)}),
                static_argnums=1)
  np.testing.assert_array_equal(run(7, True), run(7, True))
  assert not np.allclose(run(7, True), run(8, True))
  np.testing.assert_array_equal(run(7, False), run(8, False))


def test_sown_attention_weights_and_fast_path_agree():
  model = tiny(num_classes=None, classifier='unpooled')
  params, x = _init(model)
  fast = model.apply({'params': params}, x, train=False)
  slow, state = model.apply({'params': params}, x, train=False, mutable=['intermediates'])
  np.testing.assert_allclose(fast, slow, atol=1e-5)
  weights = state['intermediates']['Transformer']['encoderblock_1'][
      'MultiHeadDotProductAttention_1']['attention_weights'][0]
  assert weights.shape == (2, 2, 17, 17)  # [batch, heads, query, key]
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)


def test_attention_kernel_xla_is_the_default_computation():
  # model.attention_kernel picks jax.nn.dot_product_attention's implementation; 'xla' must
  # compute what JAX's own choice does on this platform (parameters unchanged).
  auto, xla = tiny(), tiny(attention_kernel='xla')
  params, x = _init(auto)
  np.testing.assert_allclose(auto.apply({'params': params}, x, train=False),
                             xla.apply({'params': params}, x, train=False), atol=1e-6)


def test_padding_an_odd_sequence_for_cudnn_changes_nothing():
  from vit.models.vit import attention_padded_to_even
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 17, 4, 8))  # 17 tokens: odd.
  plain = jax.jit(jax.nn.dot_product_attention)(q, k, v)
  # The padding logic, on any platform; jitted, as a model runs it.
  padded = jax.jit(attention_padded_to_even, static_argnums=3)(q, k, v, 'xla')
  np.testing.assert_allclose(padded, plain, atol=1e-6)
  grad = lambda f: jax.jit(jax.grad(lambda q: jnp.sum(jnp.sin(f(q)))))(q)
  np.testing.assert_allclose(grad(lambda q: attention_padded_to_even(q, k, v, 'xla')),
                             grad(lambda q: jax.nn.dot_product_attention(q, k, v)), atol=1e-6)


def test_gelu_tanh_is_nn_gelu_with_the_same_gradient():
  from vit.models.gelu import gelu_tanh
  reference = lambda x: nn.gelu(x, approximate=True)
  x = jnp.linspace(-8.0, 8.0, 2001)
  np.testing.assert_array_equal(gelu_tanh(x), reference(x))
  np.testing.assert_allclose(jax.vmap(jax.grad(gelu_tanh))(x),
                             jax.vmap(jax.grad(reference))(x), atol=1e-5)
  xb = x.astype(jnp.bfloat16)  # The backward pass computes in float32 and returns x's dtype.
  grad_b = jax.vmap(jax.grad(gelu_tanh))(xb)
  assert grad_b.dtype == jnp.bfloat16
  np.testing.assert_allclose(grad_b.astype(jnp.float32), jax.vmap(jax.grad(reference))(
      xb.astype(jnp.float32)), atol=2e-2)


def test_layer_norm_is_flax_layer_norm_with_the_same_gradients():
  from vit.models.layer_norm import LayerNorm
  rng = np.random.default_rng(0)
  # Rows of different scales and offsets, as activations between blocks.
  x = jnp.asarray(rng.normal(3.0, 5.0, (4, 65, 64)) * rng.uniform(0.1, 10, (4, 65, 1)),
                  jnp.float32)
  ours, ref = LayerNorm(epsilon=1e-6), nn.LayerNorm(epsilon=1e-6)
  params = ref.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(
      jnp.shape, params)
  params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(0, 0.5, p.shape), p.dtype), params)
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), atol=1e-5)
  dy = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  loss = lambda m: lambda p, x: jnp.sum(m.apply(p, x) * dy)
  (gp, gx), (rp, rx) = (jax.grad(loss(m), argnums=(0, 1))(params, x) for m in (ours, ref))
  np.testing.assert_allclose(gx, rx, atol=1e-5)
  for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(rp)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  # What it is for: on a CPU, no reduce-window (XLA's tree reduction) in either pass.
  hlo = jax.jit(jax.grad(loss(ours), argnums=(0, 1))).lower(params, x).compile().as_text()
  assert 'reduce-window' not in hlo
  assert 'reduce-window' in jax.jit(jax.grad(loss(ref), argnums=(0, 1))).lower(
      params, x).compile().as_text()


def test_gelu_tanh_backward_keeps_less_than_nn_gelus():
  # What it is for: XLA must not keep tanh(u) of every layer for the backward pass.
  from vit.models.gelu import gelu_tanh
  tokens, width, layers = 512, 256, 6

  def temp_bytes(act):
    def loss(ws, x):
      for w1, w2 in ws:
        x = x + act(x @ w1) @ w2
      return jnp.sum(x ** 2)
    ws = [(jnp.ones((64, width)), jnp.ones((width, 64)))] * layers
    step = jax.jit(jax.grad(loss)).lower(ws, jnp.ones((tokens, 64))).compile()
    return step.memory_analysis().temp_size_in_bytes

  saved = temp_bytes(lambda x: nn.gelu(x, approximate=True)) - temp_bytes(gelu_tanh)
  assert saved >= 3 * tokens * width * 4, saved  # 4 of the 6 layers' tanh tensors today.


def test_hybrid_uses_the_resnet_feature_map():
  from vit.models.resnet import ResNetConfig
  model = tiny(patch_size=(1, 1), resnet=ResNetConfig((1, 1)))
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  # Jitted: the ResNet's ops, run one by one, would each compile once for this test alone.
  params = jax.jit(lambda rng: nn.unbox(model.init(rng, x, train=False)['params']))(
      jax.random.key(0))
  assert {'conv_root', 'gn_root', 'block1', 'block2'} <= set(params)
  # 32 px / stride 8 (root 2, pool 2, one strided stage) = 4x4 tokens + class token.
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 17, 16)
  assert jax.jit(lambda p: model.apply({'params': p}, x, train=False))(params).shape == (2, 5)


def test_posemb_resize_is_identity_at_equal_size():
  posemb = np.random.default_rng(0).normal(size=(1, 1 + 16, 8)).astype(np.float32)
  np.testing.assert_array_equal(resize_posemb(posemb, (4, 4)), posemb)


def test_posemb_resize_is_exact_on_a_linear_grid():
  # A grid linear in (row, col) is reproduced exactly by linear interpolation, with the corner
  # cells aligned (scipy.ndimage.zoom, order 1, as the official checkpoint.py).
  old, new = 4, 7
  rows, cols = np.meshgrid(np.arange(old), np.arange(old), indexing='ij')
  grid = np.stack([2.0 * rows + 3.0 * cols, -rows + 0.5 * cols], -1).reshape(1, old * old, 2)
  cls = np.array([[[9.0, -9.0]]])
  out = resize_posemb(np.concatenate([cls, grid], 1), (new, new))
  assert out.shape == (1, 1 + new * new, 2)
  np.testing.assert_array_equal(out[:, :1], cls)
  r, c = np.meshgrid(np.arange(new), np.arange(new), indexing='ij')
  scale = (old - 1) / (new - 1)
  expected = np.stack([2.0 * r * scale + 3.0 * c * scale, -r * scale + 0.5 * c * scale], -1)
  np.testing.assert_allclose(out[0, 1:].reshape(new, new, 2), expected, atol=1e-5)


def test_scanned_blocks_give_the_looped_logits_and_convert_both_ways():
  looped, scanned = tiny(num_layers=3), tiny(num_layers=3, scan_layers=True)
  params, x = _init(looped)
  stacked = vit_model.stack_blocks(params)
  assert 'encoderblock_0' not in stacked['Transformer']
  kernel = stacked['Transformer']['encoderblock']['MlpBlock_3']['Dense_0']['kernel']
  assert kernel.shape == (3, 16, 32)  # [layers, embed, mlp]
  # The scanned model's own init has exactly this tree.
  own, _ = _init(scanned)
  assert jax.tree.map(jnp.shape, own) == jax.tree.map(jnp.shape, stacked)
  np.testing.assert_allclose(scanned.apply({'params': stacked}, x, train=False),
                             looped.apply({'params': params}, x, train=False),
                             rtol=1e-6, atol=1e-6)
  back = vit_model.unstack_blocks(stacked)
  assert _names(back) == _names(params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)  # Bitwise both ways.
  assert vit_model.unstack_blocks(params) is params  # Already looped: unchanged.
  with pytest.raises(ValueError, match='already stacked'):
    vit_model.stack_blocks(stacked)


def test_scanned_blocks_carry_a_layers_axis_for_sharding():
  boxed = jax.eval_shape(lambda: tiny(scan_layers=True).init(
      jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False))['params']
  kernel = boxed['Transformer']['encoderblock']['MlpBlock_3']['Dense_0']['kernel']
  assert kernel.names == ('layers', 'embed', 'mlp')


@pytest.mark.parametrize('scan', [False, True])
def test_remat_policy_keeps_the_gradients(scan):
  params, x = _init(tiny(scan_layers=scan))
  loss = lambda m: lambda p: jnp.sum(m.apply({'params': p}, x, train=False) ** 2 + 1.0)
  # Jitted, as the train step takes them: a policy decides what a compiled backward pass saves
  # (and one program per policy compiles in about half the time op-by-op dispatch took).
  grad = lambda m: jax.jit(jax.grad(loss(m)))
  reference = grad(tiny(scan_layers=scan))(params)
  for policy in (None, 'dots_with_no_batch_dims_saveable', 'everything_saveable'):
    grads = grad(tiny(scan_layers=scan, remat=True, remat_policy=policy))(params)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_layer_norm_implementation_is_chosen_by_name_not_by_this_host():
  from vit.models.layer_norm import LayerNorm
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 64)), jnp.float32)
  params = LayerNorm().init(jax.random.key(0), x)
  hlo = lambda impl: jax.jit(jax.grad(lambda x: jnp.sum(LayerNorm(implementation=impl).apply(
      params, x) ** 2))).lower(x).compile().as_text()
  # On this CPU, 'reduce' is what a TPU runs: XLA's reductions (as reduce-windows here).
  assert 'reduce-window' in hlo('reduce') and 'reduce-window' not in hlo('dots')
  np.testing.assert_allclose(LayerNorm(implementation='reduce').apply(params, x),
                             LayerNorm(implementation='dots').apply(params, x), atol=1e-5)
  config = config_lib.defaults()
  config.model.name = 'ViT-Ti/16'  # model.layer_norm at its default, 'auto'.
  m = config_lib.validate(config, num_devices=1)
  assert config_lib.layer_norm(m, 'tpu') == 'reduce' and config_lib.layer_norm(m, 'cpu') == 'dots'
  assert config_lib.layer_norm(m.replace(layer_norm='reduce'), 'cpu') == 'reduce'


@pytest.mark.parametrize('key,value', [('posemb', 'learned_3d'), ('attention', 'local')])
def test_unknown_posemb_or_attention_is_refused_in_one_line(key, value):
  with pytest.raises(ValueError) as e:
    _init(tiny(**{key: value}))
  assert re.fullmatch(f"model.{key}='{value}': must be one of [a-z_0-9, ]+", e.value.args[0])


@pytest.mark.parametrize('overrides,message', [
    (dict(layer_norm='fast'), "model.layer_norm='fast': must be one of auto, dots, reduce"),
    (dict(remat=True, remat_policy='save_all'),
     "model.remat_policy='save_all': not a jax.checkpoint_policies name, e.g. nothing_saveable"),
])
def test_unknown_layer_norm_or_remat_policy_is_refused_in_one_line(overrides, message):
  # As a model dict saved elsewhere would reach the model: past vit.config.validate.
  with pytest.raises(ValueError) as e:
    _init(tiny(**overrides))
  assert e.value.args[0] == message


@pytest.mark.parametrize('flag, line', [
    ('--num_classes=-1', 'error: flag --num_classes=-1: -1 is not a non-negative integer'),
    ('--depth=0', 'error: flag --depth=0: 0 is not a positive integer'),
    ('--representation_size=0', 'error: flag --representation_size=0: 0 is not a positive '
                                'integer'),
    ('--image_size=30', 'error: --image_size=30: not divisible by the patch size 16 '
                        '(model.patches.size=(16, 16))'),
    ('--model=ViT-X/16', 'error: --model=ViT-X/16: unknown preset; known: ViT-Ti/16, ViT-S/16, '
                         'ViT-S/32, ViT-B/16, ViT-B/32, ViT-L/16, ViT-L/32, ViT-H/14, '
                         'R50+ViT-B/16'),
    ('ViT-B/16', "error: unexpected argument 'ViT-B/16': this command takes only flags "
                 "(--name=value; --help lists them)"),  # Was ignored: ViT-Ti/16 summarised.
])
def test_summary_flags_out_of_range_are_one_line(flag, line):
  """--num_classes=-1 was a JAX traceback (a negative shape); --depth=-1 an empty table;
  --image_size=30 and --model=ViT-X/16 named config keys the user never typed
  (config.image_size=30), now the flags."""
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = subprocess.run([sys.executable, '-m', 'vit.models.summary', '--model=ViT-Ti/16', flag],
                       cwd=root, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert run.returncode != 0 and 'Traceback' not in run.stderr
  assert run.stderr.strip().splitlines()[0] == line


def test_summary_names_a_posemb_and_pre_logits_only_when_not_the_default():
  """The one-line model summary (fine-tuning's, export's and init errors' first line) said
  nothing of a position embedding other than learned_1d, a representation layer, axial
  attention or a hybrid's ResNet stem."""
  def line(**kw):
    config = config_lib.defaults()
    config.model.update(**{'name': 'ViT-B/16', **kw})
    config.image_size = 224
    return architecture.summary(config_lib.validate(config, num_devices=1))

  usual = 'patches (16, 16), hidden 768, mlp 3072, heads 12, layers 12'
  assert line() == usual
  assert line(posemb='sincos_2d') == usual + ', posemb sincos_2d'
  assert line(posemb='none', representation_size=768) == usual + ', posemb none, pre-logits 768'
  # Nor of axial attention or a hybrid's ResNet stem, which change the parameters too.
  assert line(attention='axial') == usual + ', axial attention'
  hybrid = line(name='R50+ViT-B/16')
  assert hybrid.endswith('layers 12, ResNet stem (3, 4, 9)'), hybrid
  wide = line(name='R50+ViT-B/16', resnet=dict(num_layers=(2, 2), width_factor=0.5))
  assert wide.endswith('layers 12, ResNet stem (2, 2) width 0.5'), wide

