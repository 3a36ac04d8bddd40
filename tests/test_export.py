"""vit.export: a trained checkpoint -> official .npz and a transformers directory, same logits."""
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.supervised import fashion_mnist as sup_config
from supervised import train
from vit import config as config_lib, export, init_spec
from vit.formats import hf as hf_format, vit_jax
from vit.formats.tree import flatten
from vit.data import fashion_mnist
from vit.errors import UserError
from vit.models.spec import Pixels
from vit.testing import commands
from vit.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 5e-6


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A tiny supervised run with Polyak averaging, a few steps long."""
  config = sup_config.get_config()
  config.image_size, config.batch_size, config.eval_batch_size = 28, 16, 50
  config.total_steps, config.log_every, config.ema_decay = 4, 2, 0.5
  config.model.hidden_size, config.model.transformer.mlp_dim = 32, 64
  config.model.transformer.num_layers = 2
  config.optimizer.learning_rate = 0.01  # Large enough that EMA and raw differ visibly.
  m = config_lib.validate(config)
  images, labels = fashion_mnist.load('test')
  source = fashion_mnist.ArraySource(images[:200], labels[:200])
  workdir = str(tmp_path_factory.mktemp('export') / 'run')
  init_spec.write_class_names(workdir, fashion_mnist.CLASS_NAMES)
  state = loop.train(config, workdir,
                     train.build_task(config, m, train_source=source, eval_source=source)).state
  return workdir, m, jax.device_get(state.params), jax.device_get(state.ema_params)


def _logits(m, params, x):
  return np.asarray(config_lib.build_model(m).apply({'params': params}, jnp.asarray(x),
                                                    train=False))


def _images():
  return np.random.default_rng(0).uniform(-1, 1, (3, 28, 28, 3)).astype(np.float32)


def test_vit_jax_export_holds_the_ema_params(run, tmp_path):
  workdir, m, params, ema = run
  export.export(workdir, 'vit_jax', str(tmp_path / 'm.npz'))
  with np.load(tmp_path / 'm.npz', allow_pickle=False) as f:
    flat = {k: f[k] for k in f.files}
  want = flatten(ema)
  assert sorted(flat) == sorted(want)
  assert all(np.array_equal(flat[k], want[k]) for k in flat)
  raw = tmp_path / 'raw.npz'
  export.export(workdir, 'vit_jax', str(raw), use_ema=False)
  loaded = init_spec.load(f'vit_jax:{raw}')
  np.testing.assert_array_equal(_logits(loaded.model, loaded.params, _images()),
                                _logits(m, params, _images()))
  assert not np.array_equal(params['head']['kernel'], ema['head']['kernel'])


def test_hf_export_loads_in_transformers_with_the_same_logits(run, tmp_path):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  workdir, m, _, ema = run
  ckpt = export.export(workdir, 'hf', str(tmp_path / 'hf'))
  assert export.notes('hf', ckpt, str(tmp_path / 'hf')) == []  # A classifier: nothing to add.
  hf = transformers.ViTForImageClassification.from_pretrained(str(tmp_path / 'hf')).eval()
  assert hf.config.hidden_act == 'gelu_pytorch_tanh'  # The model's tanh GELU, stated.
  assert hf.config.id2label[9] == 'Ankle boot'
  x = _images()
  with torch.no_grad():
    ref = hf(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).logits.numpy()
  ours = _logits(m, ema, x)
  assert np.abs(ours).max() > 0.05  # A trained head: the comparison is not of zeros.
  assert np.abs(ours - ref).max() <= TOL


def test_hf_export_processor_reproduces_predict_on_images_of_other_sizes(run, tmp_path):
  """The exported preprocessor_config.json through transformers' own ViTImageProcessor (its
  PIL backend: torchvision is not installable here) and model, on uint8 images that must be
  resized (larger, non-square, smaller), against supervised.predict's whole pipeline."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from supervised import predict
  workdir, _, _, _ = run
  export.export(workdir, 'hf', str(tmp_path / 'hf'))
  processor = transformers.ViTImageProcessor.from_pretrained(str(tmp_path / 'hf'))
  hf = transformers.ViTForImageClassification.from_pretrained(str(tmp_path / 'hf')).eval()
  apply_fn, ckpt, size = predict.load_classifier(f'supervised:{workdir}')
  rng = np.random.default_rng(0)
  for shape in [(40, 40), (40, 30), (17, 23)]:
    images = rng.integers(0, 256, (3, *shape, ckpt.channels), dtype=np.uint8)
    ours = predict.predict(apply_fn, predict.prepare_images(list(images), size, ckpt.channels),
                           batch_size=3)
    inputs = processor(images=list(images), return_tensors='pt',
                       input_data_format='channels_last')
    with torch.no_grad():
      ref = hf(**inputs).logits.numpy()
    assert np.abs(ours).max() > 0.05, shape  # A trained head: not a comparison of zeros.
    assert np.abs(ours - ref).max() <= 1e-5, shape


def test_cli_and_errors(run, tmp_path):
  workdir, _, _, _ = run
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  cmd = lambda *a: subprocess.run([sys.executable, '-m', 'vit.export', *a], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=900)
  ok = cmd(f'--checkpoint={workdir}', '--format=vit_jax', f'--out={tmp_path / "cli.npz"}')
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert 'exported' in ok.stdout and (tmp_path / 'cli.npz').is_file()
  missing = cmd(f'--checkpoint={tmp_path / "nope"}', '--format=hf', f'--out={tmp_path / "o"}')
  assert missing.returncode == 2 and 'directory not found' in missing.stderr
  assert missing.stderr.strip().count('\n') == 0
  with pytest.raises(UserError, match='a .npz file'):
    export.export(workdir, 'vit_jax', str(tmp_path / 'm.bin'))
  # An existing file of another name was called 'a .npz file that is not an earlier export'.
  np.save(tmp_path / 'images.npy', np.zeros((2, 4, 4), np.uint8))
  with pytest.raises(UserError, match=rf'^--out {tmp_path}/images.npy: a vit_jax export is a '
                                      r'\.npz file$'):
    export.export(workdir, 'vit_jax', str(tmp_path / 'images.npy'))
  # A folder of that name was refused only once the checkpoint was read, as 'not written'.
  (tmp_path / 'folder.npz').mkdir()
  with pytest.raises(UserError, match=rf'^--out {tmp_path}/folder.npz: a vit_jax export is a '
                                      r'\.npz file, and this is a directory$'):
    export.export(str(tmp_path / 'nope'), 'vit_jax', str(tmp_path / 'folder.npz'))
  helped = cmd('--help')
  assert '--format' in helped.stdout and '--checkpoint' in helped.stdout


def test_a_failed_export_leaves_the_previous_one(run, tmp_path, monkeypatch):
  workdir, _, params, ema = run
  out, hf = str(tmp_path / 'm.npz'), tmp_path / 'hf'
  export.export(workdir, 'vit_jax', out, use_ema=False)
  export.export(workdir, 'hf', str(hf))
  (hf / 'README.md').write_text('mine')
  before = {p: open(p, 'rb').read() for p in (out, hf / 'model.safetensors')}

  def crash(*args, **kwargs):  # A writer stopped halfway (disk full, Ctrl-C).
    target = args[-1]  # Every format's save(params, out, model=..., ...).
    with open(os.path.join(target, 'model.safetensors') if os.path.isdir(target) else target,
              'wb') as f:
      f.write(b'half')
    raise KeyboardInterrupt

  monkeypatch.setattr(vit_jax, 'save', crash)
  monkeypatch.setattr(hf_format, 'save', crash)
  for fmt, path in (('vit_jax', out), ('hf', str(hf))):
    with pytest.raises(KeyboardInterrupt):
      export.export(workdir, fmt, path)
  assert {p: open(p, 'rb').read() for p in before} == before
  assert sorted(os.listdir(tmp_path)) == ['hf', 'm.npz']  # No temporaries left.
  monkeypatch.undo()
  export.export(workdir, 'vit_jax', out)  # Success replaces: now the EMA parameters.
  with np.load(out, allow_pickle=False) as f:
    np.testing.assert_array_equal(f['head/kernel'], ema['head']['kernel'])
  export.export(workdir, 'hf', str(hf))
  assert sorted(os.listdir(hf)) == ['README.md', 'config.json', 'model.safetensors',
                                    'preprocessor_config.json']


def test_hf_export_over_a_sharded_folder_removes_the_old_shards(run, tmp_path):
  transformers = pytest.importorskip('transformers')
  workdir, _, params, ema = run
  out = tmp_path / 'hf'
  export.export(workdir, 'hf', str(out), use_ema=False)
  old = transformers.ViTForImageClassification.from_pretrained(str(out))
  old.save_pretrained(str(out), max_shard_size='20KB')  # What transformers writes: shards.
  (out / 'model.safetensors').unlink(missing_ok=True)
  assert (out / 'model.safetensors.index.json').exists()
  export.export(workdir, 'hf', str(out))
  assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors',
                                     'preprocessor_config.json']
  new = transformers.ViTForImageClassification.from_pretrained(str(out))
  np.testing.assert_array_equal(new.classifier.weight.detach().numpy(), ema['head']['kernel'].T)


def test_refusals_name_the_formats_that_do_hold_the_model(run, tmp_path):
  from vit.formats import hf as hf_format, registry
  _, m, params, _ = run
  imagenet = Pixels(rescale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
  with pytest.raises(UserError, match=r'LayerNorm epsilon 1e-12 \(timm: 1e-6\); export with '
                                      r'--format hf$'):  # vit_jax holds neither.
    registry.check_expressible('timm', params,
                               m.replace(layer_norm_epsilon=1e-12, pixels=imagenet))
  with pytest.raises(UserError, match=r'\(pre_logits\); export with --format vit_jax$'):
    registry.check_expressible('timm', dict(params, pre_logits={}), m)
  # vit_jax cannot state ImageNet's normalisation; hf and timm can, and vit.export says so
  # (it said hf alone whatever the model).
  hf_format.save(params, str(tmp_path / 'imagenet'), m.replace(pixels=imagenet))
  with pytest.raises(UserError, match=r'^--format vit_jax: the .npz layout cannot hold input '
                                      r'normalisation .*; export with --format hf or timm$'):
    export.export(f'hf:{tmp_path / "imagenet"}', 'vit_jax', str(tmp_path / 'm.npz'))
  assert not (tmp_path / 'm.npz').exists()
  (tmp_path / 'a_file').write_text('kept')
  for fmt, article in (('timm', 'a'), ('hf', 'an')):  # It said 'an timm export'.
    with pytest.raises(UserError, match=rf'^--out {tmp_path}/a_file: {article} {fmt} export is '
                                        r'a directory, and this is a file$'):
      export.export(f'hf:{tmp_path / "imagenet"}', fmt, str(tmp_path / 'a_file'))
  assert (tmp_path / 'a_file').read_text() == 'kept'
  # A file's name for a folder format made a directory called x.npz.
  for fmt, article in (('hf', 'an'), ('timm', 'a')):
    with pytest.raises(UserError, match=rf'^--out {tmp_path}/x.npz: {article} {fmt} export is a '
                                        r"directory; this name is a file's"):
      export.export(f'hf:{tmp_path / "imagenet"}', fmt, str(tmp_path / 'x.npz'))
  assert not (tmp_path / 'x.npz').exists()
  with pytest.raises(UserError, match=r'^--checkpoint nope: directory not found \(a trainer '):
    export.export('nope', 'hf', str(tmp_path / 'o'))


def test_an_out_inside_a_runs_checkpoints_is_refused(tmp_path):
  """Before, the export was written as W/checkpoints/99: every reader then warned of an
  unreadable step 99, and the next training moved it aside."""
  workdir = tmp_path / 'run'
  (workdir / 'checkpoints' / '4').mkdir(parents=True)
  (workdir / '.lock').write_text('')
  for out in (workdir / 'checkpoints' / '99', workdir / 'checkpoints' / '4' / 'sub',
              workdir / 'checkpoints'):
    with pytest.raises(UserError, match=rf'^--out {out}: inside the checkpoints folder of '
                                        rf'the run {workdir}, '):
      export.export(str(workdir), 'timm', str(out))
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['4']
  # vit.inspect wrote its PNGs there: the same refusal (checkpoints.refuse_inside_checkpoints).
  out = workdir / 'checkpoints' / 'x'
  run = subprocess.run([sys.executable, '-m', 'vit.inspect', '--init=vit_jax:nope.npz',
                        f'--out={out}'], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert run.returncode == 2 and run.stderr.strip().splitlines() == [
      f'error: --out {out}: inside the checkpoints folder of the run {workdir}, which holds '
      f'only its saved steps (the run deletes old steps with what they hold); write the '
      f'figures elsewhere (e.g. {workdir}/inspect)']
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['4']
  # A folder of that name elsewhere is no run's: the export goes on (to read the checkpoint).
  with pytest.raises(UserError, match='directory not found'):
    export.export(str(tmp_path / 'nope'), 'timm', str(tmp_path / 'checkpoints' / 'x'))


def test_an_empty_out_is_refused_naming_the_flag(tmp_path):
  """`--out "$OUT"` (or `--out=$OUT`) with OUT unset: an hf or timm export said ': not written
  (No such file or directory)', naming neither the flag nor what to give; refused before the
  checkpoint is read."""
  for fmt, what in (('hf', 'folder'), ('timm', 'folder'), ('vit_jax', '.npz file')):
    with pytest.raises(UserError) as e:
      export.export(str(tmp_path / 'nope'), fmt, '')
    assert str(e.value) == f'--out is empty: name the {what} to write the {fmt} export to'


def test_an_out_inside_the_checkpoints_own_folder_is_refused(tmp_path):
  """--checkpoint hf:DIR --out DIR/preprocessor_config.json wrote into the folder being read
  (init_spec.refuse_writing_over, shared with predict's and few-shot's --output); refused
  before the checkpoint is read, and a name outside the folder is not."""
  folder = tmp_path / 'vit'
  folder.mkdir()
  (folder / 'config.json').write_text('{"model_type": "vit"}')
  for out in (f'{folder}/preprocessor_config.json', f'{tmp_path}/./vit/config.json'):
    with pytest.raises(UserError) as e:
      init_spec.refuse_writing_over(f'hf:{folder}', out, flag='--out', being='exported',
                                    source_flag='--checkpoint', by='the export')
    assert str(e.value) == (f'--out {out}: inside the folder of the checkpoint being exported '
                            f'(--checkpoint hf:{folder}), which the export would change; '
                            'write it elsewhere')
  assert os.listdir(folder) == ['config.json']
  # A new folder inside it is no file its reader takes (test_formats_hf exports to DIR/again).
  init_spec.refuse_writing_over(f'hf:{folder}', f'{folder}/again', flag='--out')
  with pytest.raises(UserError, match=r'^hf:.*/vit: '):  # Read: the folder has no weights.
    export.export(f'hf:{folder}', 'vit_jax', f'{tmp_path}/x.npz')


@pytest.mark.parametrize('fmt', ['hf', 'timm'])
def test_an_out_folder_of_other_files_or_a_runs_workdir_is_refused(tmp_path, fmt):
  """An hf or timm export adds its files to --out: `--out /` wrote config.json,
  model.safetensors and preprocessor_config.json into the root, and a run's workdir took
  another model's files. An earlier export (its config.json or weights) with notes beside it,
  an empty folder and a new one are written to as before."""
  (tmp_path / 'data').mkdir()
  (tmp_path / 'data' / 'images.npy').write_text('x')
  with pytest.raises(UserError, match=rf'^--out {tmp_path / "data"}: a folder of other files '
                                      r'\(1, no config.json or model.safetensors of an earlier '
                                      r'export\); export to a new or empty folder$'):
    export.export(str(tmp_path / 'nope'), fmt, str(tmp_path / 'data'))
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'batch_contract.json').write_text('{}')
  (workdir / 'config.json').write_text('{}')
  with pytest.raises(UserError, match=rf'^--out {workdir}: the workdir of a training run; '
                                      rf'export elsewhere \(e.g. {workdir}/export\)$'):
    export.export(str(tmp_path / 'nope'), fmt, str(workdir))
  assert sorted(os.listdir(tmp_path / 'data')) == ['images.npy']
  earlier = tmp_path / 'earlier'
  earlier.mkdir()
  (earlier / 'config.json').write_text(
      '{"model_type": "vit"}' if fmt == 'hf' else '{"architecture": "vit_base_patch16_224"}')
  (earlier / 'README.md').write_text('notes')
  # A clone of a model repository to fill, a folder a file browser marked: not other files.
  clone = tmp_path / 'clone'
  (clone / '.git').mkdir(parents=True)
  for name in ('.gitattributes', 'README.md', 'LICENSE', '.DS_Store'):
    (clone / name).write_text('x')
  for out in (earlier, tmp_path / 'empty', tmp_path / 'new', clone):
    if out.name == 'empty':
      out.mkdir()
    with pytest.raises(UserError, match='--checkpoint .*nope: directory not found'):
      export.export(str(tmp_path / 'nope'), fmt, str(out))  # Refused for the checkpoint only.


@pytest.mark.parametrize('fmt', ['hf', 'timm'])
def test_an_out_folder_of_another_format_or_model_is_refused(tmp_path, fmt):
  """A timm export into an hf export's folder replaced config.json and the weights and left
  preprocessor_config.json: a folder neither library read. Another format's export, another
  model's folder (a BERT) and an unreadable config.json are refused before the checkpoint is
  read; nothing in them changes."""
  other = 'timm' if fmt == 'hf' else 'hf'
  configs = {'hf': '{"model_type": "vit"}', 'timm': '{"architecture": "vit_small_patch16_224"}'}
  told = {other: f'holds {"an" if other == "hf" else "a"} {other} export',
          'bert': "holds another model \\(config.json: model_type='bert'\\)",
          'cut': 'its config.json is not readable JSON'}
  for name, text in (('bert', '{"model_type": "bert"}'), ('cut', '{"model_ty'),
                     (other, configs[other])):
    folder = tmp_path / name
    folder.mkdir()
    (folder / 'config.json').write_text(text)
    with pytest.raises(UserError, match=rf'^--out {folder}: {told[name]}'):
      export.export(str(tmp_path / 'nope'), fmt, str(folder))
    assert (folder / 'config.json').read_text() == text


def test_a_vit_jax_out_that_is_not_an_earlier_export_is_refused(run, tmp_path):
  """--format vit_jax replaced any existing .npz (the user's own arrays) without a word; an
  earlier export is replaced as before, but not by an export of itself."""
  workdir = run[0]
  mine = tmp_path / 'mine.npz'
  np.savez(mine, x=np.arange(10))
  garbled = tmp_path / 'garbled.npz'
  garbled.write_bytes(b'not a zip')
  bare = tmp_path / 'bare.npz'  # A .npy renamed: np.load gives one array, not an archive.
  np.save(tmp_path / 'bare.npy', np.arange(3))
  os.rename(tmp_path / 'bare.npy', bare)
  for out in (mine, garbled, bare):
    before = out.read_bytes()
    with pytest.raises(UserError, match=rf'^--out {out}: a \.npz file that is not an earlier '
                                        r'vit_jax export \(no embedding/kernel array\); export '
                                        r'to a new name$'):
      export.export(workdir, 'vit_jax', str(out))
    assert out.read_bytes() == before
  earlier = tmp_path / 'earlier.npz'
  export.export(workdir, 'vit_jax', str(earlier), use_ema=False)
  export.export(workdir, 'vit_jax', str(earlier))  # Replaced: now the EMA params.
  with np.load(earlier, allow_pickle=False) as f:
    assert np.array_equal(f['head/kernel'], run[3]['head']['kernel'])
  # The checkpoint itself as --out (a big_vision sincos2d file became its learned table at
  # @SIZE, scanned or bfloat16 files float32 and unscanned, an hf folder rewritten): refused.
  hf_dir = tmp_path / 'hf'
  export.export(workdir, 'hf', str(hf_dir))
  for spec, out in ((f'vit_jax:{earlier}', earlier), (f'vit_jax:{earlier}@28', earlier),
                    (f'hf:{hf_dir}', f'{hf_dir}/')):
    before = {p: p.read_bytes() for p in (earlier, *hf_dir.iterdir())}
    with pytest.raises(UserError, match=rf'^--out {out}: the checkpoint being exported '
                                        rf'\(--checkpoint {spec}\), which the export would '
                                        r'replace; export to a new name$'):
      export.export(spec, spec.partition(':')[0], str(out))
    assert {p: p.read_bytes() for p in (earlier, *hf_dir.iterdir())} == before


def test_a_damaged_class_names_file_is_one_line_naming_it(run, tmp_path):
  """Every reader (export, predict, --config.init) loads a workdir through init_spec, which
  raised a JSONDecodeError traceback from vit/class_names.py."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(run[0], workdir)
  with open(os.path.join(workdir, 'class_names.json'), 'w') as f:
    f.write('["a", ')
  with pytest.raises(UserError, match=rf'^{workdir}/class_names.json: not valid JSON '):
    init_spec.load(f'supervised:{workdir}')
  with pytest.raises(UserError, match=rf'^{workdir}/class_names.json: not valid JSON '):
    export.export(workdir, 'timm', str(tmp_path / 'out'))
  assert not os.path.exists(tmp_path / 'out')


@pytest.mark.parametrize('fmt', ['hf', 'timm', 'vit_jax'])
def test_exported_files_get_the_mode_a_plain_open_gives(run, tmp_path, fmt):
  """Every file and folder of an export is readable as the umask allows (0666 / 0777 & ~umask),
  as open() and mkdir() would make it: not mkstemp's or mkdtemp's owner-only 0600 / 0700."""
  workdir = run[0]
  out = tmp_path / 'out' / ('m.npz' if fmt == 'vit_jax' else fmt)
  old = os.umask(0o022)
  try:
    export.export(workdir, fmt, str(out))
  finally:
    os.umask(old)
  paths = [out] if fmt == 'vit_jax' else [out, *out.iterdir()]
  assert len(paths) > 2 or fmt == 'vit_jax'
  modes = {p.name: oct(p.stat().st_mode & 0o777) for p in paths}
  assert modes == {p.name: oct(0o755 if p.is_dir() else 0o644) for p in paths}


# `python -m vit.export ARGS` whose format's writer writes half a file, says so and waits: a
# SIGTERM meets the export at a known point of its writing, whatever the load.
_PAUSED_WRITING = """
import os, runpy, sys, time
from vit.formats import registry
def paused(params, target, **stated):
  with open(os.path.join(target, 'model.safetensors') if os.path.isdir(target) else target,
            'wb') as f:
    f.write(b'half')
  print('writing', flush=True)
  while True:
    time.sleep(1)
registry.FORMATS[sys.argv[-1].split('=')[1]].save = paused
runpy.run_module('vit.export', run_name='__main__', alter_sys=True)
"""


@pytest.mark.parametrize('fmt', ['vit_jax', 'hf'])
def test_a_sigterm_while_writing_says_the_earlier_export_is_unchanged(tmp_path, fmt):
  """SIGTERM ended vit.export at once, exit status 143 and not a word, leaving its partial file
  beside --out. It is one line now, saying that --out was not written and is unchanged, which
  it is, byte for byte, with no partial file left; the status is still 143."""
  import signal
  spec = f'vit_jax:{ROOT}/tests/testdata/npz_layouts/vit_jax_today.npz'
  out = tmp_path / ('m.npz' if fmt == 'vit_jax' else 'hf')
  export.export(spec, fmt, str(out))  # The earlier export.
  before = {p: p.read_bytes() for p in ([out] if out.is_file() else out.iterdir())}
  returncode, _, err = commands.signal_at_line(
      [sys.executable, '-c', _PAUSED_WRITING, f'--checkpoint={spec}', f'--out={out}',
       f'--format={fmt}'], 'stdout', lambda line: line.strip() == 'writing', signal.SIGTERM,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert err.splitlines() == [
      f'stopped (SIGTERM) before the export was written; {out} is unchanged'], err[-2000:]
  assert returncode == 143
  assert {p: p.read_bytes() for p in ([out] if out.is_file() else out.iterdir())} == before
  assert os.listdir(tmp_path) == [out.name]  # No partial file or folder beside it.


def test_a_sigterm_while_the_command_imports_is_one_line(tmp_path):
  """SIGTERM in the seconds an entry point spends importing jax, TF and orbax, before vit.cli.run
  takes signals over, ended it without a word; it is one line now, and the same end by the
  signal (143 in a shell). The child's `-X importtime` lines are read up to vit's only: the
  child then blocks on its full stderr pipe, still importing, and the signal meets it there."""
  import re
  import signal
  out = tmp_path / 'm.npz'
  returncode, stdout, err = commands.signal_at_line(
      [sys.executable, '-X', 'importtime', '-m', 'vit.export', f'--out={out}',
       f'--checkpoint=vit_jax:{ROOT}/tests/testdata/npz_layouts/vit_jax_today.npz',
       '--format=vit_jax'], 'stderr', lambda line: re.search(r'\|\s+vit$', line),  # vit ran.
      signal.SIGTERM, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  told = [line for line in err.splitlines() if not line.startswith('import time:')]
  assert told == ['stopped while starting (SIGTERM): nothing was written'], err[-2000:]
  assert returncode == -signal.SIGTERM and stdout == '' and not out.exists()


# Pauses `python -m vit.export` as it opens the .npz it exports, once the command runs.
_PAUSED_READING = """
import sys, time
def paused(event, args):
  if event == 'open' and str(args[0]).endswith('vit_jax_today.npz'):
    print('reading', flush=True)
    while True:
      time.sleep(1)
sys.addaudithook(paused)
"""


def test_the_commands_own_sigterm_line_takes_over_from_the_imports(tmp_path):
  """The imports' SIGTERM line (vit/__init__.py) ends where vit.cli.run begins: the command's
  own handling then has the signal, as it had without that line (and a job of several processes
  leaves it to jax.distributed's preemption notifier, started after)."""
  import signal
  (tmp_path / 'hook').mkdir()
  (tmp_path / 'hook' / 'sitecustomize.py').write_text(_PAUSED_READING)
  out = tmp_path / 'm.npz'
  returncode, _, err = commands.signal_at_line(
      [sys.executable, '-m', 'vit.export', f'--out={out}', '--format=vit_jax',
       f'--checkpoint=vit_jax:{ROOT}/tests/testdata/npz_layouts/vit_jax_today.npz'], 'stdout',
      lambda line: line.strip() == 'reading', signal.SIGTERM,
      env=dict(os.environ, JAX_PLATFORMS='cpu',
               PYTHONPATH=os.pathsep.join([str(tmp_path / 'hook'), ROOT])))
  assert err.splitlines() == [
      f'stopped (SIGTERM) before the export was written; nothing was written to {out}'], \
      err[-2000:]
  assert returncode == 143 and os.listdir(tmp_path) == ['hook']
