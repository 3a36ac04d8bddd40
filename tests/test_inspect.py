"""vit.inspect: attention distance, rollout, posemb similarity, filter PCA, figures, CLI."""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs.supervised import fashion_mnist as base_config
from vit import config as config_lib
from vit.inspect import attention, embeddings, images as images_lib, report
from vit.models import vit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pairwise(grid, pixels):
  centres = attention.patch_centres(grid, pixels)
  return np.linalg.norm(centres[:, None] - centres[None], axis=-1)


def test_distance_of_uniform_attention_is_the_mean_pairwise_distance():
  # On a 2x2 grid of 4 px patches: per query, distances 0, 4, 4 and 4*sqrt(2).
  grid, pixels = (2, 2), (4, 4)
  weights = np.full((1, 3, 5, 5), 0.2)  # Class token + 4 patches, all uniform.
  expected = (0 + 4 + 4 + 4 * np.sqrt(2)) / 4
  np.testing.assert_allclose(attention.mean_attention_distance(weights, grid, pixels),
                             np.full((1, 3), expected))


def test_distance_of_local_attention():
  grid, pixels = (3, 4), (8, 8)
  n = 12
  self_only = np.eye(n)[None, None]
  np.testing.assert_allclose(attention.mean_attention_distance(self_only, grid, pixels), 0.0)
  # Every patch attends to its right neighbour (the last column to its left one): one patch.
  right = np.zeros((n, n))
  for q in range(n):
    right[q, q + 1 if q % 4 < 3 else q - 1] = 1.0
  np.testing.assert_allclose(attention.mean_attention_distance(right[None, None], grid, pixels),
                             8.0)
  # Half on itself and half on the patch below (above, for the last row): half a patch.
  below = np.zeros((n, n))
  for q in range(n):
    below[q, q] = 0.5
    below[q, q + 4 if q < 8 else q - 4] = 0.5
  np.testing.assert_allclose(attention.mean_attention_distance(below[None, None], grid, pixels),
                             4.0)


def test_class_token_weights_are_left_out_and_renormalised():
  grid, pixels = (2, 2), (1, 1)
  w = np.zeros((1, 1, 5, 5))
  w[0, 0, :, 0] = 0.5  # Half of every query's weight on the class token...
  w[0, 0, 1:, 1:] = np.eye(4)[[1, 0, 3, 2]] * 0.5  # ...half on the horizontal neighbour.
  np.testing.assert_allclose(attention.mean_attention_distance(w, grid, pixels), 1.0)


def test_rollout_of_identity_attention_is_identity():
  weights = [np.broadcast_to(np.eye(5), (2, 3, 5, 5)) for _ in range(4)]
  rollout = attention.attention_rollout(weights)
  np.testing.assert_allclose(rollout, np.broadcast_to(np.eye(5), (2, 5, 5)))
  np.testing.assert_allclose(attention.rollout_map(rollout, (2, 2)), 0.0)  # Cls sees only itself.


def test_rollout_of_uniform_attention_has_the_closed_form():
  # (I/2 + U/2)^L = I/2^L + U (1 - 1/2^L), since U^2 = U for the uniform matrix U.
  t, layers = 5, 3
  uniform = np.full((1, 2, t, t), 1.0 / t)
  rollout = attention.attention_rollout([uniform] * layers)[0]
  expected = np.eye(t) / 2 ** layers + np.full((t, t), 1.0 / t) * (1 - 1 / 2 ** layers)
  np.testing.assert_allclose(rollout, expected)
  np.testing.assert_allclose(attention.rollout_map(rollout[None], (2, 2))[0],
                             np.full((2, 2), expected[0, 1]))


def test_rollout_multiplies_layers_from_the_input_up():
  # Layer 1 moves patch 2's content into patch 1; layer 2 moves patch 1 into the class token.
  first, second = np.eye(3), np.eye(3)
  first[1] = [0, 0, 1]
  second[0] = [0, 1, 0]
  rollout = attention.attention_rollout([first[None, None], second[None, None]])
  a1, a2 = 0.5 * first + 0.5 * np.eye(3), 0.5 * second + 0.5 * np.eye(3)
  np.testing.assert_allclose(rollout[0], a2 @ a1)
  assert rollout[0, 0, 2] == pytest.approx(0.25)  # The class token reaches patch 2 via patch 1.


def test_gap_rollout_map_is_the_mean_over_tokens():
  rollout = np.random.default_rng(0).random((1, 4, 4))
  np.testing.assert_allclose(attention.rollout_map(rollout, (2, 2))[0],
                             rollout[0].mean(0).reshape(2, 2))


def test_pretraining_encoder_rollout_reads_the_mean_of_its_patch_tokens(tmp_path, monkeypatch):
  """An mpp:, mae: or simmim: encoder's representation is the mean of its patch tokens (MPP
  discards the class token's output); the rollout map read the class token's row anyway. Now
  the mean of the patch rows, and inspect.json says which row it read."""
  from vit import init_spec
  rollout = np.random.default_rng(0).random((1, 5, 5))
  np.testing.assert_allclose(attention.rollout_map(rollout, (2, 2), patch_mean=True)[0],
                             rollout[0, 1:, 1:].mean(0).reshape(2, 2))
  m, params, _ = _tiny_model()
  monkeypatch.setattr(init_spec, 'load',
                      lambda spec: init_spec.Checkpoint(params, m, None, 28, 3))
  np.save(tmp_path / 'images.npy',
          np.random.default_rng(0).integers(0, 256, (2, 28, 28, 3), dtype=np.uint8))
  maps = {}
  for spec, row in [('mpp:run', 'mean of patch tokens'), ('supervised:run', 'class token')]:
    out = tmp_path / spec.partition(':')[0]
    summary = report.inspect(spec, str(out), images=str(tmp_path / 'images.npy'), show=2)
    assert summary['rollout_of'] == row
    maps[spec] = np.load(out / 'inspect.npz')['rollout_maps']
  assert not np.allclose(maps['mpp:run'], maps['supervised:run'])
  # --representation, as few-shot's: an encoder exported to vit_jax reads as its workdir did.
  for spec, choice, row, same in [('vit_jax:e.npz', 'patch_mean', 'mean of patch tokens',
                                   'mpp:run'),
                                  ('mpp:run', 'pooled', 'class token', 'supervised:run')]:
    out = tmp_path / choice
    summary = report.inspect(spec, str(out), images=str(tmp_path / 'images.npy'), show=2,
                             representation=choice)
    assert summary['rollout_of'] == row
    np.testing.assert_allclose(np.load(out / 'inspect.npz')['rollout_maps'], maps[same])


def test_posemb_similarity_of_known_embeddings():
  grid = (2, 3)
  one_hot = np.eye(6) * 3.0
  np.testing.assert_allclose(embeddings.posemb_similarity(one_hot, grid),
                             np.eye(6).reshape(2, 3, 2, 3))
  angles = np.array([0, 60, 90, 180, 270, 45]) * np.pi / 180
  circle = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 2.0
  sim = embeddings.posemb_similarity(circle, grid)
  assert sim[0, 0, 0, 1] == pytest.approx(0.5)
  assert sim[0, 0, 1, 0] == pytest.approx(-1.0)
  assert sim[0, 1, 0, 2] == pytest.approx(np.cos(np.pi / 6))


def test_patch_position_embeddings_per_kind():
  row, col = np.arange(6.0).reshape(2, 3), 10 + np.arange(9.0).reshape(3, 3)
  params = {'Transformer': {'posembed_input': {'pos_embedding_row': row,
                                               'pos_embedding_col': col}}}
  pe = embeddings.patch_position_embeddings(params, 'learned_2d', (2, 3))
  np.testing.assert_array_equal(pe[1 * 3 + 2], np.concatenate([row[1], col[2]]))
  one_d = {'Transformer': {'posembed_input': {'pos_embedding': np.arange(28.0).reshape(1, 7, 4)}}}
  pe = embeddings.patch_position_embeddings(one_d, 'learned_1d', (2, 3))
  np.testing.assert_array_equal(pe, np.arange(4.0, 28.0).reshape(6, 4))  # Class token dropped.
  sincos = {'Transformer': {}, 'embedding': {'kernel': np.zeros((4, 4, 1, 8))}}
  np.testing.assert_array_equal(embeddings.patch_position_embeddings(sincos, 'sincos_2d', (2, 3)),
                                vit.sincos_2d((2, 3), 8))
  assert embeddings.patch_position_embeddings({'Transformer': {}}, 'relative', (2, 3)) is None


def test_filter_pca_recovers_known_components():
  rng = np.random.default_rng(0)
  u = np.zeros((4, 4, 1))
  u[:2] = 1.0
  v = np.zeros((4, 4, 1))
  v[:, :2] = 1.0
  u = u / np.linalg.norm(u)
  v = v - u * np.sum(u * v)
  v = v / np.linalg.norm(v)
  # 32 filters = 3 a_i u + 1 b_i v with zero-mean coefficients: components u then v, 90%/10%.
  a, b = rng.choice([-1.0, 1.0], 32), rng.choice([-1.0, 1.0], 32)
  a, b = a - a.mean(), b - b.mean()
  a = a / np.linalg.norm(a)
  b = b - a * np.dot(a, b)
  b = b / np.linalg.norm(b)
  kernel = np.einsum('d,hwc->hwcd', 3 * a, u) + np.einsum('d,hwc->hwcd', b, v)
  components, explained = embeddings.filter_pca(kernel, count=28)
  # Two directions hold all the variance: 14 more of 0% (arbitrary vectors) were returned.
  assert components.shape == (2, 4, 4, 1)
  np.testing.assert_allclose(abs(np.sum(components[0] * u)), 1.0, atol=1e-9)
  np.testing.assert_allclose(abs(np.sum(components[1] * v)), 1.0, atol=1e-9)
  np.testing.assert_allclose(explained, [0.9, 0.1], atol=1e-9)
  assert embeddings.filter_pca(kernel, count=1)[0].shape == (1, 4, 4, 1)
  same = embeddings.filter_pca(np.ones((4, 4, 1, 8)))  # Every filter alike: no variance.
  assert same[0].shape == (0, 4, 4, 1) and same[1].shape == (0,)


def _tiny_model(**overrides):
  config = base_config.get_config()
  config.model.hidden_size, config.model.transformer.mlp_dim = 32, 64
  config.model.transformer.num_heads, config.model.transformer.num_layers = 2, 2
  for key, value in overrides.items():
    config.model[key] = value
  m = config_lib.validate(config)
  model = config_lib.build_model(m)
  # Jitted: one compile, not one per op of the initialisers (~4 s on a loaded machine).
  params = jax.device_get(jax.jit(lambda rng: nn.unbox(model.init(
      rng, jnp.zeros((1, 28, 28, 3)), train=False)['params']))(jax.random.key(0)))
  return m, params, config


def test_model_weights_are_sown_per_block_in_depth_order():
  m, params, _ = _tiny_model(attention='axial')
  images = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 3), dtype=np.uint8)
  out, weights = attention.make_attention_fn(config_lib.build_model(m))(params, images)
  assert out.shape == (2, 10) and len(weights) == 4  # Two layers of row and column blocks.
  for w, axis in zip(weights, ['row', 'col', 'row', 'col']):
    assert w.shape == (2, 2, 50, 50)
    np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.asarray(w)[..., ~vit.axial_mask((7, 7), 50, axis)] == 0)
  assert sorted(['encoderblock_1_col', 'encoderblock_0_row', 'encoderblock_10',
                 'encoderblock_2'], key=attention.block_order) == [
                     'encoderblock_0_row', 'encoderblock_1_col', 'encoderblock_2',
                     'encoderblock_10']


def test_analyse_and_write_figures(tmp_path):
  m, params, _ = _tiny_model()
  images = np.random.default_rng(1).integers(0, 256, (5, 28, 28, 3), dtype=np.uint8)
  result = report.analyse(m, params, images, show=3, batch_size=2)
  assert result['attention_distance'].shape == (2, 2)
  assert result['attention_distance_per_image'].shape == (5, 2, 2)
  assert result['rollout_maps'].shape == (3, 7, 7)
  assert result['posemb_similarity'].shape == (7, 7, 7, 7)
  np.testing.assert_allclose(np.einsum('ijij->ij', result['posemb_similarity']), 1.0)
  assert result['filter_components'].shape == (28, 4, 4, 3)
  summary = report.write(result, str(tmp_path), {'model': 'tiny'})
  sizes = {'attention_distance.png': (300, 200), 'attention_rollout.png': (300, 200),
           'posemb_similarity.png': (300, 300), 'embedding_filters.png': (200, 100)}
  for name, (min_w, min_h) in sizes.items():
    with Image.open(tmp_path / name) as png:
      assert png.format == 'PNG'
      w, h = png.size
    assert min_w <= w <= 1200 and min_h <= h <= 1200, (name, png.size)
  saved = json.loads((tmp_path / 'inspect.json').read_text())
  assert saved['figures'] == list(sizes) and summary == saved
  arrays = np.load(tmp_path / 'inspect.npz')
  np.testing.assert_allclose(arrays['attention_distance'], result['attention_distance'])
  np.testing.assert_allclose(saved['mean_attention_distance_px'],
                             result['attention_distance'].mean(1), atol=0.01)


def test_rollout_figure_wraps_its_images_into_rows(tmp_path):
  """--show 20 drew one strip of 20 columns (--show 1000: a PNG 100,789 pixels wide); now rows
  of at most 8 images, each an input row above its attention row."""
  from vit.inspect import figures
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (20, 28, 28, 1), dtype=np.uint8)
  figures.attention_rollout(images, rng.random((20, 7, 7)), str(tmp_path / 'rollout.png'),
                            titles=[str(i) for i in range(20)])
  with Image.open(tmp_path / 'rollout.png') as png:
    w, h = png.size
  assert w <= 1.3 * 8 * 100 + 50 and h >= 3 * 2.8 * 100 * 0.8, png.size


def test_attention_that_overflows_is_one_line_and_writes_nothing(tmp_path):
  """Finite weights whose attention logits overflow float32 (a query kernel of 1e38): the
  distances were NaN and inspect.json held NaN (not JSON); now one line naming the weights,
  before any file is written."""
  from vit.errors import UserError
  from vit.formats import vit_jax
  m, params, _ = _tiny_model()
  attention_params = params['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_1']
  attention_params['query']['kernel'] = attention_params['query']['kernel'] * 1e38
  npz = str(tmp_path / 'huge.npz')
  vit_jax.save(params, npz)
  np.save(tmp_path / 'images.npy',
          np.random.default_rng(0).integers(0, 256, (3, 28, 28, 3), dtype=np.uint8))
  out = tmp_path / 'out'
  with pytest.raises(UserError, match=rf'^vit_jax:{npz}: its attention weights or outputs are '
                                      r'not finite \(NaN or inf\) for 3 of 3 images: its '
                                      r'activations overflow float32, so nothing was written$'):
    report.inspect(f'vit_jax:{npz}', str(out), images=str(tmp_path / 'images.npy'))
  assert not out.exists()


def test_relative_posemb_model_has_no_similarity_figure(tmp_path):
  """Into a folder an earlier model's inspection filled: its posemb_similarity.png was left
  beside the new inspect.json, as if this model had drawn it; now it is removed."""
  images = np.zeros((2, 28, 28, 3), np.uint8)
  report.write(report.analyse(*_tiny_model()[:2], images, show=2), str(tmp_path), {})
  assert (tmp_path / 'posemb_similarity.png').exists()
  m, params, _ = _tiny_model(posemb='relative', classifier='gap')
  result = report.analyse(m, params, images, show=2)
  assert 'posemb_similarity' not in result
  summary = report.write(result, str(tmp_path), {})
  assert summary['figures'] == ['attention_distance.png', 'attention_rollout.png',
                                'embedding_filters.png']
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      [*summary['figures'], 'inspect.json', 'inspect.npz'])


def test_image_loading(tmp_path):
  grey = np.arange(2 * 20 * 20, dtype=np.uint8).reshape(2, 20, 20)
  np.save(tmp_path / 'grey.npy', grey)
  images, source = images_lib.load(str(tmp_path / 'grey.npy'), 16, 3, limit=10)
  assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
  assert source.endswith('grey.npy')
  folder = tmp_path / 'pngs'
  folder.mkdir()
  Image.fromarray(np.full((28, 28, 3), 200, np.uint8)).save(folder / 'a.png')
  (folder / 'notes.txt').write_text('not an image')
  images, _ = images_lib.load(str(folder), 28, 1, limit=10)
  assert images.shape == (1, 28, 28, 1) and images[0, 0, 0, 0] == 200
  images, source = images_lib.load(None, 28, 1, limit=3)
  assert images.shape == (3, 28, 28, 1) and 'Fashion-MNIST' in source
  np.save(tmp_path / 'float.npy', grey.astype(np.float32))
  # The reader of supervised.predict too (vit.data.decoding.read_npy): the same lines.
  np.save(tmp_path / 'empty.npy', np.zeros((0, 28, 28), np.uint8))
  (tmp_path / 'notes.txt').write_text('not an array')
  for name, problem in [('float.npy', 'dtype float32; expected uint8 pixels in [0, 255]'),
                        ('missing.npy', 'file not found'),
                        ('notes.txt', 'expected a .npy of uint8 images or a directory'),
                        ('empty.npy', 'holds no images (shape (0, 28, 28))')]:
    with pytest.raises(images_lib.UserError) as error:
      images_lib.load(str(tmp_path / name), 16, 1, limit=2)
    assert str(error.value) == f'--images {tmp_path / name}: {problem}'


def test_cli_bad_spec_is_one_line(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'vit.inspect', '--init', 'supervised:' +
                         str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'out')],
                        cwd=ROOT, capture_output=True, text=True, timeout=900,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith('error: ') and 'nowhere' in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_refuses_a_word_after_the_flags(tmp_path):
  """`--images a.npy b.npy` read a.npy alone; the word is now refused before anything loads."""
  proc = subprocess.run([sys.executable, '-m', 'vit.inspect', '--init', 'supervised:nowhere',
                         '--out', str(tmp_path / 'out'), '--images', 'a.npy', 'b.npy'],
                        cwd=ROOT, capture_output=True, text=True, timeout=900,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 2 and proc.stderr.strip() == (
      "error: unexpected argument 'b.npy': this command takes only flags (--name=value; "
      "--help lists them)")
  assert not (tmp_path / 'out').exists()


def test_cli_refuses_the_images_folder_or_a_runs_workdir_as_out(tmp_path):
  """`--out DIR --images DIR` wrote the figures among the images, and the next run read them
  back as images (8, then 12; the distances moved); `--out WORKDIR` wrote them into the root
  of a training run's workdir, which vit.export refuses. Both are one line now, before the
  model or an image is read, and nothing is written."""
  pictures = tmp_path / 'pictures'
  pictures.mkdir()
  for i in range(2):
    Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(pictures / f'{i}.png')
  workdir = tmp_path / 'run'
  (workdir / 'checkpoints' / '4').mkdir(parents=True)
  (workdir / 'batch_contract.json').write_text('{}')
  cases = [
      (f'{pictures}/', pictures, f'--out {pictures}/: the --images folder itself; the next run '
                                 'would read the figures as images: write the figures '
                                 'elsewhere'),
      (str(workdir), tmp_path / 'nope.npy',
       f'--out {workdir}: the workdir of a training run; write the figures elsewhere (e.g. '
       f'{workdir}/inspect)')]
  for out, images, line in cases:
    proc = subprocess.run([sys.executable, '-m', 'vit.inspect', '--init', 'supervised:nowhere',
                           '--out', out, '--images', str(images)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert proc.returncode == 2 and proc.stderr.strip() == f'error: {line}', proc.stderr[-2000:]
  assert sorted(os.listdir(pictures)) == ['0.png', '1.png']
  assert sorted(os.listdir(workdir)) == ['batch_contract.json', 'checkpoints']
  # A new folder, one inside the images folder (its files alone are read) or in the workdir
  # (the example the line gives) are written to as before.
  for out in (tmp_path / 'figures', pictures / 'figures', workdir / 'inspect'):
    report.check_out(str(out), str(pictures))


@pytest.mark.parametrize('workdir, own, line', [
    (False, None, 'interrupted'),  # vit.inspect, vit.plan, ...: was the trainers' line below.
    (True, None, 'interrupted: steps since the last checkpoint were not saved'),
    # study.snapshot has --workdir and trains nothing: its own line, not the trainers'.
    (True, 'interrupted: snapshots', 'interrupted: snapshots'),
])
def test_interrupt_line_says_what_was_lost_only_for_a_trainer(workdir, own, line):
  """Ctrl-C in a command without --workdir said its steps since the last checkpoint were
  lost; it has neither."""
  script = ('from absl import flags\n'
            'from vit import cli\n'
            f'if {workdir}: flags.DEFINE_string("workdir", None, "")\n'
            'def main(argv): raise KeyboardInterrupt\n'
            f'cli.run(main, interrupted={own!r})\n')
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True,
                        text=True, timeout=900, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 130 and proc.stderr.strip() == line, proc.stderr[-2000:]


def test_cli_on_a_saved_checkpoint(tmp_path):
  from vit import checkpoints
  from vit.training.state import TrainState
  _, params, config = _tiny_model(posemb='learned_2d')
  state = TrainState(step=jnp.ones((), jnp.int32), params=params, opt_state={},
                     ema_params=None, rng=jax.random.key_data(jax.random.key(0)),
                     skipped_steps=jnp.zeros((), jnp.int32))
  mngr = checkpoints.manager(str(tmp_path / 'run'))
  checkpoints.save(mngr, 1, state, None, config)
  mngr.wait_until_finished()
  images = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
  np.save(tmp_path / 'images.npy', images)
  out = tmp_path / 'figures'
  proc = subprocess.run([sys.executable, '-m', 'vit.inspect',
                         '--init', f'supervised:{tmp_path}/run', '--out', str(out),
                         '--images', str(tmp_path / 'images.npy'), '--show', '3',
                         '--batch_size', '4'],
                        cwd=ROOT, capture_output=True, text=True, timeout=900,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr
  summary = json.loads((out / 'inspect.json').read_text())
  assert summary['images'].startswith('6 from') and summary['posemb'] == 'learned_2d'
  assert summary['grid'] == [7, 7] and len(summary['attention_distance_px_per_head']) == 2
  for name in summary['figures']:
    assert (out / name).stat().st_size > 1000
  arrays = np.load(out / 'inspect.npz')
  assert arrays['rollout_maps'].shape == (3, 7, 7)
  assert arrays['attention_distance_per_image'].shape == (6, 2, 2)


def test_out_naming_the_init_checkpoints_own_file_or_folder_is_refused(tmp_path):
  """As fewshot's and predict's --output (`init_spec.refuse_writing_over`): --out X.npz of
  --init vit_jax:X.npz, or a file of an hf export's folder, would replace or change the model."""
  from vit.errors import UserError
  npz = tmp_path / 'm.npz'
  npz.write_bytes(b'')
  hf = tmp_path / 'hf'
  hf.mkdir()
  (hf / 'config.json').write_text('{}')
  cases = [(f'vit_jax:{npz}', str(npz), f'--out {npz}: the checkpoint being read (--init '
                                        f'vit_jax:{npz}), which the figures would replace; '
                                        'write the figures elsewhere'),
           (f'hf:{hf}', str(hf / 'config.json'),
            f'--out {hf}/config.json: inside the folder of the checkpoint being read (--init '
            f'hf:{hf}), which the figures would change; write the figures elsewhere')]
  for init, out, line in cases:
    with pytest.raises(UserError) as e:
      report.check_out(out, None, init)
    assert str(e.value) == line
  for out in (tmp_path / 'figures', hf / 'figures'):  # Beside it or a new folder in it.
    report.check_out(str(out), None, f'hf:{hf}')
  assert sorted(os.listdir(hf)) == ['config.json']
