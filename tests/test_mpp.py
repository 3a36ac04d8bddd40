"""MPP targets, corruption and loss on hand-computed cases (paper Appendix B.1.2)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.mpp import fashion_mnist, fashion_mnist_grey
from mpp import corruption as corruption_lib
from mpp import images as images_lib
from mpp import objective, targets
from vit import config as config_lib
from vit.data import fashion_mnist as fmnist
from vit.errors import ConfigError
from vit.evaluators import fewshot
from vit.models import patches


def _image(patch_means, patch=2):
  """An image of constant patches: patch_means is [gh, gw, C]."""
  x = np.asarray(patch_means, np.float32)
  return np.repeat(np.repeat(x, patch, axis=0), patch, axis=1)[None]


def test_mean_color_bin_edges_grayscale():
  # 0 -> bin 0; just below 1/8 -> 0; exactly 1/8 -> 1; 1.0 -> top bin 7 (closed).
  image = _image([[[0.0], [0.1249]], [[0.125], [1.0]]])
  np.testing.assert_array_equal(targets.mean_color(image, 2), [[0, 0, 1, 7]])


def test_mean_color_rgb_is_r64_g8_b():
  image = _image([[[1.0, 0.125, 0.0], [0.5, 0.5, 0.5]]])
  # (7, 1, 0) -> 7*64 + 8 = 456; 0.5 -> bin 4 per channel: 4*64 + 4*8 + 4 = 292.
  np.testing.assert_array_equal(targets.mean_color(image, 2), [[456, 292]])


def test_mean_color_averages_the_patch_and_orders_row_major():
  image = np.zeros((1, 4, 4, 1), np.float32)
  image[0, 0, 2:, 0] = 1.0     # Top-right patch: half its pixels white -> mean 0.5 -> bin 4.
  image[0, 2:, :2, 0] = 0.25   # Bottom-left patch: 0.25 -> bin 2.
  np.testing.assert_array_equal(targets.mean_color(image, 2), [[0, 4, 2, 0]])
  np.testing.assert_array_equal(targets.mean_color(image, 2, bits=1), [[0, 1, 0, 0]])


def test_downsampled_color_cells():
  image = np.zeros((1, 4, 8, 1), np.float32)
  image[0, :2, 4:6, 0] = 1.0                # Second patch, top-left 2x2 cell white.
  image[0, 2:, 6:, 0] = 0.5                 # Second patch, bottom-right cell mid grey.
  out = targets.downsampled_color(image, 4, grid=2)
  assert out.shape == (1, 2, 4) and out.dtype == jnp.int32
  np.testing.assert_array_equal(out, [[[0, 0, 0, 0], [7, 0, 0, 4]]])
  # A grid as fine as the patch quantises each pixel.
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(2, 8, 8, 3)).astype(np.float32)
  per_pixel = targets.quantize(patches.patchify(x, 4).reshape(2, 4, 16, 3), 3)
  np.testing.assert_array_equal(targets.downsampled_color(x, 4, grid=4), per_pixel)


def test_downsampled_color_rejects_a_grid_not_dividing_the_patch():
  with pytest.raises(ValueError, match='not divisible'):
    targets.downsampled_color(np.zeros((1, 6, 6, 1)), 6, grid=4)


def test_pixels_are_the_flattened_patches():
  x = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
  out = patches.pixels(x, 2)
  assert out.shape == (2, 4, 12)
  np.testing.assert_array_equal(out[1, 3], x[1, 2:, 2:].reshape(-1))
  np.testing.assert_array_equal(out[0, 1], x[0, :2, 2:].reshape(-1))
  normed = targets.normalize_patches(out)
  np.testing.assert_allclose(normed.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(normed.std(-1), 1.0, atol=1e-3)


def test_unpatchify_puts_the_patches_back():
  x = np.arange(2 * 4 * 6 * 3).reshape(2, 4, 6, 3)
  p = patches.patchify(x, 2)
  np.testing.assert_array_equal(p[0, 4], x[0, 2:4, 2:4])  # Row 1, column 1 of a 2x3 grid.
  np.testing.assert_array_equal(patches.unpatchify(p, (2, 3)), x)


def _spec(target='mean_color', channels=1, rate=0.5):
  return objective.Spec(target, (4, 4), channels, 3, 4, False, rate, 0.8, 0.1)


def test_targets_come_from_unit_pixels_and_vary_across_a_real_batch():
  # Mid grey uint8 128 is 0.502 in [0, 1] (bin 4) but 0.004 in the model's [-1, 1] (bin 0).
  grey = jnp.full((1, 8, 8, 1), 128, jnp.uint8)
  model = objective.MppModel(config_lib.build_model(_tiny_model(), classifier='unpooled'), (8,))
  params = _init(model, (1, 8, 8, 1))
  _, t, _ = jax.jit(lambda *a: objective.forward(model, _spec(), *a, False))(
      params, grey, jax.random.key(1))
  np.testing.assert_array_equal(t, 4)
  images, _ = fmnist.load('test')
  labels = targets.mean_color(images[:32].astype(np.float32) / 255.0, 4)
  assert len(np.unique(np.asarray(labels))) >= 6
  assert len({tuple(row) for row in np.asarray(labels).tolist()}) == 32


def _init(model, shape):
  """`model`'s params, traced on zero images of `shape` without corruption; jitted: one
  compile, not one per op of the initialisers."""
  return jax.jit(lambda rng: model.init(rng, jnp.zeros(shape), None, train=False))(
      jax.random.key(0))['params']


def _tiny_model():
  config = fashion_mnist.get_config()
  config.model.hidden_size = 16
  config.model.transformer.update(mlp_dim=32, num_heads=2, num_layers=1)
  return config_lib.validate(config)


def test_corruption_statistics():
  batch, n, samples = 64, 49, 40
  # Jitted, as the trainers draw it: one compile, not one per op.
  draw = jax.jit(jax.vmap(lambda r: corruption_lib.sample(r, batch, n, rate=0.5)))
  c = draw(jax.random.split(jax.random.key(0), samples))
  counts = np.asarray(c.corrupted.sum(-1))
  np.testing.assert_array_equal(counts, round(0.5 * n))  # Exactly k distinct patches each.
  chosen = c.corrupted.sum()
  assert abs(float(c.masked.sum() / chosen) - 0.8) < 0.01
  assert abs(float(c.replaced.sum() / chosen) - 0.1) < 0.01
  assert not np.any(np.asarray(c.masked & c.replaced))
  assert not np.any(np.asarray((c.masked | c.replaced) & ~c.corrupted))
  per_position = np.asarray(c.corrupted.mean((0, 1)))
  assert np.all(np.abs(per_position - 24 / 49) < 0.05)  # Uniform over positions.
  own = np.arange(batch * n).reshape(batch, n)
  assert not np.any(np.asarray(c.source) == own)
  assert np.asarray(c.source).min() >= 0 and np.asarray(c.source).max() < batch * n
  low = jax.jit(lambda r: corruption_lib.sample(r, batch, n, rate=0.15))(jax.random.key(3))
  np.testing.assert_array_equal(low.corrupted.sum(-1), round(0.15 * n))


def test_sources_within_the_image_stay_there_and_apply_like_flat_indices():
  batch, n = 16, 9
  c = jax.jit(lambda r: corruption_lib.sample(r, batch, n, rate=0.9, mask_fraction=0.0,
                                              random_fraction=1.0, within_image=True))(
      jax.random.key(2))  # Jitted, as the trainers draw it: one compile, not one per op.
  source, own = np.asarray(c.source), np.arange(batch * n).reshape(batch, n)
  assert np.all(source // n == own // n) and not np.any(source == own)
  assert len(np.unique(source % n)) == n  # Every position of the image can be drawn.
  emb = jax.random.normal(jax.random.key(0), (batch, n, 5))
  flat = np.asarray(emb).reshape(batch * n, 5)
  out = np.asarray(jax.jit(corruption_lib.apply)(emb, c, jnp.zeros(5)))
  replaced = np.asarray(c.replaced)
  np.testing.assert_array_equal(out[replaced], flat[source[replaced]])


def test_corruption_is_deterministic_in_the_rng():
  # Each call traced anew (jitted: one compile each, not one per op): randomness drawn while
  # tracing would show.
  sample = lambda key: jax.jit(lambda r: corruption_lib.sample(r, 8, 16))(jax.random.key(key))
  a, b, c = sample(7), sample(7), sample(8)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.corrupted, c.corrupted)


def test_apply_replaces_embeddings():
  emb = jax.random.normal(jax.random.key(0), (4, 9, 5))
  mask = jnp.arange(5.0) + 100.0
  c = jax.jit(lambda r: corruption_lib.sample(r, 4, 9, rate=0.9, mask_fraction=0.5,
                                              random_fraction=0.4))(jax.random.key(1))
  out = np.asarray(jax.jit(corruption_lib.apply)(emb, c, mask))  # One compile, not one per op.
  emb, c = np.asarray(emb), jax.tree.map(np.asarray, c)
  flat = emb.reshape(36, 5)
  for b in range(4):
    for i in range(9):
      if c.masked[b, i]:
        np.testing.assert_array_equal(out[b, i], mask)
      elif c.replaced[b, i]:
        np.testing.assert_array_equal(out[b, i], flat[int(c.source[b, i])])
      else:
        np.testing.assert_array_equal(out[b, i], emb[b, i])
  assert c.masked.any() and c.replaced.any()


@pytest.mark.parametrize('target,shape,targets_of', [
    ('mean_color', (8,), lambda r: jax.random.randint(r, (3, 10), 0, 8)),
    ('downsampled_color', (16, 8), lambda r: jax.random.randint(r, (3, 10, 16), 0, 8)),
    ('pixels', (16,), lambda r: jax.random.uniform(r, (3, 10, 16))),
])
def test_loss_ignores_uncorrupted_positions(target, shape, targets_of):
  spec = _spec(target)
  outputs = jax.random.normal(jax.random.key(0), (3, 10, *shape))
  t = targets_of(jax.random.key(1))
  corrupted = jax.random.uniform(jax.random.key(2), (3, 10)) < 0.4
  masked_loss = jax.jit(lambda *a: objective.masked_loss(spec, *a))  # One compile, not per op.
  loss, metrics = masked_loss(outputs, t, corrupted)
  noise = 5.0 * jax.random.normal(jax.random.key(3), outputs.shape)
  where = corrupted.reshape(3, 10, *([1] * len(shape)))
  loss_u, metrics_u = masked_loss(jnp.where(where, outputs, outputs + noise), t, corrupted)
  loss_c, _ = masked_loss(jnp.where(where, outputs + noise, outputs), t, corrupted)
  np.testing.assert_allclose(loss_u, loss, rtol=1e-6)
  for k in metrics:
    np.testing.assert_allclose(metrics_u[k], metrics[k], rtol=1e-6)
  assert abs(float(loss_c) - float(loss)) > 1e-3


def test_loss_is_the_mean_cross_entropy_over_corrupted_patches():
  outputs = jnp.log(jnp.array([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]]))
  t = jnp.array([[0, 0, 0]])
  loss, metrics = objective.masked_loss(
      objective.Spec('mean_color', (1, 1), 1, 1, 1, False, 0.5, 0.8, 0.1), outputs, t,
      jnp.array([[True, False, True]]))
  np.testing.assert_allclose(loss, (-np.log(0.5) - np.log(0.2)) / 2, rtol=1e-6)
  np.testing.assert_allclose(metrics['accuracy'], 0.5)  # argmax ties go to class 0.


def test_panels_show_mask_and_keep_uncorrupted_patches():
  m = _tiny_model()
  spec = _spec()
  model = objective.MppModel(config_lib.build_model(m, classifier='unpooled'), (8,))
  params = _init(model, (1, 28, 28, 1))
  images, _ = fmnist.load('test')
  x = jnp.asarray(images[:3])
  # Jitted, as the trainer's image writer runs them: one compile each, not one per op.
  panels = jax.jit(lambda *a: images_lib.patch_panels(model, spec, *a))
  original, shown, predicted = panels(params, x, jax.random.key(5))
  _, _, c = jax.jit(lambda *a: objective.forward(model, spec, *a, False))(
      params, x, jax.random.key(5))
  keep = ~np.asarray(c.corrupted)
  np.testing.assert_array_equal(np.asarray(predicted)[keep], np.asarray(original)[keep])
  np.testing.assert_allclose(np.asarray(shown)[np.asarray(c.masked)][..., 0], 1.0)
  picture = images_lib.compose(images_lib.make_panels(model, spec, params, x, jax.random.key(5),
                                                      panels))
  assert picture.shape == (3 * (28 * 4 + 2) + 2, 3 * (28 * 4 + 2) + 2, 3)
  assert picture.dtype == np.uint8


@pytest.mark.parametrize('key,value,message', [
    ('target', 'colour', 'must be one of mean_color'),
    ('corruption_rate', 0.0, 'must be in (0, 1]'),
    # round(0.01 * 49) = 0: a loss and gradients of 0 at every step, trained silently.
    ('corruption_rate', 0.01, 'corrupts none of the 49 patches'),
    ('random_fraction', 0.3, 'exceeds 1'),
    ('grid', 3, 'must divide the patch size'),
    ('random_source', 'device', 'must be batch or image'),
])
def test_config_errors_name_the_key(key, value, message):
  config = fashion_mnist.get_config()
  config.mpp.target = 'downsampled_color'
  config.mpp[key] = value
  with pytest.raises(ConfigError, match=f'config.mpp.{key}=') as e:
    config_lib.validate(config)
  assert message in str(e.value)


def test_a_backbone_the_checkpoint_cannot_describe_is_refused():
  """Issue 27, as for MAE and SimMIM: the backbone is built with a class token whatever
  model.classifier says, and a hybrid's tokens are not the patches the targets are cut into
  (was a reshape traceback at the first step)."""
  config = fashion_mnist.get_config()
  config.model.classifier = 'gap'
  with pytest.raises(ConfigError, match=r"config.model.classifier='gap': MPP pretrains an "
                     'encoder with a class token'):
    config_lib.validate(config)
  config = fashion_mnist.get_config()
  config.model.resnet.num_layers, config.model.patches.size = (1, 1, 1), (1, 1)
  config.image_size = 32
  with pytest.raises(ConfigError, match=r'config.model.resnet.num_layers=\(1, 1, 1\): MPP'):
    config_lib.validate(config)
  config = fashion_mnist.get_config()  # A pre-logits layer with no head to feed.
  config.model.representation_size = 16
  with pytest.raises(ConfigError, match=r'config.model.representation_size=16: MPP has no '
                     'classifier head'):
    config_lib.validate(config)


def test_grey_targets_have_32_levels_at_5_bits_and_rgb_512_at_3():
  image = _image([[[0.0], [0.5]], [[31.5 / 32], [1.0]]])
  np.testing.assert_array_equal(targets.mean_color(image, 2, bits=5), [[0, 16, 31, 31]])
  assert targets.output_shape('mean_color', (4, 4), channels=1, bits=5, grid=4) == (32,)
  assert targets.output_shape('downsampled_color', (4, 4), 1, 5, 4) == (16, 32)
  assert targets.output_shape('mean_color', (4, 4), channels=3, bits=3, grid=4) == (512,)
  config = fashion_mnist_grey.get_config()
  m = config_lib.validate(config)
  assert objective.Spec.from_config(config, m).output_shape == (32,)


def test_bits_that_make_too_many_colour_classes_are_a_config_error():
  config = fashion_mnist.get_config()
  config.mpp.bits = 8
  with pytest.raises(ConfigError, match=r'config.mpp.bits=8: bins each of the 3 channels, so '
                     r'16777216 colour classes; at most 32768 \(e.g. 5 bits\)'):
    config_lib.validate(config)
  config.data.channels = 1
  config_lib.validate(config)  # 256 grey levels are fine.


def test_mpp_feeds_the_model_its_own_pixel_normalisation():
  """model.pixels (an HF processor's or timm's mean/std) is the model input in pretraining and
  in the representation; the targets stay on [0, 1] pixels whatever the normalisation."""
  config = fashion_mnist.get_config()
  config.model.pixels.update(rescale=1 / 255, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
  config.model.hidden_size = 16  # The input is what is checked: one small block will do.
  config.model.transformer.update(mlp_dim=32, num_heads=2, num_layers=1)
  m = config_lib.validate(config)
  spec = objective.Spec.from_config(config, m)
  model = objective.build_model(config, m)
  images = fmnist.load('test')[0][:4]
  images = jnp.asarray(np.repeat(images.reshape(4, 28, 28, 1), 3, axis=-1))
  manual = (images.astype(jnp.float32) / 255 - jnp.array([0.5, 0.4, 0.3])) / jnp.array(
      [0.2, 0.25, 0.3])
  np.testing.assert_allclose(spec.to_input(images), manual, rtol=1e-6, atol=1e-6)
  # Jitted: one compile each, not one per op.
  params = jax.jit(lambda rng: model.init(rng, manual, None, train=False))(
      jax.random.key(0))['params']
  rng = jax.random.key(3)
  outputs, t, corruption = jax.jit(lambda *a: objective.forward(model, spec, *a, False))(
      params, images, rng)
  expected = jax.jit(lambda params, rng: model.apply(
      {'params': params}, manual,
      objective.sample_corruption(spec, jax.random.split(rng)[0], images), train=False))(
          params, rng)
  np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)
  default = objective.Spec.from_config(fashion_mnist.get_config(), m)
  np.testing.assert_array_equal(t, objective.compute_targets(default, images / 255.0))
  features = jax.jit(fewshot.make_patch_mean_fn(m))(params['backbone'], images)
  encoded = jax.jit(lambda p: config_lib.build_model(
      m, num_classes=None, classifier='unpooled').apply({'params': p}, manual, train=False))(
          params['backbone'])
  np.testing.assert_allclose(features, encoded[:, 1:].mean(1), rtol=1e-5, atol=1e-5)


def test_downsampled_cell_size_at_fashion_mnist_patches():
  """At 4-px patches the default 4x4 grid is one pixel per cell; a 2x2 grid pools 2x2 pixels,
  checked on real images."""
  config = fashion_mnist.get_config()
  config.mpp.target = 'downsampled_color'
  m = config_lib.validate(config)
  assert objective.Spec.from_config(config, m).cell_size == (1, 1)
  config.mpp.grid = 2
  spec = objective.Spec.from_config(config, config_lib.validate(config))
  assert spec.cell_size == (2, 2) and spec.output_shape == (4, 512)
  x = fmnist.load('test')[0][:2].reshape(2, 28, 28, 1).astype(np.float32) / 255.0
  cells = targets.downsampled_color(x, 4, grid=2, bits=3)
  pooled = x.reshape(2, 14, 2, 14, 2, 1).mean(axis=(2, 4))  # Every 2x2 block of pixels.
  expected = targets.quantize(pooled, 3).reshape(2, 7, 2, 7, 2).transpose(0, 1, 3, 2, 4)
  np.testing.assert_array_equal(cells, expected.reshape(2, 49, 4))
