"""Config validation: every user mistake is reported with the key and the value."""
import dataclasses
import glob
import importlib
import json
import os
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from vit import config as config_lib, objective as objective_lib
from vit.errors import ConfigError, UserError
from vit.models import ModelSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small():
  config = config_lib.defaults()
  config.image_size = 28
  config.batch_size = 8
  config.model.patches.size = (4, 4)
  config.model.hidden_size = 16
  config.model.transformer.update(mlp_dim=32, num_heads=2, num_layers=1)
  config.model.num_classes = 10
  return config


@pytest.mark.parametrize('mutate, message', [
    (lambda c: c.update(image_size=30), 'config.image_size=30: not divisible by the patch size 4'),
    (lambda c: c.model.transformer.update(num_heads=3),
     'config.model.transformer.num_heads=3: does not divide model.hidden_size=16'),
    (lambda c: c.model.update(name='ViT-Q/16'), "config.model.name='ViT-Q/16': unknown preset"),
    (lambda c: c.update(batch_size=7), 'config.batch_size=7: each micro-batch of 7 must divide '
                                       'evenly over the 2 devices'),
    (lambda c: c.model.update(classifier='cls'), "config.model.classifier='cls': must be one of"),
    (lambda c: c.optimizer.update(accumulation_steps=3),
     'config.optimizer.accumulation_steps=3: must be >= 1 and divide batch_size=8'),
    (lambda c: c.model.update(hidden_size=None), 'config.model.hidden_size=None: not set'),
    (lambda c: c.update(total_steps=0), 'config.total_steps=0: must be a positive integer'),
    (lambda c: c.data.update(crop_padding=-1),
     'config.data.crop_padding=-1: must be an integer in [0, image_size)'),
    (lambda c: c.optimizer.update(decay='step'),
     "config.optimizer.decay='step': must be cosine, linear, constant or rsqrt"),
    (lambda c: c.model.update(attention_kernel='flash'),
     "config.model.attention_kernel='flash': must be one of auto, xla, cudnn"),
    (lambda c: c.model.update(attention_kernel='cudnn'),
     "config.model.attention_kernel='cudnn': needs model.dtype=bfloat16"),
    (lambda c: c.model.update(attention_kernel='cudnn', dtype='bfloat16', posemb='relative'),
     "config.model.attention_kernel='cudnn': cannot add model.posemb=relative biases"),
    (lambda c: c.model.resnet.update(width_factor=2.0),
     'config.model.resnet.width_factor=2.0: sets the ResNet stem of a hybrid; set '
     'model.resnet.num_layers too'),
    (lambda c: (c.model.patches.update(size=(1, 1)),
                c.model.resnet.update(num_layers=(1,), width_factor=0.75)),
     'config.model.resnet.width_factor=0.75: must make 64 * width_factor a positive multiple '
     'of 32'),
    (lambda c: c.update(eval_batch_size=7),
     'config.eval_batch_size=7: must divide evenly over the 2 devices of the batch axes'),
    (lambda c: c.update(seed=-1), 'config.seed=-1: must be an integer in [0, 2**32)'),
    (lambda c: c.data.update(shuffle_seed=2 ** 32),
     'config.data.shuffle_seed=4294967296: must be an integer in [0, 2**32)'),
    (lambda c: c.data.update(subset_seed=-2), 'config.data.subset_seed=-2: must be an integer '
                                             '>= 0'),
    # Found at the first evaluation, after the training steps, before.
    (lambda c: c.data.update(eval_split='holdout'),
     "config.data.eval_split='holdout': needs data.holdout > 0"),
    (lambda c: c.fewshot.update(enabled=True, test_split='holdout'),
     "config.fewshot.test_split='holdout': needs data.holdout > 0"),
])
def test_mistakes_name_the_key_and_value(mutate, message):
  config = small()
  mutate(config)
  with pytest.raises(ConfigError) as error:
    config_lib.validate(config, num_devices=2)
  assert message in str(error.value)


@pytest.mark.parametrize('key', ['hidden_size', 'transformer.mlp_dim', 'transformer.num_heads',
                                 'transformer.num_layers', 'representation_size'])
@pytest.mark.parametrize('value', [0, -1])
def test_a_model_size_below_one_is_refused_naming_the_key(key, value):
  """Not a ZeroDivisionError or negative shape in an initialiser, nor a model of no blocks."""
  config = small()
  parent, _, leaf = ('model.' + key).rpartition('.')
  config_lib._lookup(config, parent)[leaf] = value
  with pytest.raises(ConfigError) as error:
    config_lib.validate(config, num_devices=1)
  assert str(error.value).startswith(f'config.model.{key}={value}: must be a positive integer')


@pytest.mark.parametrize('size', [(0, 4), (4, -4), (0, 0)])
def test_a_patch_size_below_one_is_refused(size):
  config = small()
  config.model.patches.size = size
  with pytest.raises(ConfigError, match=re.escape(
      f'config.model.patches.size={size}: must be two positive integers')):
    config_lib.validate(config, num_devices=1)


@pytest.mark.parametrize('size', [(4, 2), (2, 4)])
def test_a_non_square_patch_is_refused(size):
  """A (4, 2) patch gives a 7x14 grid at 28 px: training ran, then fine-tuning, export and
  prediction all refused the run's checkpoint (its position grid is not square)."""
  config = small()
  config.image_size = 8
  config.model.patches.size = size
  with pytest.raises(ConfigError, match=re.escape(
      f'config.model.patches.size={size}: must be square')):
    config_lib.validate(config, num_devices=1)


def test_no_representation_layer_is_a_legitimate_size():
  config = small()
  config.model.representation_size = None
  assert config_lib.validate(config, num_devices=1).representation_size is None
  config.model.representation_size = 8
  assert config_lib.validate(config, num_devices=1).representation_size == 8


def test_eval_batch_is_checked_against_the_batch_axes_only():
  """Tensor-parallel devices share an evaluation batch's rows: 6 rows on a mesh of 2 devices
  that are both on the tensor axis are fine; over data x fsdp = 4 of 8 devices, not."""
  config = small()
  config.update(eval_batch_size=6)
  config.mesh.update(data=1, fsdp=-1, tensor=2)
  config_lib.validate(config, num_devices=2)
  config.mesh.update(data=2, fsdp=-1, tensor=2)
  with pytest.raises(ConfigError, match=r'^config.eval_batch_size=6: must divide evenly over '
                                        r'the 4 devices of the batch axes \(mesh data x fsdp\)$'):
    config_lib.validate(config, num_devices=8)


def test_unknown_key_in_a_config_file_is_reported():
  config = small()
  config.model.hidden_sise = 3  # a typo in a config file
  with pytest.raises(ConfigError) as e:
    config_lib.validate(config, num_devices=1)
  # The hint a command-line override gets from config_flags, for a file's typo too.
  assert str(e.value) == ('config.model.hidden_sise=3: unknown config key (did you mean '
                          'model.hidden_size?)')


def test_preset_fills_only_unset_keys():
  config = small()
  config.model.update(name='ViT-B/16', hidden_size=None)
  config.model.transformer.update(mlp_dim=None, num_heads=None, num_layers=6)
  config.model.patches.size = None
  config.image_size = 224
  m = config_lib.validate(config, num_devices=1)
  assert m.hidden_size == 768 and m.num_heads == 12
  assert m.mlp_dim == 3072 and m.num_layers == 6
  assert m.patch_size == (16, 16)


def test_a_preset_overridden_by_the_configs_own_sizes_says_so(caplog):
  """`--config.model.name=ViT-B/16` on a small config keeps its sizes: a warning and the plan's
  label name each override, so nobody reads the small model as ViT-B/16."""
  from vit import plan
  config = small()
  config.model.name = 'ViT-B/16'
  with caplog.at_level('WARNING', logger='vit.config'):
    m = config_lib.validate(config, num_devices=1)
  assert m.hidden_size == config.model.hidden_size != 768
  assert f'hidden_size={config.model.hidden_size} (preset: 768)' in caplog.text
  assert 'override the preset' in caplog.text
  label = plan.model_label(config)
  assert label.startswith('ViT-B/16 with ') and f'hidden_size={config.model.hidden_size}' in label
  config = small()
  config.model.update(name='ViT-B/16', hidden_size=768)  # Equal to the preset: no override.
  config.model.transformer.update(mlp_dim=None, num_heads=None, num_layers=None)
  config.model.patches.size = None
  assert plan.model_label(config) == 'ViT-B/16'


def test_the_resolved_model_is_a_frozen_spec():
  m = config_lib.validate(small(), num_devices=1)
  assert isinstance(m, ModelSpec) and m.patch_size == (4, 4) and m.hidden_size == 16
  assert (m.mlp_dim, m.num_heads, m.num_layers, m.posemb) == (32, 2, 1, 'learned_1d')
  with pytest.raises(dataclasses.FrozenInstanceError):
    m.hidden_size = 32
  # Checkpoints and the formats keep config.model's nested layout.
  assert m.to_dict() == config_lib.resolved_model(small())
  assert ModelSpec.from_dict(m.to_dict()) == m and m.replace(dtype='bfloat16') != m


def test_an_old_saved_model_is_upgraded_in_one_place():
  saved = json.loads(json.dumps(small().model.to_dict()))  # As a workdir's config holds it.
  for key in ('posemb', 'attention', 'attention_kernel', 'scan_layers', 'remat_policy',
              'layer_norm', 'pixels'):
    del saved[key]  # Keys the schema gained after the first runs were saved.
  saved['retired_key'] = 1
  assert config_lib.upgrade(saved) == config_lib.validate(small(), num_devices=1)


def test_a_hybrids_width_factor_is_kept_by_the_preset_and_a_checkpoints_round_trip():
  """A hybrid preset fills the stem's stages, not over a width_factor the config sets; the
  checkpoint's saved config, its spec's dict and its parameter shapes all give it back."""
  from vit import architecture
  from vit.models.resnet import ResNetConfig
  config = small()
  config.model.update(name='R50+ViT-B/16')
  config.model.patches.size = None  # The preset's 1x1 patches on the stem's stride-16 map.
  config.model.resnet.width_factor = 2.0
  config.image_size = 32
  m = config_lib.validate(config, num_devices=1)
  assert m.resnet == ResNetConfig((3, 4, 9), 2.0) and m.patch_size == (1, 1)
  saved = json.loads(json.dumps(config.to_dict()))  # As a checkpoint holds the config.
  assert config_lib.upgrade(config_lib.resolved_model(ml_collections.ConfigDict(saved))) == m
  assert config_lib.upgrade(m.to_dict()) == m
  shapes = architecture.abstract_params(m, 32, 3)
  assert shapes['conv_root']['kernel'].shape == (7, 7, 3, 128)
  assert architecture.infer_model(shapes).resnet == m.resnet
  config.model.resnet.width_factor = 1.0  # The default: the preset's own.
  assert config_lib.validate(config, num_devices=1).resnet == ResNetConfig((3, 4, 9), 1.0)


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        env=env, timeout=900)


def test_command_line_mistakes_are_one_line_errors():
  cases = (
      ('--config.model.hidden_sizee=3', 'Did you mean "hidden_size"'),
      ('--config.image_size=30', 'config.image_size=30: not divisible by the patch size 4'),
      ('--config=configs/missing.py', f'error: --config configs/missing.py: no such file '
                                      f'(relative to {ROOT})'),
      ('--config.model.posemb=learned_3d', "config.model.posemb='learned_3d': must be one of"),
  )
  # Independent processes, started together: their interpreter start-ups share the cores.
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  procs = [subprocess.Popen([sys.executable, '-m', 'supervised.train', '--workdir',
                             '/tmp/unused-workdir', override], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for override, _ in cases]
  try:
    for proc, (_, expected) in zip(procs, cases):
      _, stderr = proc.communicate(timeout=900)
      assert proc.returncode == 2, stderr
      assert expected in stderr and 'Traceback' not in stderr, stderr
  finally:  # A failed case leaves no process behind.
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.communicate()


_CONFIG_FILES = {
    'syntax.py': ('def get_config(:\n  pass\n', ':1: SyntaxError: '),
    'no_get_config.py': ('import ml_collections\nCONFIG = 1\n',
                         ': defines no get_config() (a config file returns its ConfigDict from '
                         'get_config())'),
    'raises.py': ('import ml_collections\n\ndef get_config():\n  return {}["model"]\n',
                  ":4: KeyError: 'model'"),
    'bad_value.py': ('def get_config():\n  raise ValueError("no such size")\n',
                     ':2: ValueError: no such size'),
    'returns_none.py': ('def get_config():\n  pass\n',
                        ': get_config() returned None (a missing return?)'),
    'returns_dict.py': ('def get_config():\n  return {"batch_size": 8}\n',
                        ": get_config() returned dict {'batch_size': 8}, not an "
                        'ml_collections.ConfigDict (return ml_collections.ConfigDict(...), as '
                        'the files under configs/ do)'),
    'returns_list.py': ('def get_config():\n  return [1, 2]\n',
                        ': get_config() returned list [1, 2], not an ml_collections.ConfigDict '
                        '(return ml_collections.ConfigDict(...), as the files under configs/ do)'),
    'returns_frozen.py': ('import ml_collections\n\ndef get_config():\n  return '
                          'ml_collections.FrozenConfigDict({"batch_size": 8})\n',
                          ': get_config() returned a FrozenConfigDict, which no override can '
                          'change; return an ml_collections.ConfigDict'),
    # ml_collections' --config FILE:ARG passes ARG to get_config: a TypeError traceback.
    'takes_no_argument.py': ('import ml_collections\n\ndef get_config():\n  return '
                             'ml_collections.ConfigDict()\n',
                             ": its get_config() takes no argument (got 'foo' from --config "
                             '{path}:foo)', 'foo'),
    'needs_argument.py': ('import ml_collections\n\ndef get_config(size):\n  return '
                          'ml_collections.ConfigDict()\n',
                          ": get_config() missing 1 required positional argument: 'size' "
                          '(config_flags passes it the ARG of --config FILE:ARG)'),
}


@pytest.mark.parametrize('name', sorted(_CONFIG_FILES))
def test_a_config_file_that_does_not_load_is_named_with_its_line(tmp_path, monkeypatch, capsys,
                                                                 name):
  """What config_flags raises on parsing, as each entry point parses (vit.cli._parse_flags), is
  one line naming the file, and the line of it where Python gives one."""
  from absl import flags
  from ml_collections import config_flags
  from vit import cli
  source, expected, *argument = _CONFIG_FILES[name]
  path = tmp_path / name
  path.write_text(source)
  expected = expected.replace('{path}', str(path))
  argv = ['prog', f'--config={path}' + ''.join(f':{a}' for a in argument)]
  # config_flags loads every file as module 'config_config', into the namespace of the last.
  monkeypatch.delitem(sys.modules, 'config_config', raising=False)
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', None, flag_values=values, sys_argv=argv)
  monkeypatch.setattr(flags, 'FLAGS', values)
  monkeypatch.setattr(cli, '_CONFIG_HOLDERS', [(holder, None, None, False)])
  monkeypatch.setattr(sys, 'argv', argv)
  with pytest.raises(SystemExit) as exit:
    cli._parse_flags(argv)
  lines = capsys.readouterr().err.splitlines()
  assert exit.value.code == 2 and len(lines) == 1, lines
  assert lines[0].startswith(f'error: --config {path}') and (
      lines[0].endswith(expected) if name != 'syntax.py' else expected in lines[0]), lines


def test_a_config_that_is_no_config_dict_is_one_line_with_overrides_and_in_trainers(tmp_path):
  """What get_config() returned is named also when config_flags fails first on an override
  (it indexed None, a dict or a list: "list indices must be integers"); a ConfigDict built by
  hand without the core keys was a KeyError traceback in the trainer, and so was an
  objective's section without its keys."""
  files = {'none.py': 'def get_config():\n  return None\n',
           'dict.py': 'def get_config():\n  return {"batch_size": 8}\n',
           'list.py': 'def get_config():\n  return [1]\n',
           'empty.py': 'import ml_collections\n\ndef get_config():\n  return '
                       'ml_collections.ConfigDict()\n',
           # An objective's section written by hand was an AttributeError traceback.
           'mae.py': 'import ml_collections\nfrom configs.mae import fashion_mnist\n\n'
                     'def get_config():\n  config = fashion_mnist.get_config()\n'
                     '  config.mae = ml_collections.ConfigDict(dict(mask_ratio=0.5))\n'
                     '  return config\n'}
  for name, source in files.items():
    (tmp_path / name).write_text(source)
  workdir = ['--workdir', str(tmp_path / 'run')]
  cases = [
      (['supervised.train', 'none.py', '--config.batch_size=4', *workdir],
       'get_config() returned None (a missing return?)'),
      (['supervised.train', 'dict.py', '--config.batch_size=4', *workdir],
       "get_config() returned dict {'batch_size': 8}, not an ml_collections.ConfigDict"),
      (['vit.plan', 'list.py', '--config.batch_size=4', '--topology=v5e:1x1'],
       'get_config() returned list [1], not an ml_collections.ConfigDict'),
      (['mpp.train', 'empty.py', *workdir],
       "has no config.batch_size nor 78 other key(s) of vit.config.defaults(); a trainer's "
       'config starts from them, as the files under configs/ do'),
      (['mae.train', 'mae.py', *workdir],
       'has no config.mae.decoder.hidden_size nor 5 other key(s) of mae.objective.section(); a '
       'config adds the section whole: config.mae = mae.objective.section()'),
  ]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  procs = [subprocess.Popen([sys.executable, '-m', module, '--config', str(tmp_path / name),
                             *args], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
           for (module, name, *args), _ in cases]
  try:
    for proc, ((_, name, *_), expected) in zip(procs, cases):
      _, stderr = proc.communicate(timeout=900)
      assert proc.returncode == 2, stderr
      lines = stderr.splitlines()
      assert len(lines) == 1 and lines[0].startswith(
          f'error: --config {tmp_path / name}: {expected}'), stderr
  finally:  # A failed case leaves no process behind.
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.communicate()
  assert not (tmp_path / 'run').exists()


def test_a_missing_config_flag_is_one_line(monkeypatch, capsys):
  """An entry point without a default config (vit.plan) given no --config."""
  from absl import flags
  from ml_collections import config_flags
  from vit import cli
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', None, flag_values=values, sys_argv=['prog'])
  monkeypatch.setattr(flags, 'FLAGS', values)
  monkeypatch.setattr(cli, '_CONFIG_HOLDERS', [(holder, None, None, False)])
  monkeypatch.setattr(sys, 'argv', ['prog'])
  with pytest.raises(SystemExit) as exit:
    cli._parse_flags(['prog'])
  assert exit.value.code == 2 and capsys.readouterr().err.splitlines() == [
      'error: --config is required: a config file, e.g. configs/supervised/fashion_mnist.py',
      'Pass --help to see the flags.']


def test_h_asks_for_the_help_as_help_does():
  """absl knows --help, not -h: `-h` was "error: Unknown command line flag 'h'" and exit status 2,
  and vit.inspect.runs' own -h (its usage) was never reached; -? exited 1."""
  from vit import cli
  assert cli.help_spelled_h(['prog', '-h', '--x=-h', '--', '-h']) == [
      'prog', '--help', '--x=-h', '--', '-h']
  procs = [subprocess.Popen([sys.executable, '-m', *args], cwd=ROOT, text=True,
                            env=dict(os.environ, JAX_PLATFORMS='cpu'), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
           for args in (('vit.models.summary', '-h'), ('vit.inspect.runs', '-h'),
                        ('vit.models.summary', '-?'))]
  (summary, _), (runs, _), (asked, _) = [p.communicate(timeout=900) for p in procs]
  assert [p.returncode for p in procs] == [0, 0, 0]
  assert '  --model: Preset name' in summary and '  --model: Preset name' in asked
  assert runs.startswith('`python -m vit.inspect.runs WORKDIR...`')


def test_help_into_a_closed_pipe_is_no_error():
  """`--help | head`: the reader leaves before the help is written. It was 'error: [Errno 32]
  Broken pipe' and 'Pass --help to see the flags.' (the user had), exit status 2."""
  proc = subprocess.Popen([sys.executable, '-m', 'vit.models.summary', '--help'], cwd=ROOT,
                          text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  proc.stdout.close()  # Before the child writes: its every write meets a closed pipe.
  _, err = proc.communicate(timeout=900)
  assert proc.returncode == 0 and err == '', err


def test_a_missing_config_file_or_a_directory_is_named():
  from vit import cli
  for problem, want in [(f'{ROOT}/configs/absent.py', 'no such file'),
                        (f'{ROOT}/configs', 'a directory, not a config file')]:
    assert cli._config_file(OSError(2, 'x'), problem) == f'--config {problem}: {want}'
  assert cli._config_file(KeyError('bogus'), 'configs/supervised/fashion_mnist.py') is None


@pytest.mark.parametrize('trainer,args,shown', [
    ('mpp.train', ['--config.bogus=1'], '--config.bogus'),
    ('supervised.train', ['--config', 'configs/supervised/imagenet21k_vit_b16.py',
                          '--config.model.bogus', '1'], '--config.model.bogus'),
])
def test_an_unknown_override_key_names_the_flag_and_the_config_file(trainer, args, shown):
  """config_flags says only 'bogus'; the line names the flag and the file that lacks it."""
  file = args[1] if args[0] == '--config' else f'configs/{trainer.split(".")[0]}/fashion_mnist.py'
  result = _cli('-m', trainer, '--workdir', '/tmp/unused-workdir', *args)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f'error: {shown}: unknown config key; {file} has no {shown[2:]}']


def test_auto_attention_kernel_is_cudnn_only_on_gpus_in_bf16():
  m = config_lib.validate(small())
  assert config_lib.attention_kernel(m) is None  # This CPU: XLA's attention.
  assert config_lib.attention_kernel(m, platform='gpu') is None  # float32 compute.
  bf16 = m.replace(dtype='bfloat16')
  assert config_lib.attention_kernel(bf16, platform='gpu') == 'cudnn'
  assert config_lib.attention_kernel(bf16, platform='tpu') is None
  # A logits bias with ViT's odd token count is refused by cuDNN's training kernels.
  assert config_lib.attention_kernel(bf16.replace(posemb='relative'), platform='gpu') is None
  assert config_lib.attention_kernel(bf16.replace(attention_kernel='xla'), platform='gpu') == 'xla'
  # Forced cuDNN off a GPU was jax's traceback 'cuDNN is not detected' at the first step.
  cudnn = bf16.replace(attention_kernel='cudnn')
  assert config_lib.attention_kernel(cudnn, platform='gpu') == 'cudnn'
  with pytest.raises(ConfigError, match=r"^config.model.attention_kernel='cudnn': needs an "
                                        r"NVIDIA GPU \(cuDNN's fused attention\); JAX runs on "
                                        r"cpu here: use auto \(cuDNN on a GPU in bfloat16, XLA "
                                        r"elsewhere\) or xla$"):
    config_lib.attention_kernel(cudnn)


@pytest.mark.parametrize('mutate,message', [
    (lambda c: c.model.update(remat_policy='save_all'),
     "config.model.remat_policy='save_all': not a jax.checkpoint_policies name"),
    (lambda c: c.model.update(scan_layers=True, posemb='relative'),
     'config.model.scan_layers=True: needs model.attention=global'),
    (lambda c: c.model.update(scan_layers=True, attention='axial'),
     'config.model.scan_layers=True: needs model.attention=global'),
    (lambda c: c.model.update(layer_norm='fast'),
     "config.model.layer_norm='fast': must be one of auto, dots, reduce"),
])
def test_scaling_keys_name_the_key(mutate, message):
  config = small()
  mutate(config)
  with pytest.raises(ConfigError, match=re.escape(message)):
    config_lib.validate(config, num_devices=1)


def test_scanned_model_takes_looped_checkpoint_params():
  from vit import init_spec
  from vit.models import vit as vit_model
  config = small()
  m = config_lib.validate(config, num_devices=1)
  looped = init_spec.abstract_params(m, 28, 3)
  scanned = init_spec.abstract_params(m.replace(scan_layers=True), 28, 3)
  params = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), looped)
  adapted = init_spec.adapt_params(params, scanned, config_lib.token_grid(config, m))
  assert jax.tree.map(np.shape, adapted) == jax.tree.map(lambda s: s.shape, scanned)
  np.testing.assert_array_equal(
      vit_model.unstack_blocks(adapted)['Transformer']['encoderblock_0']['LayerNorm_0']['scale'],
      params['Transformer']['encoderblock_0']['LayerNorm_0']['scale'])


def test_objective_sections_are_declared_by_their_package():
  from configs.mpp import fashion_mnist as mpp_config
  from mpp import objective as mpp_objective
  assert 'mpp' not in config_lib.defaults() and 'mpp' not in small()
  config = mpp_config.get_config()
  assert config_lib.sections(config) == {'mpp': mpp_objective.DEFINITION}
  config.mpp.bits_typo = 3
  with pytest.raises(ConfigError, match='config.mpp.bits_typo=3: unknown config key'):
    config_lib.validate(config)
  for name in ('mae', 'simmim'):  # Declared by mae/ and simmim/ as config.mpp by mpp/.
    definition = objective_lib.resolve(name)
    config = importlib.import_module(f'configs.{name}.fashion_mnist').get_config()
    assert name not in config_lib.defaults() and config_lib.sections(config) == {name: definition}
  config = small()
  config.mae = objective_lib.resolve('mae').section()
  config.mae.mask_ratio = 1.5
  with pytest.raises(ConfigError, match=re.escape('config.mae.mask_ratio=1.5: must be in (0, 1)')):
    config_lib.validate(config, num_devices=1)
  config = small()
  config.mppp = ml_collections.ConfigDict(dict(target='mean_color'))
  with pytest.raises(ConfigError, match="config.mppp.target='mean_color': unknown config key"):
    config_lib.validate(config, num_devices=1)



def _config_of(path: str) -> ml_collections.ConfigDict:
  return importlib.import_module(path[:-3].replace('/', '.')).get_config()


def test_fewshot_keys_set_while_fewshot_is_off_get_one_warning(caplog):
  """Fewshot keys changed from their defaults while fewshot is off are named in one warning
  (nothing reads them; a file's fewshot keys with `--config.fewshot.enabled=False` still run);
  the defaults, a list spelling a default tuple, the keys with fewshot on, and every shipped
  trainer config with fewshot turned off give none."""
  config = small()
  config.fewshot.update(shots=(5,), seed=3)
  with caplog.at_level('WARNING', logger='vit.config'):
    config_lib.validate(config, num_devices=1)
  assert [r.getMessage() for r in caplog.records] == [
      'config.fewshot.seed=3: not used while fewshot.enabled is False (nor fewshot.shots=(5,)); '
      'set --config.fewshot.enabled=True to run the few-shot evaluation']
  caplog.clear()
  config = small()
  config.fewshot.shots = [1, 5, 10, 25]
  config.fewshot.l2_reg = 1024
  with caplog.at_level('WARNING', logger='vit.config'):
    config_lib.validate(config, num_devices=1)
    config.fewshot.update(enabled=True, shots=(5,), seed=3)
    config_lib.validate(config, num_devices=1)
  paths = sorted(glob.glob(os.path.join(ROOT, 'configs', '*', '*.py')))
  shipped = [os.path.relpath(p, ROOT) for p in paths
             if os.path.basename(p) != '__init__.py' and '/study/' not in p]
  assert len(shipped) > 10
  for path in shipped:
    config = _config_of(path)
    config.fewshot.enabled = False
    with caplog.at_level('WARNING', logger='vit.config'):
      config_lib._check_fewshot_off(config)
  assert not caplog.records, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize('trainer,path,message', [
    ('supervised', 'configs/mpp/fashion_mnist.py',
     'configs/mpp/fashion_mnist.py is a config for mpp (it has config.mpp); supervised.train '
     'needs a config without an objective section: use python -m mpp.train'),
    ('mpp', 'configs/supervised/fashion_mnist.py',
     'configs/supervised/fashion_mnist.py has no config.mpp, so it is not a config for mpp; '
     'mpp.train needs config.mpp, as configs/mpp/fashion_mnist.py has'),
    ('mae', 'configs/simmim/fashion_mnist.py',
     'configs/simmim/fashion_mnist.py is a config for simmim (it has config.simmim); mae.train '
     'needs config.mae: use python -m simmim.train'),
    ('simmim', 'configs/mae/fashion_mnist.py',
     'configs/mae/fashion_mnist.py is a config for mae (it has config.mae); simmim.train '
     'needs config.simmim: use python -m mae.train'),
    ('mpp', 'configs/mae/fashion_mnist.py', 'mpp.train needs config.mpp: use python -m mae.train'),
])
def test_a_config_for_another_objective_is_refused_naming_file_and_section(trainer, path,
                                                                           message):
  definition = objective_lib.resolve(trainer)
  with pytest.raises(UserError) as error:
    config_lib.check_objective(_config_of(path), definition, source=path,
                               trainer=f'{trainer}.train',
                               example=f'configs/{trainer}/fashion_mnist.py')
  assert message in str(error.value) and '\n' not in str(error.value)


def test_each_trainer_takes_its_own_configs_and_no_foreign_section():
  for trainer in ('supervised', 'mpp', 'mae', 'simmim'):
    definition = objective_lib.resolve(trainer)
    config_lib.check_objective(_config_of(f'configs/{trainer}/fashion_mnist.py'), definition,
                               source='c.py', trainer=f'{trainer}.train')
  for path in ('configs/ablations/gap.py', 'configs/finetune/fashion_mnist.py'):
    config_lib.check_objective(_config_of(path), objective_lib.resolve('supervised'),
                               source=path, trainer='supervised.train')
  config = _config_of('configs/mpp/fashion_mnist.py')
  config.mae = objective_lib.resolve('mae').section()
  with pytest.raises(UserError, match=re.escape(
      'c.py has config.mae besides config.mpp; mpp.train reads only config.mpp: remove '
      'config.mae')):
    config_lib.check_objective(config, objective_lib.resolve('mpp'), source='c.py',
                               trainer='mpp.train')


def test_a_trainer_refuses_another_objectives_config_before_writing(tmp_path):
  """The check every trainer shares (vit.cli, at flag parsing): one line, status 2, and the
  workdir as it was (empty)."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  result = _cli('-m', 'supervised.train', '--config', 'configs/mpp/fashion_mnist.py',
                f'--workdir={workdir}')
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines() == [
      'error: configs/mpp/fashion_mnist.py is a config for mpp (it has config.mpp); '
      'supervised.train needs a config without an objective section: use python -m mpp.train']
  assert os.listdir(workdir) == []


@pytest.mark.parametrize('mutate,message', [
    (lambda c: c.data.update(channels=2), 'config.data.channels=2: must be 1 (greyscale) or 3'),
    (lambda c: c.data.update(channels=0), 'config.data.channels=0: must be 1'),
    (lambda c: c.data.update(channels=-1), 'config.data.channels=-1: must be 1'),
    (lambda c: c.optimizer.update(learning_rate=0.0),
     'config.optimizer.learning_rate=0.0: must be > 0'),
    (lambda c: c.optimizer.update(learning_rate=-1e-3),
     'config.optimizer.learning_rate=-0.001: must be > 0'),
    (lambda c: c.optimizer.update(warmup_steps=-1),
     'config.optimizer.warmup_steps=-1: must be an integer >= 0 (0: no warmup)'),
    (lambda c: c.update(checkpoint_every=-1),
     'config.checkpoint_every=-1: must be an integer >= 0 (0: only at the end)'),
    (lambda c: c.update(eval_every=-10), 'config.eval_every=-10: must be an integer >= 0'),
    (lambda c: c.update(log_every=-1), 'config.log_every=-1: must be an integer >= 0'),
    (lambda c: c.update(total_steps=-5), 'config.total_steps=-5: must be a positive integer'),
    (lambda c: c.update(batch_size=0), 'config.batch_size=0: must be a positive integer'),
    (lambda c: c.update(batch_size=-8), 'config.batch_size=-8: must be a positive integer'),
    (lambda c: c.update(eval_batch_size=0), 'config.eval_batch_size=0: must be a positive'),
    (lambda c: c.data.update(prefetch_batches=-1), 'config.data.prefetch_batches=-1: must be'),
    (lambda c: c.optimizer.update(weight_decay=-0.1),
     'config.optimizer.weight_decay=-0.1: must be >= 0'),
    (lambda c: c.optimizer.update(grad_clip_norm=-1.0),
     'config.optimizer.grad_clip_norm=-1.0: must be >= 0'),
    (lambda c: c.optimizer.update(b2=1.0), 'config.optimizer.b2=1.0: must be in [0, 1)'),
    (lambda c: c.optimizer.update(momentum=-0.9), 'config.optimizer.momentum=-0.9: must be in'),
    # The default best_mode with MAE's or SimMIM's metric kept the step of the highest loss.
    (lambda c: c.update(best_metric='eval/loss'),
     "config.best_mode='max': would keep the step of the highest eval/loss (config.best_metric) "
     'as the best; a loss is best at its lowest: set best_mode to min'),
])
def test_counts_rates_and_channels_out_of_range_name_the_key(mutate, message):
  config = small()
  mutate(config)
  with pytest.raises(ConfigError, match=re.escape(message)):
    config_lib.validate(config, num_devices=1)


def test_zero_stays_valid_where_it_means_off_or_only_at_the_end():
  config = small()
  config.update(log_every=0, eval_every=0, checkpoint_every=0)
  config.update(best_metric='eval/loss', best_mode='min')
  config.optimizer.update(warmup_steps=0, weight_decay=0.0, grad_clip_norm=0.0, momentum=0.0)
  config.data.update(channels=1, prefetch_batches=0)
  config_lib.validate(config, num_devices=1)


@pytest.mark.parametrize('trainer', ['supervised', 'mpp', 'mae', 'simmim'])
def test_a_pretraining_trainer_refuses_config_init(trainer):
  """Only supervised.finetune reads config.init; the others would train from scratch."""
  config = _config_of(f'configs/{trainer}/fashion_mnist.py')
  config_lib.check_no_init(config, trainer=f'{trainer}.train')  # Unset: nothing to refuse.
  config.init = 'mpp:/nonexistent'
  with pytest.raises(ConfigError) as error:
    config_lib.check_no_init(config, trainer=f'{trainer}.train')
  assert str(error.value) == (
      f"config.init='mpp:/nonexistent': read only by supervised.finetune; {trainer}.train "
      'starts from a random initialisation (remove config.init, or fine-tune with python -m '
      'supervised.finetune)')


def test_mpp_train_refuses_config_init_before_writing(tmp_path):
  """At flag parsing (vit.cli), as another objective's config: one line, status 2, the
  workdir as it was (empty)."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  result = _cli('-m', 'mpp.train', '--config', 'configs/mpp/fashion_mnist.py',
                f'--workdir={workdir}', '--config.init=mpp:/nonexistent')
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines() == [
      "error: config.init='mpp:/nonexistent': read only by supervised.finetune; mpp.train "
      'starts from a random initialisation (remove config.init, or fine-tune with python -m '
      'supervised.finetune)']
  assert os.listdir(workdir) == []


@pytest.mark.parametrize('module, args', [
    ('supervised.train', ['--config=configs/supervised/fashion_mnist.py', '--workdir={w}']),
    ('vit.export', ['--checkpoint={w}', '--format=hf', '--out={w}_hf']),
    ('vit.evaluators.fewshot', ['--init=supervised:{w}']),
])
def test_every_command_refuses_a_word_after_its_flags(module, args, tmp_path):
  """`supervised.train --config c.py --workdir runs/a runs/b` trained into runs/a and ignored
  runs/b; vit.cli.run now refuses a stray word for every command that takes only flags."""
  from vit.testing import commands
  workdir = str(tmp_path / 'w')
  told = commands.run_module(module, *[a.format(w=workdir) for a in args], 'stray',
                             timeout=900)
  assert told.returncode == 2 and told.stderr.strip().splitlines() == [
      "error: unexpected argument 'stray': this command takes only flags (--name=value; "
      '--help lists them)'], told.stderr[-2000:]
  assert not os.listdir(tmp_path)  # Nothing was started.


def test_a_boolean_flag_given_its_value_after_a_space_is_refused():
  """absl reads `--config.fewshot.enabled False` as the bare flag (True) and leaves 'False' as
  an argument: it trained with few-shot on; now the word is refused, saying how to write it."""
  from vit import cli
  with pytest.raises(UserError) as e:
    cli.refuse_arguments(['train.py', 'False'])
  assert str(e.value) == ("unexpected argument 'False': this command takes only flags "
                          '(--name=value; --help lists them); a boolean flag is --name=False, '
                          'not --name False')
  cli.refuse_arguments(['train.py'])
