"""vit.plan compiles the real train step for a TPU slice described by libtpu, on this CPU host.

A tiny ViT on v5e:2x2 (4 chips) keeps each compile to seconds.
"""
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from vit import config as config_lib, objective as objective_lib, plan
from vit.errors import ConfigError, UserError
from vit.testing import commands

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**mesh):
  config = config_lib.defaults()
  config.image_size = 32
  config.batch_size = 16
  config.total_steps = 10
  config.model.patches.size = (8, 8)
  # 512 / 4 chips = 128: shards fill TPU tiles (8 x 128), so padding does not blur the ratios.
  config.model.hidden_size = 512
  config.model.transformer.mlp_dim = 1024
  config.model.transformer.num_heads = 4
  # One block: a TPU compile of this width takes 12 CPU-s with two, 8 with one; the ratios read
  # here (state per device, FLOPs per step) are those of any depth.
  config.model.transformer.num_layers = 1
  config.model.num_classes = 10
  config.mesh = mesh or dict(data=-1, fsdp=1, tensor=1)
  return config


@pytest.fixture(scope='module')
def data_parallel():
  return plan.plan(tiny_config(), 'v5e:2x2', 'supervised')


@pytest.fixture(scope='module')
def planned_twice(tmp_path_factory):
  """`python -m vit.plan --json` run twice, one after the other, on configs/mpp/fashion_mnist.py
  copied out of configs/ (the TINY_BACKBONE, batches of 8, v5e:2x2), with a persistent
  compilation cache of their own that keeps every entry: both processes, for the tests of the
  cache, of the objective read from a copied config and of the MPP step."""
  tmp_path = tmp_path_factory.mktemp('plan')
  copied = tmp_path / 'my_mpp.py'
  shutil.copy(os.path.join(ROOT, 'configs', 'mpp', 'fashion_mnist.py'), copied)
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'xla'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  return [subprocess.run(
      [sys.executable, '-m', 'vit.plan', '--config', str(copied), '--topology', 'v5e:2x2',
       '--json', '--config.batch_size=8',
       *commands.TINY_BACKBONE],  # One block of width 16: a shorter compile (8.1 -> 6.0 s).
      cwd=ROOT, capture_output=True, text=True, timeout=900, env=env) for _ in range(2)]


def test_report_numbers(data_parallel):
  r = data_parallel
  assert (r['devices'], r['mesh'], r['per_device_micro_batch']) == (
      4, {'data': 4, 'fsdp': 1, 'tensor': 1}, 4)
  assert r['fits'] and r['hbm_per_device_gib'] == 16.0
  # float32 params + Adam's two moments, whole on each device, are most of the arguments.
  state_gib = 3 * 4 * r['params'] / 2**30
  assert state_gib <= r['arguments_gib'] < state_gib * 1.1
  # A transformer step costs about 6 FLOPs per parameter per token (forward 2, backward 4),
  # plus attention; 17 tokens per image here.
  dense = 6 * r['params'] * 17 * 16
  assert dense < r['flops_per_step'] < 2 * dense
  assert r['step_seconds'] == pytest.approx(
      max(r['flops_per_step'] / 4 / 197e12, r['hbm_bytes_per_device'] / 819e9))


def test_fsdp_shrinks_state_and_accumulation_keeps_flops(data_parallel):
  config = tiny_config(data=1, fsdp=4, tensor=1)
  config.optimizer.accumulation_steps = 2
  r = plan.plan(config, 'v5e:2x2', 'supervised')
  assert r['per_device_micro_batch'] == 2
  assert r['arguments_gib'] == pytest.approx(data_parallel['arguments_gib'] / 4, rel=0.1)
  # XLA counts a scan body once; plan multiplies it back.
  assert r['flops_per_step'] == pytest.approx(data_parallel['flops_per_step'], rel=0.05)


def test_too_big_does_not_fit():
  config = tiny_config()
  config.batch_size, config.image_size, config.model.patches.size = 256, 256, (4, 4)
  r = plan.plan(config, 'v5e:1x1', 'supervised')  # 4097 tokens: 33 GB of attention logits.
  assert r['fits'] is False


def test_mpp_objective(planned_twice):
  # The MPP step compiled for the 2x2 slice by vit.plan (the plans of `planned_twice`): the
  # objective's step is under test here, not the sizes.
  proc = planned_twice[0]
  assert proc.returncode == 0, proc.stderr
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert (r['objective'], r['devices']) == ('mpp', 4)
  assert r['fits'] and r['flops_per_step'] > 0


def test_clear_errors():
  with pytest.raises(UserError, match='expected VERSION'):
    plan.topology_devices('v9:2x2')
  with pytest.raises(UserError, match="--topology='v5e:3x5': libtpu cannot describe"):
    plan.topology_devices('v5e:3x5')
  with pytest.raises(ConfigError, match='config.mesh=.*has 3 devices but there are 4'):
    plan.plan(tiny_config(data=3, fsdp=1, tensor=1), 'v5e:2x2', 'supervised')
  config = tiny_config(data=1, fsdp=1, tensor=4)
  config.model.transformer.num_heads = 2
  with pytest.raises(ConfigError, match=r'config.mesh.tensor=4: .*MultiHeadDotProductAttention'
                                        r'.* has a dimension of 2 split over .*tensor'):
    plan.plan(config, 'v5e:2x2', 'supervised')


def test_cli_one_line_error():
  proc = subprocess.run(
      [sys.executable, '-m', 'vit.plan', '--config', 'configs/supervised/fashion_mnist.py',
       '--topology', 'v5e:2x2', '--config.mesh.data=3'],
      cwd=ROOT, capture_output=True, text=True, timeout=900,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith('error: config.mesh=')


@pytest.mark.parametrize('args, line', [
    # Both printed the JSON alone, the Markdown row silently dropped.
    (['--json', '--markdown'], 'error: flags json=True, markdown=True: At most one of '
                               '(json, markdown) must be True.'),
    # A word after the flags was ignored: v5e:2x2 planned, v5e:4x4 never read.
    (['v5e:4x4'], "error: unexpected argument 'v5e:4x4': this command takes only flags "
                  "(--name=value; --help lists them)"),
])
def test_json_and_markdown_together_or_a_stray_word_are_refused(args, line):
  proc = subprocess.run(
      [sys.executable, '-m', 'vit.plan', '--config', 'configs/supervised/fashion_mnist.py',
       '--topology', 'v5e:2x2', *args],
      cwd=ROOT, capture_output=True, text=True, timeout=900,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 2 and not proc.stdout
  assert proc.stderr.splitlines()[0] == line


def test_a_second_plan_reads_no_unreadable_cache_entry(planned_twice):
  """A step compiled for a libtpu slice cannot be read back from JAX's persistent compilation
  cache (no TPU client): the second plan of a config warned 'Error reading persistent
  compilation cache entry'. vit.plan keeps its compiles out of the cache."""
  for proc in planned_twice:
    assert proc.returncode == 0, proc.stderr
    assert 'Warning' not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])['fits']


def test_objective_is_read_from_the_config_not_its_folder(planned_twice):
  """A config's objective is the section it carries, wherever its file lies: an MPP config
  copied out of configs/mpp/ is planned as MPP (it was planned as a classifier and refused)."""
  from configs.finetune import fashion_mnist as finetune_config
  from configs.mpp import fashion_mnist as mpp_config
  from configs.study import demo
  assert plan.config_objective(mpp_config.get_config(), 'c.py') == 'mpp'
  assert plan.config_objective(finetune_config.get_config(), 'c.py') == 'supervised'
  both = mpp_config.get_config()
  with both.unlocked():
    both.mae = objective_lib.resolve('mae').section()
  with pytest.raises(UserError, match=r'^--config c.py: carries config.mae and config.mpp, '
                                      r'the sections of two objectives; keep one, or pass '
                                      r'--objective$'):
    plan.config_objective(both, 'c.py')
  neither = mpp_config.get_config()
  del neither['mpp']
  with pytest.raises(UserError, match=r'^--config c.py: no objective section \(config.mae, '
                                      r'config.mpp, config.simmim\) and no '
                                      r'config.model.num_classes for a classifier'):
    plan.config_objective(neither, 'c.py')
  with pytest.raises(UserError, match=r"^--config c.py: has no config.batch_size nor \d+ other "
                                      r"key\(s\) of vit.config.defaults\(\); a trainer's "
                                      r"config starts from them"):
    plan.config_objective(demo.get_config(), 'c.py')
  # vit.plan on configs/mpp/fashion_mnist.py copied to my_mpp.py, out of configs/mpp/.
  proc = planned_twice[0]
  assert proc.returncode == 0, proc.stderr
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report['objective'] == 'mpp' and report['fits']


def test_objectives_are_listed_by_help_and_by_the_error_for_another():
  """The objectives are those found beside vit/ (vit.objective.available); neither vit.plan nor
  study.report shows a --workdir it ignores (vit.cli.define_config_flags(workdir=False))."""
  assert objective_lib.available() == ('mae', 'mpp', 'simmim', 'supervised')
  with pytest.raises(UserError, match=r'^--objective foo: no such objective; one of mae, mpp, '
                                      r'simmim, supervised \(or a module'):
    plan.check_objective('foo')
  plan.check_objective('simmim')
  # Another objective's section is refused as the trainers refuse it, not silently ignored.
  from configs.mae import fashion_mnist as mae_config
  with pytest.raises(UserError, match=r'^c.py is a config for mae \(it has config.mae\); '
                                      r'vit.plan --objective simmim needs config.simmim: drop '
                                      r'--objective to plan the objective of the config$'):
    plan.check_objective('simmim', mae_config.get_config(), 'c.py')
  with pytest.raises(UserError, match=r'^c.py is a config for mae .* vit.plan --objective '
                                      r'supervised needs a config without an objective section'):
    plan.check_objective('supervised', mae_config.get_config(), 'c.py')
  plan.check_objective('mae', mae_config.get_config(), 'c.py')
  plan.check_objective('mpp', tiny_config(), 'c.py')  # No section: planned with the defaults.
  # Independent processes, started together: their interpreter start-ups share the cores.
  procs = [subprocess.Popen([sys.executable, '-m', module, '--help'], cwd=ROOT, text=True,
                            env=dict(os.environ, JAX_PLATFORMS='cpu'), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE) for module in ('vit.plan', 'study.report')]
  (plan_help, report_help) = [p.communicate(timeout=900)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0]
  assert 'its package (one of mae, mpp, simmim, supervised)' in ' '.join(plan_help.split())
  # The docs said --objective overrides the config's; another objective's section is refused.
  assert ("one that carries another objective's section is refused"
          in ' '.join(plan_help.split()))
  assert '--config' in plan_help and '--config' in report_help
  assert '--workdir' not in plan_help and '--workdir' not in report_help
  # Both are required; --config's help said "(default: 'None')" and neither said required.
  assert '  --config: Required: path to' in plan_help and "'None'" not in plan_help
  assert '  --topology: Required: the TPU slice' in plan_help


def test_fine_tuning_config_is_planned_with_the_backbone_of_its_init(tmp_path):
  """configs/finetune/ leave the model's sizes to config.init: the plan reads the checkpoint,
  as supervised.finetune does (it refused such a config: model.patches.size not set)."""
  import flax.linen as nn
  from configs.finetune import fashion_mnist as finetune_config
  from vit.formats import vit_jax
  from vit.models.spec import ModelSpec

  def spec(num_classes):
    m = config_lib.model_defaults().to_dict()
    m.update(patches=dict(size=(4, 4)), hidden_size=32, num_classes=num_classes)
    m['transformer'].update(mlp_dim=64, num_heads=4, num_layers=1)
    return ModelSpec.from_dict(m)

  def count(m, size):
    init = lambda rng: config_lib.build_model(m).init(rng, jnp.zeros((1, size, size, 3)),
                                                      train=False)
    shapes = jax.eval_shape(init, jax.random.key(0))
    return sum(x.size for x in jax.tree.leaves(nn.unbox(shapes['params'])))

  net = config_lib.build_model(spec(7))
  # Jitted: one compile, not one per op (eager, the init took longer than the plan's compile).
  init = jax.jit(net.init, static_argnames='train')
  vit_jax.save(jax.device_get(nn.unbox(init(
      jax.random.key(0), jnp.zeros((1, 28, 28, 3)), train=False)['params'])),
      str(tmp_path / 'tiny.npz'))
  config = finetune_config.get_config()
  # Without its init: supervised.finetune's line (it was: model.patches.size not set).
  with pytest.raises(UserError, match=r'^config.init=None: set the weights to start from: '
                                      r'mpp:DIR, mae:DIR, simmim:DIR, supervised:DIR, '
                                      r'vit_jax:FILE.npz, hf:DIR or timm:DIR$'):
    plan.plan(config, 'v5e:1x1', 'supervised')
  config.init = f'vit_jax:{tmp_path / "tiny.npz"}'
  config.batch_size = 8  # Of the config's 128: the checkpoint's sizes are under test.
  r = plan.plan(config, 'v5e:1x1', 'supervised')
  # The checkpoint's backbone at the config's 32 px (8x8 patches) with its 10-class head.
  assert r['fits'] and r['params'] == count(spec(10), 32)
  assert config.init and config.model.hidden_size is None  # The caller's config is untouched.
  # A big_vision sincos2d .npz states no image size: planned at the config's 32 px, as
  # supervised.finetune reads it (it was refused: no size without FILE.npz@SIZE).
  sincos = os.path.join(os.path.dirname(__file__), 'testdata', 'npz_layouts',
                        'big_vision_sincos_gap.npz')
  with config.unlocked():
    sincos_config = config.copy_and_resolve_references()
  sincos_config.init = f'vit_jax:{sincos}'
  planned = plan.with_init(sincos_config, 'supervised')  # What plan.plan compiles.
  assert planned.model.posemb == 'sincos_2d' and planned.image_size == 32
  config.model.hidden_size = 64
  with pytest.raises(UserError, match=r'config.model conflicts with vit_jax:.*tiny.npz: '
                                      r'model.hidden_size: config 64 vs checkpoint 32'):
    plan.plan(config, 'v5e:1x1', 'supervised')
  with pytest.raises(ConfigError, match=r"^config.init='vit_jax:.*': read only by "
                                        r'supervised.finetune; the mpp objective starts from a '
                                        r'random initialisation'):
    plan.plan(config, 'v5e:1x1', 'mpp')


def test_search_candidates_go_from_least_to_most_communication():
  tried = plan.candidates(8)
  assert [(c['mesh']['data'], c['mesh']['fsdp'], c['remat']) for c in tried] == [
      (8, 1, False), (4, 2, False), (2, 4, False), (1, 8, False),
      (8, 1, True), (4, 2, True), (2, 4, True), (1, 8, True)]
  assert all(c['mesh']['tensor'] == 1 for c in tried)


def test_search_reports_the_first_candidate_that_fits(monkeypatch):
  calls = []

  def fake_plan(config, topology, objective):
    mesh, remat = dict(config.mesh), config.model.remat
    calls.append((mesh['fsdp'], remat))
    if mesh['fsdp'] == 1 and not remat:
      return dict(fits=False, error='RESOURCE_EXHAUSTED: 20G of 16G', remat=remat)
    if mesh['fsdp'] == 2:
      raise ConfigError('mesh.fsdp', 2, 'x has a dimension of 3 split over fsdp')
    return dict(fits=True, used_gib=9.5, mesh=mesh, remat=remat)

  monkeypatch.setattr(plan, 'plan', fake_plan)
  config = tiny_config()
  r = plan.search(config, 'v5e:2x2', 'supervised')
  # Data parallel does not fit, fsdp=2 is invalid for this width, fsdp=4 fits without remat.
  assert calls == [(1, False), (2, False), (4, False)]
  assert r['mesh'] == {'data': 1, 'fsdp': 4, 'tensor': 1} and r['remat'] is False
  assert [t['fits'] for t in r['search']] == [False, False, True]
  assert 'dimension of 3' in r['search'][1]['error']
  assert config.mesh.fsdp == 1  # The caller's config is left as it was.


def test_markdown_row_of_a_real_plan(data_parallel):
  row = plan.markdown_row(data_parallel).split('|')[1:-1]
  assert len(row) == len(plan.MARKDOWN_HEADER.splitlines()[0].split('|')[1:-1]) == 12
  assert row[2].strip() == 'v5e:2x2 (4 chips)' and row[3].strip() == '4, 1, 1'
  # A step under 1 ms read '0 ms' (0.4 ms) or '1 ms' (0.5 ms); whole ms from 10 ms up.
  for seconds, shown in [(0.0004, '0.4 ms'), (0.00506, '5.1 ms'), (0.0314, '31 ms')]:
    cell = plan.markdown_row(dict(data_parallel, step_seconds=seconds)).split('|')[10]
    assert cell.strip() == f'{shown} ({data_parallel["bound"]})'
  assert row[7].strip() == 'yes'


def test_scanned_blocks_with_a_remat_policy_compile_for_the_slice():
  # Two blocks, so that a scan body counted once (one block's FLOPs) would show: 62% of the
  # looped step's FLOPs at this width. Narrower than tiny_config, as no shard is measured here:
  # the three compiles took 13 CPU-s at width 32, 15 at 128 (measured one after the other).
  config = tiny_config()
  config.model.hidden_size, config.model.transformer.mlp_dim = 32, 64
  config.model.transformer.num_layers = 2
  looped = plan.plan(config, 'v5e:2x2', 'supervised')
  config.model.update(scan_layers=True, remat=True,
                      remat_policy='dots_with_no_batch_dims_saveable')
  r = plan.plan(config, 'v5e:2x2', 'supervised')
  assert r['fits'] and r['params'] == looped['params']
  # The same arithmetic, recomputation aside: forward and backward FLOPs within a third more.
  assert looped['flops_per_step'] <= r['flops_per_step'] * 1.01
  assert r['flops_per_step'] < 1.4 * looped['flops_per_step']


def test_a_tiny_models_parameter_count_is_not_rounded_to_zero():
  from vit import plan
  assert [plan._count(n) for n in (86_567_656, 31_488, 840)] == ['86.6M', '31.5k', '840']
