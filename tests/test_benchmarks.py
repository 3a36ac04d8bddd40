"""The train-step benchmark's own logic: arguments, cases, the GPU peak and the table."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import train_step


def test_batch_override_reaches_every_case_and_the_flop_count():
  args = train_step.parse_args(['--shapes=B/16-224', '--steps=supervised,mpp', '--peers=timm',
                                '--variants=bf16', '--device=gpu', '--batch=512'])
  cases = train_step._cases(args)
  # timm has no MPP head: 2 JAX cases and 1 peer.
  assert [(c.step, c.framework) for c in cases] == [
      ('supervised', 'jax'), ('supervised', 'timm'), ('mpp', 'jax')]
  assert all(c.batch == 512 and c.device == 'gpu' for c in cases)
  shape = cases[0].shape_spec()
  assert shape.batch == 512 and shape.tokens == 197
  # ViT-B/16 at 224: 12 x (8ND^2 + 4NDM + 4N^2D) = 34.9 GFLOP forward (the paper-scale
  # 17.5 GMAC), x3 for training.
  assert shape.train_flops_per_image() == pytest.approx(104.7e9, rel=1e-3)
  assert cases[0].label == 'B/16-224 batch 512 supervised jax [bf16]'


@pytest.mark.parametrize('argv, message', [
    (['--batch=0'], 'expected a positive integer'),
    (['--shapes=B/99'], 'unknown shape: B/99'),
    (['--device=tpu'], "invalid choice: 'tpu'"),
    (['--threads=1', '--device=gpu'], '--threads=1: CPU only'),
    (['--threads=2'], "invalid choice: 2"),
])
def test_bad_arguments_are_named(argv, message, capsys):
  with pytest.raises(SystemExit):
    train_step.parse_args(argv)
  assert message in capsys.readouterr().err


def test_one_thread_sets_up_the_study_worker_in_the_worker_process():
  """--threads=1: the worker pinned to one core, XLA and PyTorch each on one thread, as
  study/run.py starts its workers (a PyTorch case: the check imports no JAX)."""
  from vit import xla_flags
  code = ('import json, os; from benchmarks import train_step as t; '
          "t._start([t.Case('small-28', 'mae', 'hf')], threads=1); "
          "print(json.dumps([sorted(os.sched_getaffinity(0)), os.environ['XLA_FLAGS'], "
          "os.environ['OMP_NUM_THREADS']]))")
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'OMP_NUM_THREADS')}
  root = os.path.dirname(os.path.dirname(os.path.abspath(train_step.__file__)))
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       env=env, cwd=root)
  cores, flags, omp = json.loads(out.stdout.strip().splitlines()[-1])
  assert cores == [min(os.sched_getaffinity(0))]
  assert xla_flags.SINGLE_THREAD in flags.split() and omp == '1'
  assert train_step.parse_args(['--threads=1']).threads == 1
  assert train_step.parse_args([]).threads == 0


def _report(device, kind):
  case = train_step.Case('B/16-224', 'supervised', 'jax', 'bf16', device, 256)
  result = {'case': case.__dict__, 'compile_s': 17.0, 'step_memory_bytes': 2 ** 30,
            'train_img_s': 2700.0, 'infer_img_s': 7700.0, 'train_gflops_s': 285_000.0,
            'fraction_of_matmul_peak': 0.45, 'peak_rss_bytes': 3 * 2 ** 30,
            'peak_device_bytes': 2 ** 31, 'mfu_published_bf16_peak': 0.288}
  return {'device': device, 'device_kind': kind,
          'published_bf16_peak_flops': train_step.published_peak(kind),
          'matmul': '8192^3 bfloat16', 'matmul_peak_gflops_s': 633_000.0,
          'results': [result, {'case': case.__dict__, 'error': 'NotImplementedError: no'}]}


def test_published_peak_lookup_prefers_the_specific_part():
  peaks = dict(train_step.GPU_PEAK_BF16_FLOPS)
  assert train_step.published_peak('NVIDIA H100 PCIe') == peaks['H100 PCIe'] == 756e12
  assert (train_step.published_peak('NVIDIA H100 80GB HBM3')
          == train_step.published_peak('NVIDIA H200') == 989.4e12)
  assert train_step.published_peak('cpu') is None


def test_gpu_table_has_the_mfu_column_and_the_device():
  text = train_step.table(_report('gpu', 'NVIDIA H200'))
  lines = text.splitlines()
  assert lines[0].endswith('| MFU (published peak) |') and 'peak GPU MiB' in lines[0]
  assert lines[2].split('|')[1:-1] == [
      ' B/16-224 batch 256 supervised jax [bf16] ', ' 2700.0 ', ' 7700.0 ', ' 17.0 ', ' 1024 ',
      ' 2048 ', ' 285000.0 ', ' 0.45 ', ' 28.8% ']
  assert 'skipped: NotImplementedError: no' in lines[3]
  assert 'NVIDIA H200, published dense bf16 peak 989.4 TFLOP/s' in text


def test_cpu_table_reports_rss_and_no_mfu():
  lines = train_step.table(_report('cpu', 'cpu')).splitlines()
  assert 'MFU' not in lines[0] and 'peak RSS MiB' in lines[0]
  assert lines[2].split('|')[6] == ' 3072 '


def test_help_names_every_variant_of_our_step(capsys):
  from benchmarks import jax_step
  with pytest.raises(SystemExit):
    train_step.parse_args(['--help'])
  help_text = ' '.join(capsys.readouterr().out.split())
  for variant in jax_step.VARIANTS:
    assert variant in help_text, variant


def test_small_32_is_the_fine_tuning_default_and_its_flops():
  shape = train_step.SHAPES['small-32']
  assert (shape.image, shape.channels, shape.patch, shape.hidden, shape.depth, shape.heads,
          shape.mlp, shape.batch) == (32, 3, 4, 64, 4, 4, 256, 128)
  assert shape.tokens == 65
  # 4 x (8 * 65 * 64^2 + 4 * 65 * 64 * 256 + 4 * 65^2 * 64) forward, x3 for training.
  assert shape.train_flops_per_image() == 3 * 4 * 7_471_360


@pytest.mark.parametrize('argv, message', [
    (['--process=shared', '--variants=base,no_xla_defaults'], 'variant no_xla_defaults'),
    (['--process=shared', '--variants=xla:--xla_cpu_multi_thread_eigen=false'], 'variant xla:'),
    (['--process=shared', '--device=gpu'], 'CPU only'),
])
def test_shared_process_refuses_what_would_change_the_whole_process(argv, message, capsys):
  with pytest.raises(SystemExit):
    train_step.parse_args(argv)
  assert message in capsys.readouterr().err


def test_shared_process_accepts_step_variants():
  args = train_step.parse_args(['--shapes=small-32', '--process=shared', '--variants=base,scan:4'])
  cases = train_step._cases(args)
  # Two JAX variants and hf for each step, timm for supervised only.
  assert [(c.step, c.framework, c.variant) for c in cases] == [
      ('supervised', 'jax', 'base'), ('supervised', 'jax', 'scan:4'),
      ('supervised', 'timm', 'base'), ('supervised', 'hf', 'base'), ('mpp', 'jax', 'base'),
      ('mpp', 'jax', 'scan:4'),
      ('mpp', 'hf', 'base')]


def test_scan_variant_names_its_k():
  from benchmarks import jax_step
  assert jax_step._steps_per_call('scan:8') == 8 and jax_step._steps_per_call('base') == 0
  with pytest.raises(ValueError, match='scan:4'):
    jax_step._steps_per_call('scan:x')


def test_trainer_benchmark_reads_the_logged_rates_after_the_first_window():
  from benchmarks import trainer
  output = '\n'.join([
      'batch contract: global_batch=128',
      'step 10/30 loss 2.3 images_per_s 120.5 eta 20s',    # Holds the compilation: left out.
      'step 20/30 loss 2.1 grad_norm 1.2 images_per_s 480.25 eta 3s',
      'eval step 30: eval/accuracy 0.5000',
      'step 30/30 loss 2 images_per_s 5.12e+02 eta 0s'])
  assert trainer.logged_rates(output, log_every=10) == [480.25, 512.0]


def test_masked_image_cases_and_ratios():
  from benchmarks import masked_image
  cases = masked_image.cases()
  assert {c.shape for c in cases} == {'small-28'}
  shape = cases[0].shape_spec()
  assert (shape.image, shape.channels, shape.patch, shape.hidden, shape.depth, shape.heads,
          shape.mlp, shape.batch) == (28, 3, 4, 64, 4, 4, 256, 128)
  assert [(c.step, c.framework) for c in cases if c.framework == 'hf'] == [
      ('mpp', 'hf'), ('mae', 'hf'), ('simmim', 'hf')]
  rates = {('mpp', 'jax', 'base'): 100.0, ('mpp', 'jax', 'corruption_0.75'): 100.0,
           ('mae', 'jax', 'base'): 260.0, ('mae', 'hf', 'base'): 130.0}
  report = {'results': [{'case': {'step': s, 'framework': f, 'variant': v},
                         'train_img_s': r} for (s, f, v), r in rates.items()]
            + [{'case': {'step': 'simmim', 'framework': 'hf', 'variant': 'base'},
                'error': 'not installed'}]}
  assert masked_image.ratios(report) == {'mae_over_mpp_at_75': 2.6, 'mae_over_mpp_at_50': 2.6,
                                         'mae_ours_over_hf': 2.0}


def test_torch_peer_masks_blocks_as_simmim_does():
  torch = pytest.importorskip('torch')
  from benchmarks import torch_peers
  mask = torch_peers._block_mask(torch, 500, 7).numpy().reshape(500, 7, 7)
  padded = np.pad(mask, ((0, 0), (0, 1), (0, 1)), mode='edge').reshape(500, 4, 2, 4, 2)
  assert (padded == padded[:, :, :1, :, :1]).all()
  assert (padded[:, :, 0, :, 0].sum((1, 2)) == 10).all()  # ceil(0.6 * 16) blocks.


def test_every_masked_image_case_of_ours_has_a_config_with_its_variant():
  # A variant that sets a key of the objective's section needs that section first (MPP at 75%
  # was skipped with "AttributeError: 'mpp'" when the override came before it).
  from benchmarks import jax_step, masked_image
  from vit import config as config_lib
  for case in masked_image.cases():
    if case.framework != 'jax':
      continue
    config = jax_step.make_config(case.shape_spec(), case.variant, case.step)
    config_lib.validate(config)
    if case.step == 'mpp':
      assert config.mpp.corruption_rate == (0.75 if case.variant == 'corruption_0.75' else 0.5)
  with pytest.raises(ValueError, match="step 'mae' has no mpp section"):
    jax_step.make_config(masked_image.cases()[0].shape_spec(), 'corruption_0.75', 'mae')


@pytest.mark.parametrize('module, argv, message', [
    ('train_step', ['--rounds=0'], "argument --rounds: expected a positive integer, got '0'"),
    ('train_step', ['--rounds=-3'], "argument --rounds: expected a positive integer, got '-3'"),
    ('masked_image', ['--rounds=0'], "argument --rounds: expected a positive integer, got '0'"),
    ('masked_image', ['--rounds=-3'], "argument --rounds: expected a positive integer, got '-3'"),
    ('masked_image', ['--batch=-5'], "argument --batch: expected a positive integer, got '-5'"),
    ('masked_image', ['--batch=0'], "argument --batch: expected a positive integer, got '0'"),
    ('trainer', ['--rounds=0'], "argument --rounds: expected a positive integer, got '0'"),
])
def test_no_rounds_or_batch_is_refused_before_any_worker_starts(module, argv, message, capsys):
  """0 rounds reached statistics.median([]) after every worker was built; a negative batch,
  the first step: both are parse errors, one line after the usage."""
  import importlib
  with pytest.raises(SystemExit) as e:
    importlib.import_module(f'benchmarks.{module}').parse_args(argv)
  err = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 2 and err[-1].endswith(f'error: {message}')
  assert [line for line in err if 'error' in line] == [err[-1]]


def _refused_json(module, path, capsys):
  import importlib
  with pytest.raises(SystemExit) as e:
    importlib.import_module(f'benchmarks.{module}').parse_args([f'--json={path}'])
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.count('\n') == 1, err
  return err.strip()


@pytest.mark.parametrize('module', ['train_step', 'masked_image', 'trainer'])
def test_json_that_cannot_be_written_is_refused_before_the_first_round(module, tmp_path,
                                                                       capsys):
  """emit() found these only after every round: now parse_args names --json and why."""
  (tmp_path / 'file').write_text('x')
  path = tmp_path / 'file' / 'sub' / 'report.json'
  assert _refused_json(module, path, capsys) == (
      f'error: --json {path}: not writable ({tmp_path / "file"} is a file, not a directory); '
      'nothing was run')
  assert _refused_json(module, tmp_path, capsys) == (
      f'error: --json {tmp_path}: not writable ({tmp_path} is a directory); nothing was run')
  assert sorted(os.listdir(tmp_path)) == ['file']


def test_json_on_a_read_only_volume_is_refused_and_a_new_folder_is_not_made(
    tmp_path, monkeypatch, capsys):
  import errno
  import tempfile

  def read_only(dir=None, **kw):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.path.join(dir, 'tmpx'))
  with monkeypatch.context() as m:
    m.setattr(tempfile, 'TemporaryFile', read_only)
    assert _refused_json('masked_image', tmp_path / 'new' / 'r.json', capsys) == (
        f'error: --json {tmp_path / "new" / "r.json"}: not writable (Read-only file system: '
        f'{tmp_path}); nothing was run')
  # A writable folder, even one emit() will make: accepted, and nothing is created yet.
  args = train_step.parse_args([f'--json={tmp_path / "new" / "r.json"}'])
  assert args.json == str(tmp_path / 'new' / 'r.json') and os.listdir(tmp_path) == []


def test_masked_image_help_has_every_flag_its_default_and_the_examples(capsys):
  from benchmarks import masked_image
  with pytest.raises(SystemExit):
    masked_image.parse_args(['--help'])
  help_text = capsys.readouterr().out
  flat = ' '.join(help_text.split())
  for flag, default in (('--rounds', '5'), ('--device', 'cpu'), ('--batch', '128')):
    assert f'{flag} ' in flat and f'(default: {default}' in flat, flag
  assert '--threads' in flat and '--json' in flat
  # Where its figures are: the masked-image guide (docs/performance.md only points there).
  results = 'docs/guides/masked_image_modeling.md'
  assert f'{results} gives the results.' in flat and 'docs/performance.md' not in flat
  assert os.path.exists(os.path.join(os.path.dirname(os.path.dirname(__file__)), results))
  # The docstring's usage examples, line by line as written there.
  for line in masked_image.__doc__.splitlines():
    if line.lstrip().startswith('python '):
      assert line in help_text.splitlines(), line
  with pytest.raises(SystemExit):
    train_step.parse_args(['--help'])
  assert '    python -m benchmarks.train_step --process=shared' in capsys.readouterr().out


def test_a_backend_that_fails_without_a_message_is_named():
  """JAX 0.10 raises a bare AssertionError when JAX_PLATFORMS=cuda has no CUDA plugin: the
  worker says which backend could not start (it said 'AssertionError: ')."""
  assert train_step.no_backend('cuda', 'AssertionError') == (
      'no CUDA backend could start in this JAX installation (JAX_PLATFORMS=cuda; JAX raised '
      'AssertionError without a message)')
  assert train_step.no_backend('rocm,cpu', 'AssertionError').startswith('no ROCm or CPU backend')
  assert train_step._error_text(AssertionError()) == 'AssertionError'
  assert train_step._error_text(ValueError('bad shape')) == 'ValueError: bad shape'
  assert train_step._error_text(train_step.NoBackend('no CUDA ...')) == 'no CUDA ...'


def test_gpu_without_cuda_names_the_missing_backend_in_one_line():
  """This machine's real behaviour, through the matmul worker (a second): no CUDA plugin."""
  import importlib.util
  if importlib.util.find_spec('jax_plugins') is not None:
    pytest.skip('a JAX plugin is installed: its backend starts or says why itself')
  env = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}
  root = os.path.dirname(os.path.dirname(os.path.abspath(train_step.__file__)))
  run = subprocess.run([sys.executable, '-m', 'benchmarks.train_step', '--device=gpu',
                        '--shapes=', '--rounds=1'], capture_output=True, text=True, env=env,
                       cwd=root, timeout=300)
  assert run.returncode == 1 and run.stderr.strip().splitlines() == [
      'building - - matmul ...',
      'error: JAX cannot run a matmul on --device=gpu: no CUDA backend could start in this JAX '
      'installation (JAX_PLATFORMS=cuda; JAX raised AssertionError without a message)']


@pytest.mark.parametrize('argv, message', [
    (['--batch=0'], "argument --batch: expected a positive integer, got '0'"),
    (['--image=-4'], "argument --image: expected a positive integer, got '-4'"),
    (['--model=nope'], "config.model.name='nope': unknown preset; known: ViT-Ti/16"),
    (['--model=ViT-Ti/16', '--image=30'], 'config.image_size=30: not divisible by the patch '
                                          'size 16'),
])
def test_attention_kernels_flags_are_checked_on_any_machine(argv, message, capsys):
  """They were tracebacks (a preset, the image) or reached JAX (a batch of 0); now one line
  after the usage, before any backend is asked for a GPU."""
  from benchmarks import attention_kernels
  with pytest.raises(SystemExit) as e:
    attention_kernels.main(argv)
  err = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 2 and f'error: {message}' in err[-1]
  assert [line for line in err if 'error' in line] == [err[-1]]


@pytest.mark.parametrize('platforms, line', [
    (None, 'error: no CUDA backend could start in this JAX installation (JAX_PLATFORMS=cuda; '
           'JAX raised AssertionError without a message)'),
    ('cpu', "error: cuDNN attention needs an NVIDIA GPU; JAX's backend here is cpu"),
])
def test_attention_kernels_without_a_gpu_is_one_line(platforms, line):
  """This machine's real behaviour: it was a 'cuDNN is not detected' traceback after pages
  of libtpu's log (the TPU was probed first)."""
  import importlib.util
  if importlib.util.find_spec('jax_plugins') is not None:
    pytest.skip('a JAX plugin is installed: its backend starts or says why itself')
  env = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}
  if platforms:
    env['JAX_PLATFORMS'] = platforms
  root = os.path.dirname(os.path.dirname(os.path.abspath(train_step.__file__)))
  run = subprocess.run([sys.executable, '-m', 'benchmarks.attention_kernels', '--batch=1',
                        '--image=32', '--model=ViT-Ti/16'], capture_output=True, text=True,
                       env=env, cwd=root, timeout=300)
  assert run.returncode == 2 and run.stderr.strip().splitlines() == [line], run.stderr


@pytest.mark.parametrize('module, defaults, example', [
    ('chaos', (('--trials', 3), ('--kills', 2), ('--steps', 30), ('--seed', 0)),
     'python -m benchmarks.chaos --trials 5 --kills 2'),
    ('trainer', (('--shapes', 'both'), ('--objectives', 'both'), ('--rounds', 3),
                 ('--windows', 3), ('--log-every', 10)),
     'python benchmarks/trainer.py --shapes=small-32 --objectives=supervised --rounds=3')])
def test_help_describes_every_flag_with_its_default(module, defaults, example, capsys):
  """Flags were listed bare, with no word of what they set nor their defaults: chaos' --trials,
  --steps and --seed; trainer's --shapes, --objectives, --rounds and --log-every."""
  import importlib
  benchmark = importlib.import_module(f'benchmarks.{module}')
  with pytest.raises(SystemExit) as e:
    (benchmark.parse_args if module == 'trainer' else benchmark.main)(['--help'])
  flat = ' '.join(capsys.readouterr().out.split())
  assert e.value.code == 0
  for flag, default in defaults:
    described = flat.split(f'{flag} {flag[2:].upper().replace("-", "_")} ', 1)[1]
    assert f'(default: {default})' in described.split(' --')[0], flag
  assert example in flat


def test_chaos_refuses_a_workdir_that_is_not_empty_and_leaves_it_as_it_is(tmp_path, capsys):
  """A kept --workdir run again resumed every trial from its finished checkpoints ("kills": 0,
  yet "identical": 1), and with a smaller --steps restored a step never saved (a traceback)."""
  from benchmarks import chaos
  kept = tmp_path / 'chaos'
  (kept / 'reference' / 'checkpoints' / '12').mkdir(parents=True)
  (kept / 'trial_0').mkdir()
  with pytest.raises(SystemExit) as e:
    chaos.main(['--trials=1', '--kills=2', '--steps=8', f'--workdir={kept}'])
  err = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 2 and err[-1].endswith(
      f'error: --workdir {kept}: not empty (it holds reference, trial_0); use a new or empty '
      'folder (this one was left as it is)'), err
  assert [line for line in err if 'error' in line] == [err[-1]]
  assert sorted(os.listdir(kept)) == ['reference', 'trial_0']
  assert os.listdir(kept / 'reference' / 'checkpoints') == ['12']
  (tmp_path / 'empty').mkdir()
  assert chaos.not_fresh(str(tmp_path / 'empty')) is None
  assert chaos.not_fresh(str(tmp_path / 'new')) is None


@pytest.mark.parametrize('argv, message', [
    (['--images=0'], "argument --images: expected a positive integer, got '0'"),
    (['--batches=0'], "argument --batches: expected a positive integer, got '0'"),
    (['--workers=-1'], "argument --workers: expected comma-separated integers >= 0, got '-1'"),
    (['--workers=0,x'], "argument --workers: expected comma-separated integers >= 0, got '0,x'"),
    (['--train_steps=-1'], "argument --train_steps: expected an integer >= 0, got '-1'"),
])
def test_input_pipeline_counts_are_refused_at_parsing(argv, message, capsys):
  """0 images was a traceback naming a temporary folder, -1 workers grain's ConfigError, and 0
  batches printed 0.0 images/s as a measurement."""
  from benchmarks import input_pipeline
  with pytest.raises(SystemExit) as e:
    input_pipeline.main(argv)
  err = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 2 and err[-1].endswith(f'error: {message}'), err
  assert [line for line in err if 'error' in line] == [err[-1]]
  args = input_pipeline.parse_args(['--workers=0,2', '--train_steps=0', '--images=1'])
  assert (args.workers, args.train_steps, args.images, args.batches) == ([0, 2], 0, 1, 20)


def test_flops_count_each_objectives_own_model_at_small_28():
  """MAE's step was counted as a full-sequence ViT step: at tiny-28 its fraction of the matmul
  peak read 1.68 (more than the machine can do)."""
  shape = train_step.SHAPES['small-28']
  assert (shape.patches, shape.tokens, train_step.mae_kept(shape.patches)) == (49, 50, 12)
  encoder = 4 * (8 * 50 * 64 ** 2 + 4 * 50 * 64 * 256 + 4 * 50 ** 2 * 64)  # 11.1 M MACs.
  assert shape.train_flops_per_image('supervised') == 3 * encoder == 3 * 22_220_800
  # Forward: the encoder on 12 kept patches and the class token (2.64 M MACs), decoder_embed
  # 64 -> 32 on those 13, two 32-wide blocks with MLP 128 on all 50 tokens (1.55 M MACs),
  # decoder_pred 32 -> 4 * 4 * 3 on all 50.
  mae = (4 * (8 * 13 * 64 ** 2 + 4 * 13 * 64 * 256 + 4 * 13 ** 2 * 64) + 2 * 13 * 64 * 32
         + 2 * (8 * 50 * 32 ** 2 + 4 * 50 * 32 * 128 + 4 * 50 ** 2 * 32) + 2 * 50 * 32 * 48)
  assert mae == 8_589_312 and shape.train_flops_per_image('mae') == 3 * mae
  # MPP's 512 colour classes and SimMIM's 48 pixel values per patch, on the 49 patches.
  assert shape.train_flops_per_image('mpp') == 3 * (encoder + 2 * 49 * 64 * 512)
  assert shape.train_flops_per_image('simmim') == 3 * (encoder + 2 * 49 * 64 * 48)
  # transformers' MPP peer is ViTForMaskedImageModeling: SimMIM's model, counted as one.
  assert (train_step.Case('small-28', 'mpp', 'hf').train_flops_per_image()
          == train_step.Case('small-28', 'simmim', 'jax').train_flops_per_image())
  assert (train_step.Case('small-28', 'mpp', 'jax', 'corruption_0.75').train_flops_per_image()
          == shape.train_flops_per_image('mpp'))
  # The tiny-28 MAE step, 1.68 of the peak as counted before, is 0.44 of it now.
  tiny = train_step.SHAPES['tiny-28']
  assert 1.68 * tiny.train_flops_per_image('mae') / tiny.train_flops_per_image() < 0.45
  with pytest.raises(ValueError, match="unknown step 'byol'"):
    shape.train_flops_per_image('byol')


def test_flop_count_sizes_are_those_of_the_configs_the_benchmark_builds():
  from benchmarks import jax_step
  from mae import objective as mae_objective
  shape = train_step.SHAPES['small-28']
  mae = jax_step.make_config(shape, 'base', 'mae').mae
  assert mae.mask_ratio == train_step.MAE_MASK_RATIO
  assert mae.decoder.to_dict() == train_step.MAE_DECODER
  for n in (49, 64, 196):
    assert train_step.mae_kept(n) == mae_objective.num_kept(n, mae.mask_ratio)
  mpp = jax_step.make_config(shape, 'base', 'mpp').mpp
  assert (mpp.target, mpp.bits) == ('mean_color', train_step.MPP_BITS)
  assert train_step.mpp_classes(3) == 512 and train_step.mpp_classes(1) == 8


def test_table_says_what_the_flop_column_counts():
  text = train_step.table(_report('cpu', 'cpu'))
  assert text.splitlines()[-1].startswith(
      "train GFLOP/s counts the model of each case's objective (MAE: the encoder on the kept "
      'patches, the decoder on all tokens')
