"""supervised.predict: inputs, resizing, --resolution and both output formats."""
import json
import re
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn
from PIL import Image

from supervised import predict
from vit import config as config_lib, init_spec
from vit.formats import vit_jax
from vit.models.spec import ModelSpec
from vit.errors import UserError
from vit.models.vit import resize_posemb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model():
  m = config_lib.model_defaults().to_dict()
  m.update(patches=dict(size=(4, 4)), hidden_size=16, num_classes=6)
  m['transformer'].update(mlp_dim=32, num_heads=2, num_layers=1)
  return ModelSpec.from_dict(m)


@pytest.fixture(scope='module')
def npz(tmp_path_factory):
  m = _model()
  params = nn.unbox(config_lib.build_model(m).init(
      jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)['params'])
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: np.asarray(p) + 0.5 * rng.standard_normal(p.shape).astype(
      np.float32), params)  # A non-zero head, so the logits differ per image.
  path = str(tmp_path_factory.mktemp('predict') / 'm.npz')
  vit_jax.save(params, path)
  return path, m, params


def _images(n=5, size=16, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_logits_equal_the_model_on_scaled_images(npz):
  path, m, params = npz
  apply_fn, ckpt, size = predict.load_classifier(f'vit_jax:{path}')
  assert size == 16
  images = _images()
  logits = predict.predict(apply_fn, predict.prepare_images(list(images), 16, 3), batch_size=2)
  ref = config_lib.build_model(m).apply({'params': params},
                                        jnp.asarray(images, jnp.float32) / 127.5 - 1, train=False)
  assert logits.dtype == np.float32 and logits.shape == (5, 6)
  np.testing.assert_allclose(logits, np.asarray(ref), atol=1e-5)


def test_resolution_resizes_posemb_as_finetuning(npz):
  path, m, params = npz
  apply_fn, _, size = predict.load_classifier(f'vit_jax:{path}', resolution=24)
  images = _images(size=24)
  logits = predict.predict(apply_fn, predict.prepare_images(list(images), size, 3), 8)
  pe = params['Transformer']['posembed_input']['pos_embedding']
  resized = dict(params, Transformer=dict(
      params['Transformer'], posembed_input={'pos_embedding': resize_posemb(pe, (6, 6))}))
  ref = config_lib.build_model(m).apply({'params': resized},
                                        jnp.asarray(images, jnp.float32) / 127.5 - 1, train=False)
  np.testing.assert_allclose(logits, np.asarray(ref), atol=1e-5)
  with pytest.raises(UserError, match='not a multiple of the model.s patch stride 4'):
    predict.load_classifier(f'vit_jax:{path}', resolution=30)


def test_a_sincos2d_npz_runs_at_resolution_without_a_size_after_its_name():
  """A big_vision sincos2d .npz states no image size: --resolution gives it (the logits of
  FILE.npz@SIZE), its own stride check still names --resolution, and without either one
  line says to give one."""
  path = os.path.join(ROOT, 'tests', 'testdata', 'npz_layouts', 'big_vision_sincos_gap.npz')
  images = _images(n=3, size=24)
  apply_fn, ckpt, size = predict.load_classifier(f'vit_jax:{path}', resolution=24)
  assert size == ckpt.image_size == 24 and ckpt.model.posemb == 'sincos_2d'
  logits = predict.predict(apply_fn, images, batch_size=3)
  sized, _, _ = predict.load_classifier(f'vit_jax:{path}@24')
  assert logits.shape == (3, 5) and np.abs(logits).max() > 0.1
  np.testing.assert_allclose(logits, predict.predict(sized, images, batch_size=3), atol=1e-6)
  with pytest.raises(UserError, match=r'^--resolution 30: not a multiple'):
    predict.load_classifier(f'vit_jax:{path}', resolution=30)
  with pytest.raises(UserError, match=r'state no image size; .*@SIZE \(e\.g\. @224\), or set '
                                      r'--resolution$'):
    predict.load_classifier(f'vit_jax:{path}')


def test_inputs_are_resized_and_channels_matched(tmp_path):
  gray = np.random.default_rng(0).integers(0, 256, (2, 28, 28), dtype=np.uint8)
  np.save(tmp_path / 'gray.npy', gray)
  images, names = predict.read_images(str(tmp_path / 'gray.npy'))
  assert names == ['0', '1'] and images[0].shape == (28, 28, 1)
  batch = predict.prepare_images(images, 16, 3)
  assert batch.shape == (2, 16, 16, 3) and batch.dtype == np.uint8
  np.testing.assert_array_equal(batch[..., 0], batch[..., 2])
  np.save(tmp_path / 'float.npy', gray.astype(np.float32))
  with pytest.raises(UserError, match='dtype float32; expected uint8'):
    predict.read_images(str(tmp_path / 'float.npy'))
  with pytest.raises(UserError, match=rf'^--images {tmp_path}/missing.npy: file not found$'):
    predict.read_images(str(tmp_path / 'missing.npy'))
  np.save(tmp_path / 'none.npy', np.zeros((0, 28, 28, 1), np.uint8))
  with pytest.raises(UserError, match=rf'^--images {tmp_path}/none.npy: holds no images \(shape '
                                      r'\(0, 28, 28, 1\)\)$'):
    predict.read_images(str(tmp_path / 'none.npy'))
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(UserError, match='no image files'):
    predict.read_images(str(tmp_path / 'empty'))


def test_image_folder_decoding_sixteen_bit_rotated_and_hidden_files(tmp_path, capsys):
  folder = tmp_path / 'imgs'
  folder.mkdir()
  k = np.arange(48, dtype=np.uint16).reshape(6, 8)
  Image.fromarray(k * 257).save(folder / 'a_sixteen.png')  # Was read as all 255 (clipped).
  exif = Image.Exif()
  exif[0x0112] = 6  # Stored 8 wide, 6 high; shown rotated a quarter turn clockwise.
  Image.fromarray(k.astype(np.uint8)).save(folder / 'b_turned.png', exif=exif)
  (folder / '._a_sixteen.png').write_bytes(b'\x00\x05\x16\x07 macOS resource fork')
  images, names = predict.read_images(str(folder))
  assert names == ['a_sixteen.png', 'b_turned.png']
  assert 'skipped 1 hidden entry (._a_sixteen.png)' in capsys.readouterr().out
  np.testing.assert_array_equal(images[0][..., 0], k)
  np.testing.assert_array_equal(images[1][..., 0], np.rot90(k, -1))
  (folder / 'c_broken.png').write_bytes(b'\x89PNG\r\n\x1a\n')
  with pytest.raises(UserError, match=r'c_broken.png: cannot decode the image'):
    predict.read_images(str(folder))


def test_ambiguous_arrays_other_entries_and_undecodable_names(tmp_path, capsys):
  np.save(tmp_path / 'one.npy', np.zeros((28, 28, 3), np.uint8))
  with pytest.raises(UserError) as e:
    predict.read_images(str(tmp_path / 'one.npy'))
  assert str(e.value) == (
      f'--images {tmp_path}/one.npy: shape (28, 28, 3) is ambiguous (one [H, W, C] image or 28 '
      f'greyscale images 28 wide?); pass one image as [1, H, W, C] (np.expand_dims(x, 0)), '
      f'greyscale ones as [B, H, W, 1]')
  np.save(tmp_path / 'grey.npy', np.zeros((28, 28), np.uint8))  # One image, no batch axis.
  with pytest.raises(UserError) as e:
    predict.read_images(str(tmp_path / 'grey.npy'))
  assert str(e.value) == (
      f'--images {tmp_path}/grey.npy: shape (28, 28); expected [N, H, W, C] with C 1 or 3, or '
      f'[N, H, W] greyscale (one image: np.expand_dims(x, 0))')
  folder = tmp_path / 'imgs'
  (folder / 'more').mkdir(parents=True)
  (folder / 'notes.txt').write_text('not an image')
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / 'a.png')
  assert predict.read_images(str(folder))[1] == ['a.png']
  assert capsys.readouterr().out == (
      f'--images {folder}: skipped 1 sub-folder and 1 file without an image extension '
      f'(more, notes.txt)\n')
  name = os.fsdecode(b'caf\xe9.png')  # Latin-1 bytes: a lone surrogate in the str.
  rows = predict.top_k(np.zeros((1, 2)), [name], None)
  assert json.loads(json.dumps(rows).encode('utf-8'))[0]['image'] == 'caf\\xe9.png'


def test_cli_npy_and_json_outputs(npz, tmp_path):
  path, _, _ = npz
  folder = tmp_path / 'imgs'
  folder.mkdir()
  images = _images(n=3, size=20)
  for i, im in enumerate(images):
    Image.fromarray(im).save(folder / f'img{i}.png')
  np.save(tmp_path / 'in.npy', images)
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  run = lambda *args: subprocess.run([sys.executable, '-m', 'supervised.predict', *args],
                                     cwd=ROOT, capture_output=True, text=True, timeout=900,
                                     env=env)
  out = run(f'--init=vit_jax:{path}', f'--images={tmp_path / "in.npy"}',
            f'--output={tmp_path / "logits.npy"}')
  assert out.returncode == 0, out.stderr[-2000:]
  logits = np.load(tmp_path / 'logits.npy')
  assert logits.shape == (3, 6) and logits.dtype == np.float32
  out = run(f'--init=vit_jax:{path}', f'--images={folder}', f'--output={tmp_path / "top.json"}')
  assert out.returncode == 0, out.stderr[-2000:]
  rows = json.loads((tmp_path / 'top.json').read_text())
  assert [r['image'] for r in rows] == ['img0.png', 'img1.png', 'img2.png']
  for row, lg in zip(rows, logits):  # PNG is lossless: the same pixels as the .npy.
    assert [t['label'] for t in row['top']] == list(np.argsort(-lg, kind='stable')[:5])
    probs = np.exp(lg - lg.max()) / np.exp(lg - lg.max()).sum()
    np.testing.assert_allclose([t['probability'] for t in row['top']],
                               np.sort(probs)[::-1][:5], rtol=1e-5)
    assert row['top'][0]['name'] == str(row['top'][0]['label'])  # No names in an .npz.
  bad = run(f'--init=vit_jax:{path}', f'--images={tmp_path / "in.npy"}', '--output=x.txt')
  assert bad.returncode == 2 and 'must end in .npy' in bad.stderr
  images = (tmp_path / 'in.npy').read_bytes()
  same = run(f'--init=vit_jax:{path}', f'--images={tmp_path / "in.npy"}',
             f'--output={tmp_path / "." / "in.npy"}')  # Another spelling of the same file.
  assert same.returncode == 2 and same.stderr.strip().splitlines() == [
      f'error: --output {tmp_path / "." / "in.npy"}: the --images file itself; the predictions '
      'would replace the images: name another file'], same.stderr[-3000:]
  assert (tmp_path / 'in.npy').read_bytes() == images
  # An --output in a run's step folder was written there, and deleted with the step.
  (tmp_path / 'run' / 'checkpoints' / '4').mkdir(parents=True)
  (tmp_path / 'run' / 'batch_contract.json').write_text('{}')
  inside = run(f'--init=vit_jax:{path}', f'--images={tmp_path / "in.npy"}',
               f'--output={tmp_path / "run" / "checkpoints" / "4" / "p.json"}')
  assert inside.returncode == 2 and inside.stderr.strip().splitlines() == [
      f'error: --output {tmp_path}/run/checkpoints/4/p.json: inside the checkpoints folder of '
      f'the run {tmp_path}/run, which holds only its saved steps (the run deletes old steps '
      f'with what they hold); write it elsewhere (e.g. {tmp_path}/run/p.json)'], inside.stderr
  assert os.listdir(tmp_path / 'run' / 'checkpoints' / '4') == []
  helped = run('--help')  # vit.cli: exit status 0, as asking for help is no failure.
  assert helped.returncode == 0 and '--resolution' in helped.stdout and '--images' in helped.stdout
  # --init named mpp:, mae: and simmim: runs as specs, which load_classifier always refuses.
  init = ' '.join(helped.stdout.split()).split('--init: ', 1)[1].split(' --output')[0]
  assert init.startswith('a checkpoint with a classification head: supervised:DIR |'), init


def test_an_output_that_is_a_directory_is_refused_before_the_model_runs(tmp_path):
  """A folder named top5.json was refused only after the images were read and the model ran,
  as 'top5.json: not written (top5.json is a directory); the previous one is unchanged'. The
  file it suggests is named for what it holds (a folder logits.npy: logits.npy, not top5.npy)."""
  for name in ('top5.json', 'logits.npy'):
    (tmp_path / name).mkdir()
    with pytest.raises(UserError) as e:
      predict.check_output(str(tmp_path / name), str(tmp_path / 'missing'), 'vit_jax:x.npz')
    assert str(e.value) == (f'--output {tmp_path}/{name}: an existing directory; name a file '
                            f'to write (e.g. {tmp_path}/{name}/{name})')
  predict.check_output(str(tmp_path / 'new.npy'), str(tmp_path / 'missing'),
                       'vit_jax:x.npz')  # A new file: ok.


def test_an_output_that_is_a_file_of_the_init_run_is_refused(tmp_path):
  """`--init supervised:RUN --output RUN/class_names.json` replaced the run's label names by the
  predictions, exit status 0 (and the next read of the run failed on them). Refused in one line
  before anything is read, as is every file the run keeps beside its checkpoints; a new file
  there is where outputs go."""
  run = tmp_path / 'run'
  (run / 'checkpoints').mkdir(parents=True)
  kept = {'class_names.json': '["cat", "dog"]', 'batch_contract.json': '{}'}
  for name, text in kept.items():
    (run / name).write_text(text)
  np.save(tmp_path / 'imgs.npy', _images(n=1))
  out = subprocess.run(
      [sys.executable, '-m', 'supervised.predict', f'--init=supervised:{run}',
       f'--images={tmp_path}/imgs.npy', f'--output={run}/class_names.json'],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ,
                                                                      JAX_PLATFORMS='cpu'))
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
      f'error: --output {run}/class_names.json: a file of the run being read (--init '
      f'supervised:{run}), which the output would replace; name another file'], out.stderr
  with pytest.raises(UserError, match=rf'^--output {run}/batch_contract.json: a file of the '
                                      rf'run being read \(--init supervised:{run}/\)'):
    predict.check_output(f'{run}/batch_contract.json', f'{tmp_path}/imgs.npy', f'supervised:{run}/')
  assert {n: (run / n).read_text() for n in kept} == kept
  predict.check_output(str(run / 'top5.json'), str(tmp_path / 'imgs.npy'), f'supervised:{run}')


def test_class_names_of_a_hf_checkpoint_reach_the_json(tmp_path):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  torch.manual_seed(0)
  cfg = transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, image_size=16, patch_size=4, num_labels=3,
                               id2label={0: 'cat', 1: 'dog', 2: 'eel'},
                               label2id={'cat': 0, 'dog': 1, 'eel': 2})
  transformers.ViTForImageClassification(cfg).save_pretrained(tmp_path / 'hf')
  apply_fn, ckpt, size = predict.load_classifier(f'hf:{tmp_path / "hf"}')
  logits = predict.predict(apply_fn, predict.prepare_images(list(_images(2)), size, 3), 4)
  rows = predict.top_k(logits, ['a', 'b'], ckpt.class_names)
  assert len(rows[0]['top']) == 3
  assert {t['name'] for t in rows[0]['top']} == {'cat', 'dog', 'eel'}
  # A config.json edited to name fewer labels than the head has outputs (transformers itself
  # keeps num_labels from id2label, and would then refuse the head's weights): they are
  # numbered, as timm's label_names of another count are (an IndexError in top_k before).
  config_file = tmp_path / 'hf' / 'config.json'
  saved = json.loads(config_file.read_text())
  saved['id2label'] = {'0': 'cat', '1': 'dog'}
  config_file.write_text(json.dumps(saved))
  ckpt = init_spec.load(f'hf:{tmp_path / "hf"}')
  assert ckpt.class_names is None and ckpt.model.num_classes == 3
  assert [t['name'] for t in predict.top_k(logits, ['a'], ckpt.class_names)[0]['top']] == [
      str(t['label']) for t in rows[0]['top']]


def test_headless_checkpoint_is_refused(npz, tmp_path):
  params = dict(vit_jax.load(npz[0]).params)
  del params['head']
  vit_jax.save(params, str(tmp_path / 'backbone.npz'))
  assert init_spec.load(f'vit_jax:{tmp_path / "backbone.npz"}').model.num_classes is None
  with pytest.raises(UserError, match='has no classification head'):
    predict.load_classifier(f'vit_jax:{tmp_path / "backbone.npz"}')


def test_a_forward_pass_that_does_not_fit_in_memory_is_one_line(npz, tmp_path):
  """XLA's RESOURCE_EXHAUSTED at 1,200 px (90,000 tokens: the attention alone would need
  terabytes) was a traceback; now one line (vit.cli.run) naming the sizes to lower."""
  np.save(tmp_path / 'in.npy', _images(2))
  run = subprocess.run([sys.executable, '-m', 'supervised.predict', f'--init=vit_jax:{npz[0]}',
                        f'--images={tmp_path / "in.npy"}', f'--output={tmp_path / "o.json"}',
                        '--resolution=1200'], cwd=ROOT, capture_output=True, text=True,
                       timeout=900, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert run.returncode == 2 and 'Traceback' not in run.stderr, run.stderr[-2000:]
  assert re.fullmatch(r'error: out of memory on the CPU \(RESOURCE_EXHAUSTED: Out of memory '
                      r'allocating \d+ bytes\.\); lower --batch_size, --resolution or the '
                      r'model',
                      run.stderr.strip().splitlines()[-1]), run.stderr[-2000:]
  assert not (tmp_path / 'o.json').exists()


def test_the_out_of_memory_line_names_the_commands_own_settings():
  """It named config keys and flags together, whatever the command: a trainer's config keys,
  or a standalone tool's flags."""
  from absl import flags
  from vit import cli
  trainer, tool = flags.FlagValues(), flags.FlagValues()
  flags.DEFINE_string('config', None, 'a config', flag_values=trainer)
  flags.DEFINE_integer('batch_size', 8, 'images', flag_values=tool)
  flags.DEFINE_integer('image_size', None, 'px', flag_values=tool)
  assert cli._memory_knobs(trainer) == (
      'config.batch_size, config.eval_batch_size, config.image_size')
  assert cli._memory_knobs(tool) == '--batch_size, --image_size'
  assert cli._memory_knobs(flags.FlagValues()) == 'the batch, the image size'


def test_a_run_that_forced_cudnn_attention_is_read_on_a_cpu(tmp_path, monkeypatch):
  """A workdir trained on a GPU with model.attention_kernel='cudnn' raised jax's 'cuDNN is not
  detected' traceback from every reader on a CPU (predict, export, few-shot, inspect,
  fine-tuning): the kernel is the reading machine's choice, so readers take 'auto'."""
  from configs.supervised import fashion_mnist as sup_config
  from supervised import train
  from vit.data import fashion_mnist
  from vit.models import factory
  from vit.training import loop
  config = sup_config.get_config()
  config.batch_size, config.eval_batch_size, config.total_steps = 8, 8, 1
  config.model.hidden_size, config.model.transformer.mlp_dim = 16, 32
  config.model.transformer.update(num_layers=1, num_heads=2)
  config.model.update(attention_kernel='cudnn', dtype='bfloat16')
  m = config_lib.validate(config)
  cpu_kernel = factory.attention_kernel
  # Trained as a GPU would (its saved config says 'cudnn'), on this CPU's kernel.
  monkeypatch.setattr(factory, 'attention_kernel',
                      lambda m, platform=None: cpu_kernel(m.replace(attention_kernel='xla')))
  source = fashion_mnist.ArraySource(*(a[:16] for a in fashion_mnist.load('test')))
  workdir = str(tmp_path / 'run')
  loop.train(config, workdir, train.build_task(config, m, train_source=source,
                                               eval_source=source))
  monkeypatch.setattr(factory, 'attention_kernel', cpu_kernel)
  with pytest.raises(UserError, match=r"^config.model.attention_kernel='cudnn': needs an NVIDIA "
                                      r"GPU"):
    config_lib.build_model(m)  # A trainer on this CPU is told in one line.
  apply_fn, ckpt, size = predict.load_classifier(f'supervised:{workdir}')
  assert ckpt.model.attention_kernel == 'auto' and ckpt.model.dtype == 'bfloat16'
  logits = predict.predict(apply_fn, predict.prepare_images(list(_images(2, 28)), size, 3), 2)
  assert logits.shape == (2, 10) and np.isfinite(logits).all()
