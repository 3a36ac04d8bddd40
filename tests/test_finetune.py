"""Fine-tuning from an official-layout .npz at a higher resolution and from a transformers ViT;
resuming a fine-tune."""
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn

from configs.finetune import fashion_mnist as ft_config
from supervised import finetune
from vit import checkpoints, config as config_lib, init_spec, sharding
from vit.formats import hf, vit_jax
from vit.data import fashion_mnist
from vit.errors import UserError
from vit.models.spec import ModelSpec
from vit.models.vit import resize_posemb
from vit.training import loop, optimizers


def tiny_model(**kw):
  m = config_lib.model_defaults().to_dict()
  m.update(patches=dict(size=(4, 4)), hidden_size=32, num_classes=7, representation_size=16)
  m['transformer'].update(mlp_dim=64, num_heads=4, num_layers=2)
  m.update(kw)
  return ModelSpec.from_dict(m)


def write_tiny_npz(path, image_size=28, seed=0, **kw):
  net = config_lib.build_model(tiny_model(**kw))
  # Jitted: one compile, not one per op of the initialisers (~4 s on a loaded machine).
  params = jax.jit(lambda rng: nn.unbox(net.init(
      rng, jnp.zeros((1, image_size, image_size, 3)), train=False)['params']))(
          jax.random.key(seed))
  vit_jax.save(jax.device_get(params), str(path))
  return vit_jax.load(str(path)).params


@pytest.fixture(scope='module')
def fmnist():
  train = fashion_mnist.load('train')
  test = fashion_mnist.load('test')
  return (fashion_mnist.ArraySource(train[0][:2048], train[1][:2048]),
          fashion_mnist.ArraySource(test[0][:200], test[1][:200]))


def small_config(init, **kw):
  config = ft_config.get_config()
  config.init = init
  config.batch_size, config.eval_batch_size = 32, 100
  config.total_steps, config.log_every = 12, 4
  config.optimizer.warmup_steps = 3
  for key, value in kw.items():
    config[key] = value
  return config


def initial_state(config, task):
  mesh = sharding.make_mesh(config.mesh)
  tx, _ = optimizers.build(config.optimizer, config.total_steps)
  build, _ = loop.create_state(task, tx, config, mesh)
  with jax.set_mesh(mesh):
    return jax.device_get(build())


def test_finetune_npz_at_higher_resolution(tmp_path, fmnist):
  source = write_tiny_npz(tmp_path / 'tiny.npz', image_size=28)
  config = small_config(f'vit_jax:{tmp_path / "tiny.npz"}', image_size=32)
  m, ckpt = finetune.prepare(config)
  assert ckpt.image_size == 28 and config.model.hidden_size == 32
  assert m.representation_size is None and m.num_classes == 10  # Head replaced.
  task = finetune.build_task(config, m, ckpt, train_source=fmnist[0], eval_source=fmnist[1])
  state = initial_state(config, task)
  p = state.params
  np.testing.assert_array_equal(p['embedding']['kernel'], source['embedding']['kernel'])
  np.testing.assert_array_equal(
      p['Transformer']['encoderblock_1']['MlpBlock_3']['Dense_0']['kernel'],
      source['Transformer']['encoderblock_1']['MlpBlock_3']['Dense_0']['kernel'])
  pe = p['Transformer']['posembed_input']['pos_embedding']
  assert pe.shape == (1, 1 + 8 * 8, 32)  # 7x7 grid at 28 px -> 8x8 at 32 px.
  np.testing.assert_allclose(
      pe, resize_posemb(source['Transformer']['posembed_input']['pos_embedding'], (8, 8)),
      atol=1e-7)
  assert 'pre_logits' not in p and p['head']['kernel'].shape == (32, 10)
  assert not np.any(p['head']['kernel']) and not np.any(p['head']['bias'])
  np.testing.assert_array_equal(state.ema_params['head']['kernel'], p['head']['kernel'])

  workdir = str(tmp_path / 'run')
  init_spec.write_class_names(workdir, fashion_mnist.CLASS_NAMES)
  final = loop.train(config, workdir, task).state
  moved = np.abs(jax.device_get(final.params['head']['kernel'])).max()
  assert moved > 0
  # The run's checkpoint is itself a complete init spec, at the fine-tuning resolution.
  again = init_spec.load(f'supervised:{workdir}')
  assert (again.image_size, again.model.num_classes) == (32, 10)
  assert again.class_names == list(fashion_mnist.CLASS_NAMES)
  np.testing.assert_array_equal(again.params['head']['kernel'],
                                jax.device_get(final.ema_params['head']['kernel']))


def test_finetune_sincos2d_npz_at_the_runs_image_size(tmp_path, fmnist):
  """A big_vision sincos2d .npz states no image size, and a sin-cos model runs at any: the
  fine-tune takes config.image_size, with or without FILE.npz@SIZE (the run's size wins, as
  for every init), and trains at it."""
  path = os.path.join(os.path.dirname(__file__), 'testdata', 'npz_layouts',
                      'big_vision_sincos_gap.npz')
  config = small_config(f'vit_jax:{path}@16', image_size=28)
  m, ckpt = finetune.prepare(config)
  assert ckpt.image_size == 16 and config_lib.token_grid(config, m) == (7, 7)
  assert init_spec.describe(ckpt).endswith(', classifier gap, trained at 16px, head 5')
  config = small_config(f'vit_jax:{path}', image_size=28, total_steps=4)
  m, ckpt = finetune.prepare(config)
  assert ckpt.image_size == 28 and m.posemb == 'sincos_2d' and m.classifier == 'gap'
  # Fine-tuning's first line: the 28px are the run's, not a size the file states.
  assert init_spec.describe(ckpt).endswith(', no stated image size (read at 28px), head 5')
  task = finetune.build_task(config, m, ckpt, train_source=fmnist[0], eval_source=fmnist[1])
  state = initial_state(config, task)
  np.testing.assert_array_equal(state.params['embedding']['kernel'],
                                ckpt.params['embedding']['kernel'])
  assert 'posembed_input' not in state.params['Transformer']
  workdir = str(tmp_path / 'run')
  final = loop.train(config, workdir, task).state
  assert int(final.step) == 4 and np.abs(jax.device_get(final.params['head']['kernel'])).max() > 0
  again = init_spec.load(f'supervised:{workdir}')
  assert again.image_size == 28 and again.model.posemb == 'sincos_2d'


def test_finetune_from_transformers_checkpoint(tmp_path, fmnist):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  torch.manual_seed(0)
  hf_cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, image_size=16, patch_size=4,
                                  num_labels=3)
  transformers.ViTForImageClassification(hf_cfg).save_pretrained(tmp_path / 'hf')
  mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
  transformers.ViTImageProcessor(image_mean=mean, image_std=std).save_pretrained(tmp_path / 'hf')
  loaded = hf.load(str(tmp_path / 'hf')).params
  config = small_config(f'hf:{tmp_path / "hf"}', image_size=28, total_steps=6)
  m, ckpt = finetune.prepare(config)
  # The architecture, GELU flavour and LayerNorm epsilon come from config.json.
  assert config.model.gelu_approximate is False and config.model.layer_norm_epsilon == 1e-12
  assert tuple(config.model.patches.size) == (4, 4) and config.model.transformer.num_layers == 2
  # The processor's normalisation, from preprocessor_config.json, is the model's input.
  assert tuple(config.model.pixels.mean) == tuple(mean) and m.pixels.std == tuple(std)
  task = finetune.build_task(config, m, ckpt, train_source=fmnist[0], eval_source=fmnist[1])
  state = initial_state(config, task)
  np.testing.assert_array_equal(
      state.params['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_1']['key'][
          'kernel'],
      loaded['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_1']['key']['kernel'])
  assert state.params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 50, 32)
  final = loop.train(config, str(tmp_path / 'run'), task).state
  assert int(final.step) == 6
  # Kept with the run: its export states the same processor, at the fine-tuning resolution.
  from vit import export
  export.export(str(tmp_path / 'run'), 'hf', str(tmp_path / 'out'))
  proc = transformers.ViTImageProcessor.from_pretrained(str(tmp_path / 'out'))
  assert list(proc.image_mean) == mean and list(proc.image_std) == std
  assert dict(proc.size) == {'height': 28, 'width': 28}


def test_prepare_errors_name_the_problem(tmp_path):
  write_tiny_npz(tmp_path / 'tiny.npz')
  with pytest.raises(UserError, match=r'config.init=None: set the weights'):
    finetune.prepare(small_config(None))
  config = small_config(f'vit_jax:{tmp_path / "tiny.npz"}')
  config.model.hidden_size = 64
  config.model.transformer.num_heads = 8
  with pytest.raises(UserError) as e:
    finetune.prepare(config)
  assert 'model.hidden_size: config 64 vs checkpoint 32' in str(e.value)
  assert 'model.transformer.num_heads: config 8 vs checkpoint 4' in str(e.value)
  config = small_config(f'vit_jax:{tmp_path / "tiny.npz"}')
  config.data.channels = 1
  with pytest.raises(UserError, match='data.channels=1.*3-channel'):
    finetune.prepare(config)
  with pytest.raises(UserError, match='file not found'):
    finetune.prepare(small_config(f'vit_jax:{tmp_path / "none.npz"}'))
  with pytest.raises(UserError, match='no checkpoint found'):
    (tmp_path / 'empty').mkdir()
    finetune.prepare(small_config(f'supervised:{tmp_path / "empty"}'))


def test_the_first_line_says_a_headless_checkpoint_has_no_head(tmp_path):
  """An encoder (MPP, MAE, SimMIM, a ViTModel) was described as 'head None' in fine-tuning's
  and export's first line."""
  write_tiny_npz(tmp_path / 'enc.npz', num_classes=None, representation_size=None)
  write_tiny_npz(tmp_path / 'cls.npz')
  assert init_spec.describe(init_spec.load(f'vit_jax:{tmp_path}/enc.npz')) == (
      'patches (4, 4), hidden 32, mlp 64, heads 4, layers 2, classifier token, trained at '
      '28px, no head')
  # Its representation layer, read from the weights, is named (the line omitted it).
  assert init_spec.describe(init_spec.load(f'vit_jax:{tmp_path}/cls.npz')) == (
      'patches (4, 4), hidden 32, mlp 64, heads 4, layers 2, pre-logits 16, classifier token, '
      'trained at 28px, head 7')


def _files(workdir):
  """Every file under `workdir` but the lock (which names its latest holder), with its mtime."""
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, names in os.walk(workdir) for f in names if f != '.lock'}


def test_a_resume_adopts_the_newest_saved_config_a_model_reads(tmp_path, monkeypatch):
  """_saved_backbone: a step whose config no model reads (an unknown preset) is passed over for
  an older one; a checkpoints folder that cannot be listed is left to the loop to name (None);
  the steps are read newest first, and no further than the one adopted."""
  good = small_config('vit_jax:a.npz')
  good.model.update(tiny_model(hidden_size=16).to_dict())
  good.data.channels = 1
  foreign = small_config('vit_jax:a.npz')
  foreign.model.name = 'ViT-Nope'
  read = []

  def saved_configs(workdir):
    assert workdir == str(tmp_path)
    for step, config in ((6, foreign), (4, good), (2, None)):
      read.append(step)
      yield step, config.to_dict()

  def unlistable(workdir):
    raise OSError(13, 'Permission denied', workdir)
    yield  # A generator, as checkpoints.saved_configs: it raises when first read.

  monkeypatch.setattr(checkpoints, 'has_steps', lambda workdir: True)
  monkeypatch.setattr(checkpoints, 'saved_configs', saved_configs)
  assert finetune._saved_backbone(str(tmp_path)) == (tiny_model(hidden_size=16), 1)
  assert read == [6, 4]
  monkeypatch.setattr(checkpoints, 'saved_configs', lambda workdir: iter([(6, foreign.to_dict())]))
  assert finetune._saved_backbone(str(tmp_path)) is None  # No step's config reads.
  monkeypatch.setattr(checkpoints, 'saved_configs', unlistable)
  assert finetune._saved_backbone(str(tmp_path)) is None
  assert finetune._saved_backbone(None) is None


def test_a_resumed_finetune_keeps_its_init_and_says_so(tmp_path, fmnist, caplog):
  """Another config.init is refused before anything is written (the weights would come from
  the old one, the saved config would record the new); the same init, however spelt,
  resumes, and the log says it resumes rather than that it fine-tunes anew."""
  tiny = dict(hidden_size=16, representation_size=None, transformer=dict(
      mlp_dim=32, num_heads=2, num_layers=1, dropout_rate=0.0, attention_dropout_rate=0.0))
  write_tiny_npz(tmp_path / 'a.npz', **tiny)
  write_tiny_npz(tmp_path / 'b.npz', seed=1, **tiny)
  first, other = f'vit_jax:{tmp_path / "a.npz"}', f'vit_jax:{tmp_path / "b.npz"}'
  workdir = str(tmp_path / 'run')
  sources = dict(train_source=fmnist[0], eval_source=fmnist[1])

  def config(init, steps):
    c = small_config(init, image_size=28, total_steps=steps, batch_size=16)
    # A schedule that does not depend on total_steps: the four runs share one compiled step.
    c.optimizer.warmup_steps, c.optimizer.decay = 0, 'constant'
    return c

  caplog.set_level(logging.INFO)
  finetune.finetune(config(first, 2), workdir, **sources)
  assert f'fine-tuning from {first}: ' in caplog.text
  before = _files(workdir)
  caplog.clear()
  with pytest.raises(UserError) as error:
    finetune.finetune(config(other, 4), workdir, **sources)
  message = str(error.value)
  assert f'config.init {first!r} -> {other!r}: this run was initialised from {first}' in message
  assert (f'rerun python -m supervised.finetune with --config.init={first} to resume it'
          in message and '\n' not in message)
  assert _files(workdir) == before and 'fine-tuning from' not in caplog.text
  assert checkpoints.saved_config(workdir)['init'] == first

  again = f'vit_jax:{tmp_path}/./a.npz'  # The same file.
  assert int(finetune.finetune(config(again, 4), workdir, **sources).state.step) == 4
  assert f'resumed from {workdir} at step 2 (initialised from {again})' in caplog.text
  assert 'fine-tuning from' not in caplog.text

  # The init weights gone, then replaced by another model's at the same path: the resume needs
  # only its own state (it said 'directory not found', then 'config keys differ: hidden_size').
  os.remove(tmp_path / 'a.npz')
  assert int(finetune.finetune(config(first, 6), workdir, **sources).state.step) == 6
  write_tiny_npz(tmp_path / 'a.npz', **{**tiny, 'hidden_size': 32})
  assert int(finetune.finetune(config(first, 8), workdir, **sources).state.step) == 8
  assert checkpoints.saved_config(workdir)['init'] == first
