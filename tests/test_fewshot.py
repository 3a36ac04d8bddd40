"""Few-shot linear evaluation against a direct numpy solve, the evaluator and its CLI."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
import flax.linen as nn
import tensorflow_datasets as tfds

from configs.supervised import fashion_mnist as sup_config
from vit import config as config_lib, sharding
from vit.formats import vit_jax
from vit.data import fashion_mnist
from vit.errors import UserError
from vit.evaluators import fewshot
from vit.models.spec import ModelSpec
from vit.testing import tfds_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def direct_solve(train_x, train_y, test_x, test_y, num_classes, l2):
  """The reference formulation written out: standardise, bias column of 100, primal solve."""
  mean, std = train_x.mean(0), train_x.std(0) + 1e-5
  feats = lambda x: np.hstack([(x - mean) / std, np.full((len(x), 1), 100.0)])
  x, y = feats(train_x), 2.0 * np.eye(num_classes)[train_y] - 1.0
  w = np.linalg.solve(x.T @ x + l2 * np.eye(x.shape[1]), x.T @ y)
  return np.mean(np.argmax(feats(test_x) @ w, 1) == test_y), w


@pytest.mark.parametrize('n_train,dim', [(200, 12), (30, 64)])  # Primal and dual forms.
def test_linear_accuracy_matches_direct_solve(n_train, dim):
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(4, dim)) * 2.0
  train_y, test_y = rng.integers(0, 4, n_train), rng.integers(0, 4, 500)
  train_x = centers[train_y] + rng.normal(size=(n_train, dim)) * 2 + 5
  test_x = centers[test_y] + rng.normal(size=(500, dim)) * 2 + 5
  for l2 in (2.0 ** -4, 1.0, 2.0 ** 10):
    ref, w = direct_solve(train_x, train_y, test_x, test_y, 4, l2)
    got = fewshot.linear_accuracy(train_x, train_y, test_x, test_y, 4, l2)
    assert got == ref
    np.testing.assert_allclose(fewshot.LeastSquares(train_x, train_y, 4).weights(l2), w,
                               rtol=1e-6, atol=1e-9)
  assert 0.4 < got < 1.0  # Informative features, not a trivial 0 or 1.


def test_select_shots_is_seeded_class_balanced_and_nested():
  labels = np.repeat(np.arange(5), 40).astype(np.int32)
  source = fashion_mnist.ArraySource(np.zeros((200, 2, 2, 1), np.uint8), labels,
                                     class_names=tuple('abcde'))
  a = fewshot.select_shots(source, 10, seed=3)
  assert a == fewshot.select_shots(source, 10, seed=3)
  assert a != fewshot.select_shots(source, 10, seed=4)
  assert sorted(a) == list(range(5))
  for c, idx in a.items():
    assert len(idx) == 10 and len(set(idx)) == 10 and all(labels[i] == c for i in idx)
  # A record `usable` refuses (a bad one, with data.skip_bad_records) is passed over for the
  # next of its class in the same draw: the others stay where they were.
  bad = a[2][4]
  passed = fewshot.select_shots(source, 10, seed=3, usable=lambda i: i != bad)
  assert {c: v for c, v in passed.items() if c != 2} == {c: v for c, v in a.items() if c != 2}
  assert passed[2][:9] == [i for i in a[2] if i != bad] and passed[2][9] not in a[2]


def _tiny_config():
  config = sup_config.get_config()
  config.image_size, config.eval_batch_size = 28, 64
  config.model.hidden_size, config.model.transformer.mlp_dim = 32, 64
  config.model.transformer.num_layers = 1
  config.model.representation_size = 16
  config.fewshot.update(enabled=True, shots=(1, 5), l2_regs=(1.0, 2.0 ** 10), max_test=150)
  return config


@pytest.fixture(scope='module')
def tiny_params():
  """The params of _tiny_config's model, made once for the module: each test reads them, none
  changes them. Jitted: one compile, not one per op of the initialisers (~3 CPU-s eagerly)."""
  net = config_lib.build_model(config_lib.validate(_tiny_config()))
  return jax.jit(lambda rng: nn.unbox(net.init(rng, jnp.zeros((1, 28, 28, 3)), train=False)[
      'params']))(jax.random.key(0))


def test_evaluator_equals_linear_accuracy_on_its_features(tiny_params):
  config = _tiny_config()
  m = config_lib.validate(config)
  params = tiny_params
  images, labels = fashion_mnist.load('train')
  train = fashion_mnist.ArraySource(images[:300], labels[:300])
  test_images, test_labels = fashion_mnist.load('test')
  test = fashion_mnist.ArraySource(test_images[:400], test_labels[:400])
  mesh = sharding.make_mesh(config.mesh)
  ev = fewshot.from_config(config, m, mesh, train_source=train, test_source=test)
  results = ev.evaluate(params)
  assert set(results) == {'1shot', '5shot', '1shot_l2=1', '5shot_l2=1', '1shot_l2=1024',
                          '5shot_l2=1024'} == set(ev.metric_names)  # Stated before training.
  assert results['5shot'] == results['5shot_l2=1024']
  # Recompute by hand: features of the chosen examples, then the solve.
  rep = fewshot.make_representation_fn(m)
  per_class = fewshot.select_shots(train, 5, config.fewshot.seed)
  idx = [i for c in sorted(per_class) for i in per_class[c]]
  feats = lambda im: np.asarray(rep(params, jnp.asarray(np.repeat(im, 3, -1))), np.float64)
  tx, ty = feats(images[idx]), labels[idx]
  test_idx = ev.test_source.indices
  assert len(test_idx) == 150
  vx, vy = feats(test_images[test_idx]), test_labels[test_idx]
  assert tx.shape == (50, 16)  # pre_logits is the representation.
  np.testing.assert_allclose(results['5shot'],
                             fewshot.linear_accuracy(tx, ty, vx, vy, 10, 2.0 ** 10), atol=1e-9)
  assert results['5shot'] > 0.2  # Random features still beat chance (0.1) with 5 shots.


def test_features_that_overflow_are_one_line_not_a_linalg_traceback(tiny_params):
  """Finite weights whose attention logits overflow float32 (a query kernel of 1e38) give NaN
  features; few-shot's eigendecomposition then raised numpy's LinAlgError ('Eigenvalues did
  not converge') with a traceback. The linear probes read features through the same embed."""
  config = _tiny_config()
  m = config_lib.validate(config)
  # A copy, dicts and arrays, changed below: the module's params stay as the other tests read them.
  params = jax.tree.map(np.array, tiny_params)
  attention = params['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_1']
  attention['query']['kernel'] = attention['query']['kernel'] * 1e38
  source = fashion_mnist.ArraySource(*(a[:100] for a in fashion_mnist.load('test')))
  config.fewshot.shots = (1,)
  ev = fewshot.from_config(config, m, sharding.make_mesh(config.mesh), train_source=source,
                           test_source=source)
  with pytest.raises(UserError, match=r'^the features of 10 of 10 images are not finite \(NaN '
                                      r'or inf\): the model\'s activations overflow float32, so '
                                      r'no probe is fit on them$'):
    ev.evaluate(params)


def test_too_few_examples_per_class_is_an_error():
  config = _tiny_config()
  config.fewshot.shots = (50,)
  m = config_lib.validate(config)
  source = fashion_mnist.ArraySource(*(a[:100] for a in fashion_mnist.load('test')))
  with pytest.raises(UserError, match=r"^config.fewshot.shots=\(50,\): split 'train' has fewer "
                                      r"than 50 examples of 10 classes: T-shirt/top \(8\), "):
    fewshot.from_config(config, m, sharding.make_mesh(config.mesh), train_source=source,
                        test_source=source)
  # A class without any training image (prepare keeps empty class folders) is named too.
  images, labels = fashion_mnist.load('test')
  keep = labels[:200] != 3
  no_dress = fashion_mnist.ArraySource(images[:200][keep], labels[:200][keep])
  config.fewshot.shots = (1,)
  with pytest.raises(UserError, match=r": split 'train' has fewer than 1 examples of 1 class: "
                                      r"Dress \(0\)$"):
    fewshot.from_config(config, m, sharding.make_mesh(config.mesh), train_source=no_dress,
                        test_source=no_dress)


@pytest.mark.parametrize('key', ['train_split', 'test_split'])
def test_a_fewshot_split_the_source_lacks_is_named_by_its_key(key):
  """fewshot.train_split='valid' was refused as 'config.data.eval_split='valid'', a key the
  user had not set (make_source names data.train_split or data.eval_split)."""
  config = _tiny_config()
  config.fewshot[key] = 'valid'
  m = config_lib.validate(config)
  with pytest.raises(UserError, match=rf"^config.fewshot.{key}='valid': not a split of "
                                      r"fashion_mnist \(splits: train, test\)$"):
    fewshot.from_config(config, m, sharding.make_mesh(config.mesh))


def test_supervised_training_reads_the_fewshot_splits_it_is_given():
  """supervised.train handed the evaluator its own training and evaluation sources whatever
  fewshot.train_split and fewshot.test_split said: both were ignored, 'bogus' included."""
  from supervised import train as sup_train
  config = _tiny_config()
  m = config_lib.validate(config)
  small = fashion_mnist.ArraySource(*(a[:100] for a in fashion_mnist.load('test')))

  def evaluator(**splits):
    config.fewshot.update(splits)
    task = sup_train.build_task(config, m, train_source=small, eval_source=small)
    return next(e for e in task.evaluators if isinstance(e, fewshot.FewShotEvaluator))

  own = evaluator(train_split='train', test_split=None)  # The task's sources, as before.
  assert own.train_source.source is small and own.test_source.source is small
  other = evaluator(train_split='test', test_split='train')
  assert len(other.train_source.source) == 10_000 and len(other.test_source.source) == 60_000
  with pytest.raises(UserError, match=r"^config.fewshot.test_split='bogus': not a split"):
    evaluator(train_split='train', test_split='bogus')


@pytest.mark.parametrize('flag,value,message', [
    ('l2_reg', -1.0, '--l2_reg=-1: must be > 0'),
    ('max_test', -5, '--max_test=-5: must be an integer >= 0 (test examples; 0: all)'),
    ('shots', ['1', '0'], "--shots=1,0: '0' is not a positive integer"),
    ('l2_regs', ['1', 'x'], "--l2_regs=1,x: 'x' is not a positive number"),
    # Tracebacks before (a ZeroDivisionError, numpy's seed, a negative shape in the init).
    ('batch_size', 0, f'--batch_size=0: must be a positive multiple of the '
                      f'{jax.device_count()} devices'),
    ('seed', -1, '--seed=-1: must be an integer >= 0'),
    ('image_size', -4, "--image_size=-4: must be a positive integer (default: the "
                       "checkpoint's)"),
    ('image_size', 0, "--image_size=0: must be a positive integer (default: the "
                      "checkpoint's)"),
])
def test_cli_flags_are_named_with_their_values(flag, value, message):
  import types
  flags_ = types.SimpleNamespace(shots=['1', '5'], l2_regs=['1', '16'], l2_reg=1024.0,
                                 max_test=100, batch_size=256, seed=0, image_size=None)
  setattr(flags_, flag, value)
  with pytest.raises(UserError) as e:
    fewshot._check_flags(flags_)
  assert str(e.value) == message


def test_an_output_in_a_runs_checkpoints_folder_is_refused(tmp_path):
  """--output runs/sup/checkpoints/600/fs.json was written into the step, which the run's
  retention later deleted with it; export and vit.inspect refused such an --out already."""
  import types
  (tmp_path / 'run' / 'checkpoints' / '600').mkdir(parents=True)
  (tmp_path / 'run' / 'batch_contract.json').write_text('{}')
  out = str(tmp_path / 'run' / 'checkpoints' / '600' / 'fs.json')
  with pytest.raises(UserError, match=rf'^--output {out}: inside the checkpoints folder of the '
                                      rf'run {tmp_path}/run, which holds only its saved steps '
                                      r'\(the run deletes old steps with what they hold\); '
                                      rf'write it elsewhere \(e.g. {tmp_path}/run/fs.json\)$'):
    fewshot._check_output(types.SimpleNamespace(output=out, init=f'vit_jax:{tmp_path}/x.npz'))
  # Beside the run's own files, as the line advises, even of the run read.
  fewshot._check_output(types.SimpleNamespace(output=str(tmp_path / 'run' / 'fs.json'),
                                              init=f'supervised:{tmp_path}/run'))


def test_an_output_that_is_a_file_of_the_init_checkpoint_is_refused(tmp_path, monkeypatch):
  """`--init vit_jax:X.npz --output X.npz` replaced the checkpoint by the JSON, exit status 0;
  `--output DIR/config.json` of hf:DIR or timm:DIR broke that folder the same way. Refused
  before anything is read, any spelling of the file (relative, ./, a link, @SIZE)."""
  import types
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'X.npz').write_bytes(b'weights')
  (tmp_path / 'link.npz').symlink_to(tmp_path / 'X.npz')
  (tmp_path / 'hf').mkdir()
  (tmp_path / 'hf' / 'config.json').write_text('{}')
  (tmp_path / 'run').mkdir()
  (tmp_path / 'run' / '.lock').write_text('pid 1')
  replace = 'which the output would replace; name another file'
  change = 'which the output would change; write it elsewhere'
  for init, out, told in (
      ('vit_jax:X.npz', 'X.npz', f'the checkpoint being read (--init vit_jax:X.npz), {replace}'),
      (f'vit_jax:{tmp_path}/X.npz@224', './link.npz',
       f'the checkpoint being read (--init vit_jax:{tmp_path}/X.npz@224), {replace}'),
      ('hf:hf', f'{tmp_path}/hf/config.json',
       f'inside the folder of the checkpoint being read (--init hf:hf), {change}'),
      (f'timm:{tmp_path}/hf/', 'hf/fs.json',
       f'inside the folder of the checkpoint being read (--init timm:{tmp_path}/hf/), {change}'),
      ('mpp:run', 'run/.lock', f'a file of the run being read (--init mpp:run), {replace}'),
      ('mae:run', 'run/events.out.tfevents.1.host',
       f'a file of the run being read (--init mae:run), {replace}')):
    with pytest.raises(UserError) as e:
      fewshot._check_output(types.SimpleNamespace(init=init, output=out))
    assert str(e.value) == f'--output {out}: {told}'
  assert (tmp_path / 'X.npz').read_bytes() == b'weights'
  assert os.listdir(tmp_path / 'hf') == ['config.json']
  fewshot._check_output(types.SimpleNamespace(init='vit_jax:X.npz', output='X.json'))


def test_cli_max_test_0_is_all_of_the_test_split_as_the_config_key():
  import types
  flags_ = types.SimpleNamespace(shots=['1', '5'], l2_regs=['1', '16'], l2_reg=1024.0,
                                 max_test=0, batch_size=256, seed=0, image_size=None,
                                 dataset='fashion_mnist', data_dir=None, train_split='train',
                                 test_split='test', skip_bad_records=False)
  fewshot._check_flags(flags_)
  ckpt = types.SimpleNamespace(image_size=28, channels=1)
  assert fewshot._cli_config(flags_, ckpt).fewshot.max_test == 0


@pytest.mark.parametrize('dataset', ['fashion_mnist', 'tfds:no_such_dataset'])
def test_cli_names_the_data_dir_flag_not_its_config_key(tmp_path, dataset):
  """--data_dir=EMPTY was refused as '... or set config.data.data_dir', a key the CLI's user
  never typed: the data layer's words are for trainers, the CLI sets that key from --data_dir."""
  import types
  flags_ = types.SimpleNamespace(shots=['1'], l2_regs=['1'], l2_reg=1024.0, max_test=0,
                                 batch_size=256, seed=0, image_size=None, dataset=dataset,
                                 data_dir=str(tmp_path), train_split='train', test_split='test',
                                 skip_bad_records=False)
  config = fewshot._cli_config(flags_, types.SimpleNamespace(image_size=28, channels=1))
  with pytest.raises(UserError) as e:  # The data layer, before any representation is needed.
    fewshot.FewShotEvaluator(config, None, None)
  assert 'config.data.data_dir' in str(e.value)
  named = str(fewshot._named_by_flags(e.value))
  assert named == {
      'fashion_mnist': f'{tmp_path}/train-images-idx3-ubyte.gz: not found; install it with '
                       '`apt-get install dataset-fashion-mnist` or set --data_dir',
      'tfds:no_such_dataset': '--dataset=tfds:no_such_dataset: no TFDS dataset of that name, '
                              f"registered or prepared under --data_dir='{tmp_path}'"}[dataset]


def test_cli_names_tfds_default_data_dir_not_none():
  """Without --data_dir an unknown name read '... registered or prepared under
  --data_dir=None': no folder, and not where TFDS looked."""
  import types
  flags_ = types.SimpleNamespace(shots=['1'], l2_regs=['1'], l2_reg=1024.0, max_test=0,
                                 batch_size=256, seed=0, image_size=None,
                                 dataset='tfds:no_such_dataset', data_dir=None,
                                 train_split='train', test_split='test', skip_bad_records=False)
  config = fewshot._cli_config(flags_, types.SimpleNamespace(image_size=28, channels=1))
  with pytest.raises(UserError) as e:
    fewshot.FewShotEvaluator(config, None, None)
  assert str(fewshot._named_by_flags(e.value)) == (
      '--dataset=tfds:no_such_dataset: no TFDS dataset of that name, registered or prepared '
      f"under TFDS' default data_dir {tfds.core.constants.get_default_data_dir()}; set "
      '--data_dir to the folder it was prepared in')


def _tiny_npz(folder) -> str:
  """A 1-layer ViT of 7x7 patches at 28 px, 3 channels, saved as a vit_jax .npz."""
  m = config_lib.model_defaults().to_dict()
  m.update(patches=dict(size=(7, 7)), hidden_size=16, num_classes=3)
  m['transformer'].update(mlp_dim=32, num_heads=2, num_layers=1)
  net = config_lib.build_model(ModelSpec.from_dict(m))
  params = jax.jit(lambda rng: net.init(rng, jnp.zeros((1, 28, 28, 3)), train=False)['params'])(
      jax.random.key(0))  # Jitted: one compile, not one per op of the initialisers.
  vit_jax.save(jax.device_get(nn.unbox(params)), str(folder / 'm.npz'))
  return str(folder / 'm.npz')


@pytest.fixture(scope='module')
def tiny_npz(tmp_path_factory) -> str:
  """_tiny_npz made once for the module: the CLI tests read it, none changes it."""
  return _tiny_npz(tmp_path_factory.mktemp('npz'))


def test_cli_on_an_npz(tmp_path, tiny_npz):
  out = tmp_path / 'fewshot.json'
  run = subprocess.run(
      [sys.executable, '-m', 'vit.evaluators.fewshot', f'--init=vit_jax:{tiny_npz}',
       '--shots=1,2', '--l2_regs=1,16', '--max_test=100', f'--output={out}'],
      cwd=ROOT, capture_output=True, text=True, timeout=900,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert run.returncode == 0, run.stderr[-2000:]
  record = json.loads(out.read_text())
  results = record['results']
  assert set(results) == {'1shot', '2shot', '1shot_l2=1', '2shot_l2=1', '1shot_l2=16',
                          '2shot_l2=16'}
  assert all(0.0 <= v <= 1.0 for v in results.values())
  assert json.loads(run.stdout) == record
  # Which features were read: a classifier's class token (an mae: spec would read the patch mean).
  assert record['representation'] == 'class token'
  assert record['representation_from'].startswith("vit_jax: spec, a classifier's pooled")
  # The patch mean of the same weights, as an mae: workdir of them would be read.
  mean = subprocess.run(
      [sys.executable, '-m', 'vit.evaluators.fewshot', f'--init=vit_jax:{tiny_npz}',
       '--shots=1,2', '--l2_regs=1,16', '--max_test=100', '--representation=patch_mean'],
      cwd=ROOT, capture_output=True, text=True, timeout=900,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert mean.returncode == 0, mean.stderr[-2000:]
  read = json.loads(mean.stdout)
  assert read['representation'] == 'mean of patch tokens', read
  assert read['representation_from'] == 'vit_jax: spec, --representation=patch_mean'
  assert read['results'] != results  # Other features, other accuracies.
  # A size the patches do not divide was cut to whole patches without a word; an --output
  # that cannot be written was found after the evaluation.
  (tmp_path / 'file').write_text('')
  for flags_, line in (
      (['--image_size=30'], "error: --image_size=30: not a multiple of the model's patch "
                            "stride 7"),
      ([f'--output={tmp_path / "file" / "x.json"}'],
       f'error: --output {tmp_path / "file" / "x.json"}: not writable ({tmp_path / "file"} is '
       'a file, not a directory); nothing was evaluated')):
    refused = subprocess.run(
        [sys.executable, '-m', 'vit.evaluators.fewshot', f'--init=vit_jax:{tiny_npz}',
         '--shots=1', *flags_], cwd=ROOT, capture_output=True, text=True, timeout=900,
        env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1] == line
  # --train_split=valid was named '--test_split=valid' (make_source took it for data.eval_split).
  for flag in ('--test_split', '--train_split'):
    split = subprocess.run(
        [sys.executable, '-m', 'vit.evaluators.fewshot', f'--init=vit_jax:{tiny_npz}',
         '--shots=1', f'{flag}=valid'], cwd=ROOT, capture_output=True, text=True,
        timeout=900, env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert split.returncode == 2 and split.stderr.strip().splitlines()[-1] == (
        f'error: {flag}=valid: not a split of fashion_mnist (splits: train, test)')
  bad = subprocess.run([sys.executable, '-m', 'vit.evaluators.fewshot', '--init=npz:x'],
                       cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert bad.returncode == 2 and bad.stderr.strip().count('\n') == 0
  assert 'FORMAT:PATH' in bad.stderr
  helped = subprocess.run([sys.executable, '-m', 'vit.evaluators.fewshot', '--help'], cwd=ROOT,
                          capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert '--shots' in helped.stdout and '--init' in helped.stdout
  assert 'both trainers' not in helped.stdout
  assert 'the supervised, MPP, MAE and SimMIM trainers' in ' '.join(helped.stdout.split())


def test_the_output_file_is_written_before_the_json_is_printed(tmp_path, monkeypatch):
  """`... --output F | head` closes stdout before the print ends; F was written after the
  print, so the BrokenPipeError lost it (exit status 1, no file)."""
  class ClosedPipe:
    def write(self, text):
      raise BrokenPipeError(32, 'Broken pipe')
  monkeypatch.setattr(sys, 'stdout', ClosedPipe())
  out = tmp_path / 'fewshot.json'
  record = {'init': 'mpp:runs/mpp', 'results': {'1shot': 0.5}}
  with pytest.raises(BrokenPipeError):
    fewshot.report(record, str(out))
  assert json.loads(out.read_text()) == record
  assert out.read_text().endswith('}\n')  # A text file, as the printed JSON.


def test_the_representation_is_named_as_checkpoint_representation_reads_it():
  """The CLI's JSON names the features it read: an encoder's spec (mae:) reads the mean of the
  patch tokens, a classifier's the class token (or pre_logits, or its GAP): the same weights
  score differently on them, so a result must say which."""
  m = config_lib.model_defaults().to_dict()
  m.update(patches=dict(size=(7, 7)), hidden_size=16, num_classes=None)
  m['transformer'].update(mlp_dim=32, num_heads=2, num_layers=1)
  model = ModelSpec.from_dict(m)
  net = config_lib.build_model(model)
  params = jax.jit(lambda rng: net.init(rng, jnp.zeros((1, 28, 28, 3)), train=False)['params'])(
      jax.random.key(0))  # Jitted: one compile, not one per op of the initialisers.
  params = jax.tree.map(lambda x: x + 0.1, nn.unbox(params))  # A class token that is not 0.
  images = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 3), dtype=np.uint8)
  backbone = config_lib.build_model(model.replace(classifier='unpooled'))
  from vit.preprocess import input_fn
  encoded = backbone.apply({'params': params}, input_fn(model)(images), train=False)
  words = {'class token': encoded[:, 0], 'mean of patch tokens': encoded[:, 1:].mean(1)}
  for spec in ('mae:run', 'mpp:run', 'simmim:run', 'vit_jax:m.npz', 'hf:dir', 'supervised:run'):
    for choice in fewshot.REPRESENTATIONS:
      named = fewshot.describe_representation(spec, model, choice)
      read = fewshot.checkpoint_representation(spec, model, choice)(params, images)
      np.testing.assert_allclose(read, words[named['representation']], rtol=1e-5, atol=1e-5)
      assert named['representation_from'].startswith(f'{spec.split(":")[0]}: spec, ')
    # --representation reads one thing whatever the format: an exported encoder scores as its
    # workdir did.
    assert fewshot.describe_representation(spec, model, 'patch_mean') == {
        'representation': 'mean of patch tokens',
        'representation_from': f'{spec.split(":")[0]}: spec, --representation=patch_mean'}
    assert fewshot.describe_representation(spec, model, 'pooled')[
        'representation'] == 'class token'
  assert fewshot.describe_representation('mae:run', model) == {
      'representation': 'mean of patch tokens',
      'representation_from': 'mae: spec, an MAE encoder, as its trainer evaluates it'}
  with pytest.raises(ValueError, match='no class token'):
    fewshot.make_patch_mean_fn(model.replace(classifier='gap'))
  with pytest.raises(ValueError, match="representation 'cls': not one of auto, pooled"):
    fewshot.checkpoint_representation('hf:dir', model, 'cls')
  import types
  flags_ = types.SimpleNamespace(representation='patch_mean', init='vit_jax:gap.npz')
  with pytest.raises(UserError) as e:
    fewshot._representation_of_flags(flags_, model.replace(classifier='gap'))
  assert str(e.value) == ("--representation=patch_mean: vit_jax:gap.npz has no class token "
                          "(classifier 'gap'): its pooled features, the default, are the mean "
                          'of its patch tokens already')
  assert fewshot.describe_representation('hf:dir', model)['representation'] == 'class token'
  assert fewshot.describe_representation('supervised:r', model.replace(classifier='gap'))[
      'representation'] == 'mean of patch tokens'
  assert fewshot.describe_representation('supervised:r', model.replace(
      representation_size=8))['representation'] == 'pre_logits of the class token'


BAD_IMAGE_IDS = {'train': 4, 'test': 102}


class VitFewshotBadImages(tfds.core.GeneratorBasedBuilder):
  """12 train and 9 test images of 3 classes, each filled with its id; one of each split does
  not decode (tests/test_data_pipeline.py's VitTestBadImages also has a label 7 with no class
  names, which few-shot reads as 8 classes, 5 of them empty)."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds_images.info(self, ['a', 'b', 'c'])

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples('train', 0, 12),
            'test': self._generate_examples('test', 100, 9)}

  def _generate_examples(self, split, first, n):
    for i in range(first, first + n):
      # A PIL image, which tfds encodes as PNG with PIL: from an array it encodes with
      # TensorFlow, whose import alone cost this test ~10 CPU-s. Lossless either way, the
      # same pixels come back.
      image = PIL.Image.fromarray(np.full((12, 10, 3), i % 100 * 20, np.uint8))
      if i == BAD_IMAGE_IDS[split]:
        image = b'\xff\xd8 this is not a jpeg'
      yield i, {'image': image, 'label': i % 3, 'id': i}


def test_cli_a_bad_record_is_named_with_its_data_and_the_flag_that_skips_it(tmp_path, tiny_npz):
  """An image that did not decode read 'error: --init vit_jax:m.npz: tfds:NAME split 'train'
  (few-shot subset): record 4: ...; set config.data.skip_bad_records=True to skip such records':
  the checkpoint blamed, a config key this CLI has no flag for, and the record's place in the
  few-shot draw (4) given as its place in the split (2)."""
  data_dir = tmp_path / 'tfds'
  VitFewshotBadImages(data_dir=str(data_dir), file_format='array_record').download_and_prepare()
  # On-disk order: TFDS shuffles the examples by key when it writes them.
  where = {split: [int(r['id']) for r in tfds.data_source(
      'vit_fewshot_bad_images', data_dir=str(data_dir), split=split, download=False,
      decoders={'image': tfds.decode.SkipDecoding()})].index(BAD_IMAGE_IDS[split])
      for split in BAD_IMAGE_IDS}
  command = [sys.executable, '-m', 'vit.evaluators.fewshot',
             f'--init=vit_jax:{tiny_npz}', '--dataset=tfds:vit_fewshot_bad_images',
             f'--data_dir={data_dir}', '--shots=1,3', '--l2_regs=1']
  run = lambda *extra: subprocess.run(command + list(extra), cwd=ROOT, capture_output=True,
                                      text=True, timeout=900,
                                      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  refused = run()
  assert refused.returncode == 2 and 'Traceback' not in refused.stderr
  assert refused.stderr.strip().splitlines() == [  # The seed-0 draw of 3 shots takes id 4.
      "error: tfds:vit_fewshot_bad_images split 'train' (few-shot subset): record "
      f"{where['train']}: key 'image': cannot decode the image (not a recognised image format); "
      'set --skip_bad_records to skip such records']
  skipped = run('--skip_bad_records')
  assert skipped.returncode == 0, skipped.stderr[-2000:]
  record = json.loads(skipped.stdout)
  assert record['skipped_bad_records'] == {'train': 1, 'test': 1}
  # 8 test images left: every accuracy is a whole number of eighths.
  assert all(v * 8 == round(v * 8) for v in record['results'].values()), record['results']
  lines = skipped.stderr.strip().splitlines()
  assert lines[-1] == (
      'warning: skipped 2 bad records of tfds:vit_fewshot_bad_images: 1 of the training shots '
      '(replaced by others of the same class), 1 of the test examples (left out of the '
      'accuracy)')
  assert any(f"split 'train': record {where['train']}: key 'image'" in line for line in lines)
  assert any(f"split 'test' (few-shot subset): record {where['test']}: key 'image'" in line
             for line in lines)
