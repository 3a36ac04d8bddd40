"""A full disk while an output is written: one line naming the output, the previous one kept.

The disk fills for real: each command runs in a child process whose file size is capped
(RLIMIT_FSIZE, `ulimit -f`: a write past it fails with EFBIG, as on a full volume with ENOSPC).
A writer killed with SIGKILL leaves a temporary that the next write beside it removes. A save
that fails for another reason (a checkpoints folder made read-only, one replaced by a file) stops
a training run in the same way.
"""
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import types

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import ml_collections
import pytest
from PIL import Image

from vit import atomic_write, checkpoints, config as config_lib
from vit.errors import UserError
from vit.formats import vit_jax
from vit.models.spec import ModelSpec
from vit.testing import commands, ports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR='', PYTHONUNBUFFERED='1')
# A child whose disk is not full shares the tests' compilation cache (tests/conftest.py): the
# runs before and after a failure compile the same programs.
ROOMY_ENV = dict(ENV, JAX_COMPILATION_CACHE_DIR=os.environ.get('JAX_COMPILATION_CACHE_DIR', ''))
# A capped child reads that cache and writes no entry to it (none takes the 1e9 s that jax's
# minimum asks): a write would fail too, and say so beside the line under test. What it runs was
# mostly compiled and kept by an earlier healthy run of the same flags (`step4`, the inspection
# before the full disk), so it starts in seconds; a program missing there is compiled, as without
# a cache, and not written.
READ_ONLY_CACHE_ENV = dict(ROOMY_ENV, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='1e9')


def _capped(args, limit_kib):
  """The command `python ARGS` with its file size capped at `limit_kib` KiB (`ulimit -f`)."""
  return ['bash', '-c', f'ulimit -f {limit_kib} && exec "$@"', 'bash', sys.executable, *args]


# Runs python ARGV[1:] without root's exemption from permission checks (CAP_DAC_OVERRIDE,
# CAP_DAC_READ_SEARCH dropped from the bounding set, then exec: the new program never has them),
# so that a folder made read-only is one for it too. Needs CAP_SETPCAP, as root has by default.
_UNPRIVILEGED = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for capability in (1, 2):
  if libc.prctl(24, capability, 0, 0, 0):  # PR_CAPBSET_DROP
    raise OSError(ctypes.get_errno(), 'prctl(PR_CAPBSET_DROP) failed: CAP_SETPCAP missing?')
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def _unprivileged(args):
  """The command `python ARGS`, for which file permissions hold even when the tests run as root."""
  return [sys.executable, *(['-c', _UNPRIVILEGED] if os.geteuid() == 0 else []), *args]


def _run(args, limit_kib):
  # The timeout bounds a hang only: a loaded machine is slow.
  return subprocess.run(_capped(args, limit_kib), cwd=ROOT, env=READ_ONLY_CACHE_ENV,
                        capture_output=True, text=True, timeout=900)


def _one_error_line(proc):
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  return lines[-1]


def _only_that_line(proc):
  """The failure is told once: no other error line, no logged error record (absl's 'E1202 ...'),
  no 'Exception ignored' at exit. (A loaded machine may add unrelated warnings, e.g. XLA's slow
  compilation alarms; those are not counted.)"""
  told = [line for line in proc.stderr.splitlines() if line.startswith('error:')
          or re.match(r'E\d{4} ', line) or 'Exception' in line or 'Error' in line]
  assert len(told) == 1, proc.stderr[-3000:]


@pytest.fixture(scope='module')
def npz(tmp_path_factory):
  m = config_lib.model_defaults().to_dict()
  m.update(patches=dict(size=(4, 4)), hidden_size=16, num_classes=6)
  m['transformer'].update(mlp_dim=32, num_heads=2, num_layers=1)
  model = config_lib.build_model(ModelSpec.from_dict(m))
  # Jitted: one compile, not one per op of the initialisers (~10 s on a loaded machine).
  params = jax.jit(lambda rng: nn.unbox(model.init(rng, jnp.zeros((1, 16, 16, 3)),
                                                   train=False)['params']))(jax.random.key(0))
  path = str(tmp_path_factory.mktemp('full_disk') / 'm.npz')
  vit_jax.save(jax.device_get(params), path)
  return path


def test_export_to_a_full_disk_keeps_the_previous_export(npz, tmp_path):
  out = tmp_path / 'hf'
  out.mkdir()
  (out / 'model.safetensors').write_bytes(b'the previous weights')
  (out / 'config.json').write_text('{"model_type": "vit", "previous": true}')
  proc = _run(['-m', 'vit.export', f'--checkpoint=vit_jax:{npz}', '--format=hf',
               f'--out={out}'], limit_kib=4)  # The weights are ~20 kB.
  assert _one_error_line(proc) == (f'error: {out}: not written (File too large); the previous '
                                   f'one is unchanged; free space and rerun')
  assert (out / 'model.safetensors').read_bytes() == b'the previous weights'
  assert sorted(os.listdir(tmp_path)) == ['hf'] and sorted(os.listdir(out)) == [
      'config.json', 'model.safetensors']


def test_predict_to_a_full_disk_keeps_the_previous_output(npz, tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (200, 16, 16, 3), dtype=np.uint8)
  np.save(tmp_path / 'images.npy', images)
  output = tmp_path / 'top5.json'
  output.write_text('{"previous": true}')
  proc = _run(['-m', 'supervised.predict', f'--init=vit_jax:{npz}',
               f'--images={tmp_path / "images.npy"}', f'--output={output}'],
              limit_kib=8)  # The top-5 of 200 images is ~60 kB.
  assert _one_error_line(proc) == (f'error: {output}: not written (File too large); the '
                                   f'previous one is unchanged; free space and rerun')
  assert json.loads(output.read_text()) == {'previous': True}
  assert sorted(os.listdir(tmp_path)) == ['images.npy', 'top5.json']


def _image_folder(root, per_class=3):
  rng = np.random.default_rng(0)
  for name in ('a', 'b', 'c'):
    os.makedirs(root / name)
    for i in range(per_class):  # Noise: PNG cannot shrink it, ~12 kB each.
      Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
          root / name / f'{i}.png')
  return root


def test_inspect_to_a_full_disk_keeps_the_previous_files_together(npz, tmp_path):
  """vit.inspect's figures, inspect.npz and inspect.json are one output: a disk that fills
  after the first figure replaces none of them (it replaced the figures before the failed one,
  beside the previous inspect.json)."""
  out = tmp_path / 'inspect'
  args = ['-m', 'vit.inspect', f'--init=vit_jax:{npz}', f'--out={out}', '--max_images=16',
          '--show=4']
  first = subprocess.run([sys.executable, *args], cwd=ROOT, env=ROOMY_ENV, capture_output=True,
                         text=True, timeout=900)
  assert first.returncode == 0, first.stderr[-3000:]
  sizes = {name: os.path.getsize(out / name) for name in os.listdir(out)}
  limit_kib = sizes['attention_distance.png'] // 1024 + 2  # The first figure fits, not all.
  assert max(sizes.values()) > limit_kib * 1024, sizes
  for name in sizes:
    (out / name).write_text('previous')
  proc = _run(args, limit_kib)
  assert _one_error_line(proc) == (f'error: {out}: not written (File too large); the previous '
                                   f'one is unchanged; free space and rerun')
  assert {name: (out / name).read_text() for name in os.listdir(out)} == dict.fromkeys(
      sizes, 'previous')
  assert os.listdir(tmp_path) == ['inspect']
  new = tmp_path / 'new'  # No previous output: the line says so and leaves no empty folder.
  proc = _run([*args[:3], f'--out={new}', *args[4:]], limit_kib)
  assert _one_error_line(proc) == (f'error: {new}: not written (File too large); nothing was '
                                   f'written there; free space and rerun')
  assert os.listdir(tmp_path) == ['inspect']


def test_a_benchmark_report_to_a_full_disk_is_one_line(tmp_path):
  """benchmarks' --json FILE (emit, which every benchmark's main ends with, after minutes of
  measuring): one line naming the flag and the file, the report still printed above it."""
  path = tmp_path / 'report.json'
  path.write_text('{"previous": true}')
  proc = _run(['-c', 'import sys; from benchmarks import train_step; '
               'train_step.emit({"x": "y" * 8000}, sys.argv[1])', str(path)], limit_kib=4)
  assert _one_error_line(proc) == (f'error: --json {path}: not written (File too large); the '
                                   f'previous one is unchanged; free space and rerun')
  assert json.loads(proc.stdout) == {'x': 'y' * 8000}
  assert json.loads(path.read_text()) == {'previous': True}
  assert os.listdir(tmp_path) == ['report.json']


def test_prepare_to_a_full_disk_keeps_the_previous_dataset(tmp_path):
  from vit.data import prepare
  folder, out = _image_folder(tmp_path / 'images'), tmp_path / 'out'
  prepare.prepare(f'folder:{folder}', str(out), limit=1)
  before = {p: open(os.path.join(d, p), 'rb').read() for d, _, files in
            os.walk(out / prepare.NAME) for p in files}
  proc = _run(['-m', 'vit.data.prepare', f'--source=folder:{folder}', f'--out={out}',
               '--overwrite'], limit_kib=20)
  assert _one_error_line(proc) == (f'error: {out / prepare.NAME}: not written (File too large);'
                                   f' the previous one is unchanged; free space and rerun')
  after = {p: open(os.path.join(d, p), 'rb').read() for d, _, files in
           os.walk(out / prepare.NAME) for p in files}
  assert after == before and os.listdir(out) == [prepare.NAME]


def test_a_no_room_error_names_the_output_in_process(tmp_path):
  path = str(tmp_path / 'x.json')
  with pytest.raises(UserError, match=rf'^{path}: not written \(No space left on device\); '
                                      r'nothing was written there; free space and rerun$'):
    with atomic_write.file(path):
      raise OSError(28, 'No space left on device')
  with pytest.raises(ValueError):  # Other failures are not disk failures: unchanged.
    with atomic_write.file(path):
      raise ValueError('a bug')
  assert os.listdir(tmp_path) == []


_WRITER = '''
import sys, time
from vit import atomic_write
with atomic_write.{kind}(sys.argv[1]) as partial:
  print(partial, flush=True)
  while True:  # Held open until the parent kills this process.
    time.sleep(1)
'''


@pytest.mark.parametrize('kind', ['file', 'staging_dir'])
def test_what_a_killed_writer_left_is_removed_by_the_next_write(tmp_path, kind):
  path = str(tmp_path / 'out.npy')
  writers = [subprocess.Popen([sys.executable, '-c', _WRITER.format(kind=kind), path], cwd=ROOT,
                              env=ENV, stdout=subprocess.PIPE, text=True) for _ in range(2)]
  killed, alive = writers
  try:
    partials = [w.stdout.readline().strip() for w in writers]  # Both temporaries exist now.
    assert all(os.path.exists(p) for p in partials)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert os.path.exists(partials[0])  # SIGKILL: nothing could clean up.
    with atomic_write.file(path) as partial:
      np.save(partial, np.arange(3))
    assert not os.path.exists(partials[0])  # The dead writer's leftover is gone,
    assert os.path.exists(partials[1])  # a live writer's is untouched.
  finally:
    alive.kill()
    alive.wait(timeout=60)
  assert sorted(os.listdir(tmp_path)) == sorted(['out.npy', os.path.basename(partials[1])])
  np.testing.assert_array_equal(np.load(path), [0, 1, 2])


def _train_args(workdir, total_steps, log_every=2, checkpoint_every=4):
  # TINY_SUPERVISED's evaluation is its SMALL_EVAL: the outputs under test are the checkpoints
  # and the events, not the accuracy.
  return ['-m', 'supervised.train', *commands.TINY_SUPERVISED, f'--workdir={workdir}',
          f'--config.log_every={log_every}', f'--config.checkpoint_every={checkpoint_every}',
          f'--config.total_steps={total_steps}']


def _train(workdir, total_steps, limit_kib=None, log_every=2, checkpoint_every=4,
           unprivileged=False):
  """A tiny supervised run on Fashion-MNIST: checkpoints every 4 steps, ~30 kB each."""
  args = _train_args(workdir, total_steps, log_every, checkpoint_every)
  if limit_kib is None:
    return subprocess.run(_unprivileged(args) if unprivileged else [sys.executable, *args],
                          cwd=ROOT, env=ROOMY_ENV, capture_output=True, text=True, timeout=900)
  return _run(args, limit_kib)


@pytest.fixture(scope='module')
def step4(tmp_path_factory):
  """A finished 4-step run (`_train`: its checkpoint of step 4), which the tests below copy
  and resume: one run of it for the whole module."""
  workdir = tmp_path_factory.mktemp('step4') / 'run'
  first = _train(workdir, 4)
  assert first.returncode == 0, first.stderr[-3000:]
  return workdir


def _copy_of(step4, tmp_path):
  """A workdir of its own holding what the 4-step run wrote."""
  workdir = tmp_path / 'run'
  shutil.copytree(step4, workdir)
  return workdir


def test_a_full_disk_during_training_stops_at_the_failed_save(step4, tmp_path):
  workdir = _copy_of(step4, tmp_path)
  checkpoints = workdir / 'checkpoints'
  # A full disk from here on: the asynchronous save of step 8 fails in orbax's threads.
  full = _train(workdir, 16, limit_kib=8)
  # At the first step after the failure is known, never later than the next save (step 12).
  assert 8 < _stopped_at(full, checkpoints, 'File too large') <= 12
  assert 'step 14/16' not in full.stdout
  # The failed step's unfinished folder is gone: its bytes were the room the rerun needs.
  assert sorted(os.listdir(checkpoints)) == ['4']
  again = _train(workdir, 16)  # Space freed: the same command resumes from step 4.
  assert again.returncode == 0, again.stderr[-3000:]
  assert f'resumed from {workdir} at step 4' in again.stdout
  assert '16' in os.listdir(checkpoints)
  # The disk fills again; the run's last save fails after its last step, and says so.
  last_save = _train(workdir, 20, limit_kib=8)
  assert _one_error_line(last_save) == (
      f'error: checkpoint step 20 could not be saved (File too large); the last complete '
      f'checkpoint is {checkpoints}/16; free space and rerun the same command to resume')
  _only_that_line(last_save)
  assert '16' in os.listdir(checkpoints) and all(n.isdigit() for n in os.listdir(checkpoints))


def _unfinished_step(directory, step=8):
  """A failed save's folder as orbax leaves it (STEP.orbax-checkpoint-tmp with a data file)."""
  data = directory / f'{step}.orbax-checkpoint-tmp' / 'state.orbax-checkpoint-tmp' / 'd'
  data.mkdir(parents=True)
  (data / 'a').write_bytes(b'x' * 900)
  return data


def test_a_write_of_the_failed_save_landing_after_its_removal_is_removed_too(tmp_path,
                                                                             monkeypatch):
  """TensorStore's writes of a failed save are not awaited: one landed after the removal and
  left the step's folder in a full-disk run (seen once in CI's test). Here the write lands right
  after the first removal, every time."""
  data = _unfinished_step(tmp_path)
  (tmp_path / '4').mkdir()  # A complete step beside it is kept.
  removals, rmtree = [], shutil.rmtree

  def rmtree_then_a_late_write(path, *args, **kwargs):
    rmtree(path, *args, **kwargs)
    removals.append(path)
    if len(removals) == 1:
      data.mkdir(parents=True)
      (data / 'late').write_bytes(b'x' * 977)

  monkeypatch.setattr(shutil, 'rmtree', rmtree_then_a_late_write)
  checkpoints._remove_unfinished(types.SimpleNamespace(directory=tmp_path), 8)
  assert len(removals) == 2
  assert sorted(os.listdir(tmp_path)) == ['4']


def test_a_refused_removal_of_the_failed_save_is_left_to_the_next_run(tmp_path, monkeypatch):
  """No permission to remove it (a read-only volume): the run stops at once, leaving it, not
  after retrying for the removal's whole timeout."""
  _unfinished_step(tmp_path)
  calls = []

  def refused(path, onerror):
    calls.append(path)
    onerror(os.rmdir, path, (PermissionError, PermissionError(errno.EACCES, 'denied'), None))

  monkeypatch.setattr(shutil, 'rmtree', refused)
  checkpoints._remove_unfinished(types.SimpleNamespace(directory=tmp_path), 8, timeout_s=600)
  assert len(calls) == 1
  assert os.listdir(tmp_path) == ['8.orbax-checkpoint-tmp']


def test_a_checkpoints_folder_made_read_only_stops_at_the_failed_save(step4, tmp_path):
  """Not only room: no permission to write the next step is one line too, advising to make the
  workdir writable (not to free space), and the run ends at once, not after orbax's 5-minute
  wait for the step's directory."""
  workdir = _copy_of(step4, tmp_path)
  checkpoints = workdir / 'checkpoints'
  checkpoints.chmod(0o555)  # Read-only from here on: the save of step 8 cannot start.
  try:
    denied = _train(workdir, 16, unprivileged=True)
  finally:
    checkpoints.chmod(0o755)
  assert _one_error_line(denied) == (
      f'error: checkpoint step 8 could not be saved (no permission to write in {checkpoints}); '
      f'the last complete checkpoint is {checkpoints}/4; once {workdir} can be written again, '
      f'rerun the same command to resume')
  _only_that_line(denied)
  assert 'step 8/16' in denied.stdout and 'step 10/16' not in denied.stdout
  assert os.listdir(checkpoints) == ['4']
  from vit import checkpoints as checkpoints_lib
  assert checkpoints_lib.read_params(str(workdir))[2] == 4  # What was saved still restores.


def test_a_checkpoints_folder_replaced_by_a_file_stops_the_save_in_one_line(tmp_path,
                                                                            monkeypatch):
  """In process: a real folder moved away mid-run and a file put in its place (which stops
  root too). Any OSError of a save is a SaveFailed; any other error is a bug, raised as is."""
  from vit import checkpoints
  monkeypatch.setattr(checkpoints._AbandonedTaskFilter, 'save_failed', False)  # Restored.
  mngr = checkpoints.manager(str(tmp_path))
  config = ml_collections.ConfigDict({'total_steps': 2})
  state = {'params': {'w': np.arange(3, dtype=np.float32)}}
  checkpoints.save(mngr, 1, state, None, config)
  checkpoints.wait_for_saves(mngr)
  folder = tmp_path / 'checkpoints'
  folder.rename(tmp_path / 'aside')
  folder.write_text('not a folder')
  with pytest.raises(checkpoints.SaveFailed) as e:
    checkpoints.save(mngr, 2, state, None, config)
  assert str(e.value) == (
      f'checkpoint step 2 could not be saved ({folder} is a file, not a directory); no complete '
      f'checkpoint is in {folder}; once {tmp_path} can be written again, rerun the same command '
      f'to start again')
  folder.unlink()
  (tmp_path / 'aside').rename(folder)
  with pytest.raises(ValueError, match='Unsupported type'):  # A bug, not a failed write.
    checkpoints.save(mngr, 3, {'params': object()}, None, config)
  # orbax started step 3's directory and its JSON item in non-daemon threads before the bug was
  # raised; save waited for them, so none is left to hang the process at exit for 300 s once
  # the closed manager's executor can no longer finish them.
  assert not [t for t in threading.enumerate() if type(t).__name__ == '_SignalingThread']
  mngr.close()
  assert sorted(os.listdir(folder)) == ['1', '3.orbax-checkpoint-tmp']  # What they left.
  np.testing.assert_array_equal(checkpoints.restore_params(str(tmp_path))['w'], [0, 1, 2])
  assert sorted(os.listdir(folder)) == ['1', '3.orbax-checkpoint-tmp']  # Read-only.
  checkpoints.manager(str(tmp_path)).close()
  assert os.listdir(folder) == ['1']


def test_a_full_disk_for_the_tensorboard_events_is_one_line(tmp_path):
  """The events file grows at every logged step: on a full disk its flush fails first."""
  workdir = tmp_path / 'run'
  full = _train(workdir, 300, limit_kib=12, log_every=1, checkpoint_every=0)
  last = _one_error_line(full)
  assert re.fullmatch(
      rf'error: {workdir}: the TensorBoard events could not be written \(File too large\); '
      rf'stopped at step \d+; no complete checkpoint is in {workdir}/checkpoints; free space and '
      rf'rerun the same command to start again', last), last
  _only_that_line(full)
  assert 'step 300/300' not in full.stdout


def test_a_full_disk_for_an_output_of_a_step_stops_the_run_in_one_line(tmp_path):
  """An output a step writes besides its checkpoint (here MPP's picture grid, ~100 kB at 64 px;
  the checkpoint's files are under 64 kB) is written whole or not at all, and its failure
  stops the run at that step, naming the output and the last complete checkpoint."""
  workdir = tmp_path / 'run'
  full = _run(['-m', 'mpp.train', '--config=configs/mpp/fashion_mnist.py',
               f'--workdir={workdir}', '--config.image_size=64', '--config.batch_size=8',
               '--config.model.patches.size=(16,16)', *commands.TINY_BACKBONE,
               '--config.log_every=2', '--config.checkpoint_every=2', '--config.eval_every=0',
               '--config.mpp.eval_examples=16', '--config.eval_batch_size=16',
               '--config.optimizer.warmup_steps=1', '--config.mpp.image_every=4',
               '--config.total_steps=8'], limit_kib=64)
  assert _one_error_line(full) == (
      f'error: {workdir}/images/mpp_0000004.png: not written (File too large); stopped at step '
      f'4; the last complete checkpoint is {workdir}/checkpoints/2; free space and rerun the '
      f'same command to resume')
  _only_that_line(full)
  assert os.listdir(workdir / 'images') == []  # No picture cut short.
  assert os.listdir(workdir / 'checkpoints') == ['2']


def _train_two_processes(workdir, total_steps, limit_kib=None, capped=(0, 1), timeout=900,
                         unprivileged=(), keeps_programs=False):
  """`_train` as two processes (jax.distributed, gloo on 127.0.0.1), those in `capped` capped
  when asked: one volume filling up under both, or one process's own disk; those in
  `unprivileged` held to file permissions even as root (`_unprivileged`). `keeps_programs`: the
  first such run, whose uncapped process 0 alone keeps what it compiles (`_env_of`)."""
  with ports.reserved() as port:  # Held until both have ended: no other process takes it.
    return _launch_two(workdir, total_steps, port, limit_kib, capped, timeout, unprivileged,
                       keeps_programs)


def _env_of(process, limit_kib, capped, unprivileged, keeps_programs):
  """The compilation cache of one process of a two-process run. Two processes that write an
  entry at once could have one read it half-written, and warn: both share the tests' cache only
  in a healthy run, where no stderr line is counted. In the first failing run, process 0 (not
  capped) alone writes its programs there, process 1 has no cache (`keeps_programs`); in the
  others, both only read it, and start without compiling the step again."""
  if limit_kib is None and not unprivileged:
    return ROOMY_ENV
  if keeps_programs:
    assert 0 not in capped and 0 not in unprivileged
    return ENV if process else ROOMY_ENV
  return READ_ONLY_CACHE_ENV


def _launch_two(workdir, total_steps, port, limit_kib, capped, timeout, unprivileged,
                keeps_programs):
  procs = []
  for i in range(2):
    args = [*_train_args(workdir, total_steps), f'--coordinator_address=127.0.0.1:{port}',
            '--num_processes=2', f'--process_id={i}']
    command = (_capped(args, limit_kib) if limit_kib is not None and i in capped
               else _unprivileged(args) if i in unprivileged else [sys.executable, *args])
    procs.append(subprocess.Popen(
        command, cwd=ROOT, env=_env_of(i, limit_kib, capped, unprivileged, keeps_programs),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  try:
    outputs = [p.communicate(timeout=timeout) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, *out)
            for p, out in zip(procs, outputs)]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def _stopped_at(proc, checkpoints, reason):
  """The step where `proc` stopped, after its one line naming step 8's failed save."""
  last = _one_error_line(proc)
  stopped = re.fullmatch(
      rf'error: checkpoint step 8 could not be saved \(({reason})\); stopped at step (\d+); the '
      rf'last complete checkpoint is {checkpoints}/4; free space and rerun the same command to '
      rf'resume', last)
  assert stopped, last
  _only_that_line(proc)
  return int(stopped[2])


def test_a_failed_save_in_a_two_process_run_stops_both_at_the_same_step(step4, tmp_path):
  """Both processes write shards of each checkpoint; the agreement at the loop's sync steps
  stops them at one step, each with the one line, whichever learnt of the failure first. When
  only process 1's disk is full, process 0 does not wait for it at orbax's barriers (20
  minutes); it names process 1 and its reason. The same when process 1 may not write in the
  checkpoints folder (as root, process 0 still may): both stop at that save. The runs resume the
  one-process run's step 4 (`step4`, the same flags; tests/test_multihost.py shows a resume on
  another process count equal to an uninterrupted run), so that the step they fail at is a
  two-process save."""
  workdir = _copy_of(step4, tmp_path)
  checkpoints = workdir / 'checkpoints'
  # A hang would last orbax's 20 minutes: the timeout, 15, only ends a failing test sooner (a
  # loaded machine takes minutes for a healthy run).
  healthy, full = _train_two_processes(workdir, 16, limit_kib=8, capped=(1,),
                                       keeps_programs=True)
  stops = [_stopped_at(healthy, checkpoints, 'process 1: File too large'),
           _stopped_at(full, checkpoints, 'File too large')]
  assert stops[0] == stops[1] and 8 < stops[0] <= 12
  assert sorted(n for n in os.listdir(checkpoints) if n.isdigit()) == ['4']
  stops = [_stopped_at(proc, checkpoints, r'File too large|process \d: File too large')
           for proc in _train_two_processes(workdir, 16, limit_kib=8)]
  assert stops[0] == stops[1] and 8 < stops[0] <= 12
  assert sorted(n for n in os.listdir(checkpoints) if n.isdigit()) == ['4']
  checkpoints.chmod(0o555)
  try:
    denied = _train_two_processes(workdir, 16, unprivileged=(1,))
  finally:
    checkpoints.chmod(0o755)
  for proc in denied:
    assert re.fullmatch(
        rf'error: checkpoint step 8 could not be saved \((process \d: )?no permission to write in '
        rf'{checkpoints}\); the last complete checkpoint is {checkpoints}/4; once {workdir} can be '
        rf'written again, rerun the same command to resume', _one_error_line(proc))
    _only_that_line(proc)
    assert 'step 8/16' in proc.stdout and 'step 10/16' not in proc.stdout
  assert os.listdir(checkpoints) == ['4']
  for proc in _train_two_processes(workdir, 16):  # Space freed: both resume from step 4.
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'resumed from {workdir} at step 4' in proc.stdout and 'step 16/16' in proc.stdout


_TENSORSTORE = ('PERMISSION_DENIED: Error writing local file "{partial}/d/1a2b": Failed to '
                "create directory: Permission denied [tensorstore_spec='{{}}'] "
                "[os_error_code='13']")


@pytest.mark.parametrize('code,reason', [
    (errno.ENOSPC, 'No space left on device'), (errno.EDQUOT, 'Disk quota exceeded'),
    (errno.EFBIG, 'File too large'), (errno.EROFS, 'Read-only file system: {partial}'),
    (errno.EIO, 'Input/output error: {partial}'),
    (errno.EACCES, 'no permission to write in {partial.parent}'),
    (errno.ENAMETOOLONG, 'File name too long: {partial}'),
    ('tensorstore', 'no permission to write in {partial}/d')])
def test_a_failed_save_advises_freeing_space_only_when_room_would_help(tmp_path, monkeypatch,
                                                                         code, reason):
  """Any OSError of a save is told in plain words, naming the file unless room is the cause. A
  full disk, a quota or a file size limit: 'free space and rerun'; a read-only or failing
  volume (EROFS, EIO), no permission, any other: no room would help, the workdir must become
  writable again. The save's failure is a synthetic OSError (or TensorStore's error, which
  gives the code), as orbax raises it when the save in flight is waited for."""
  from vit import checkpoints
  monkeypatch.setattr(checkpoints._AbandonedTaskFilter, 'save_failed', False)  # Restored.
  mngr = checkpoints.manager(str(tmp_path))
  partial = tmp_path / 'checkpoints' / '8.orbax-checkpoint-tmp' / 'state'
  mngr._maybe_await_cleanup_tmp_directory()  # orbax's own, begun at the opening: done first.
  partial.mkdir(parents=True)
  (partial / 'half_written').write_bytes(b'x' * 100)
  other = tmp_path / 'checkpoints' / '4.orbax-checkpoint-tmp'  # Not this save's: kept.
  other.mkdir()

  def wait_until_finished():
    if code == 'tensorstore':
      raise ValueError(_TENSORSTORE.format(partial=partial))
    raise OSError(code, os.strerror(code), str(partial))

  monkeypatch.setattr(mngr, 'wait_until_finished', wait_until_finished)
  mngr.pending = 8
  with pytest.raises(checkpoints.SaveFailed) as e:
    checkpoints.wait_for_saves(mngr)
  monkeypatch.undo()
  mngr.close()
  cure = ('free space and rerun' if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else
          f'once {tmp_path} can be written again, rerun')
  assert str(e.value) == (f'checkpoint step 8 could not be saved ({reason.format(partial=partial)}'
                          f'); no complete checkpoint is in {tmp_path}/checkpoints; {cure} the '
                          f'same command to start again')
  assert os.listdir(tmp_path / 'checkpoints') == ['4.orbax-checkpoint-tmp']


def test_a_write_that_meets_the_exits_shut_executor_after_a_failed_save_is_not_logged(
    monkeypatch, caplog):
  """A save still writing when the process stops on a failed save's one line meets the thread
  executor that Python's exit has shut down: orbax's thread logs 'cannot schedule new futures
  after shutdown' with its traceback (after the line, in a two-process run under load). After a
  SaveFailed it is dropped; before one, it is a bug, and logged. A real orbax thread and a real
  shut-down executor, as asyncio.to_thread meets it at exit."""
  import concurrent.futures
  from orbax.checkpoint._src.futures import future
  checkpoints._quiet_failed_saves()
  executor = concurrent.futures.ThreadPoolExecutor(1)
  executor.shutdown()
  logged = []
  for failed in (False, True):
    monkeypatch.setattr(checkpoints._AbandonedTaskFilter, 'save_failed', failed)  # Restored.
    caplog.clear()
    thread = future._SignalingThread(target=lambda: executor.submit(print), send_signals=[],
                                     receive_signals=[])
    thread.start()
    threading.Thread.join(thread)  # orbax's own join re-raises the error, which is not logging.
    logged.append([r.exc_info[1] for r in caplog.records if r.exc_info])
  assert [str(e) for e in logged[0]] == ['cannot schedule new futures after shutdown']
  assert logged[1] == []


def test_a_compilation_cache_that_cannot_be_written_is_one_line_once(capsys):
  """jax's warning for a compiled step it cannot keep (two lines at every compile, before a
  full disk's own error line) is one line, once, naming the cache; other warnings are kept."""
  import warnings

  from vit import cli
  shown = []
  with warnings.catch_warnings():  # Restores warnings.showwarning afterwards.
    warnings.simplefilter('always')
    warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
    cli.tell_cache_write_failures_once('/cache/xla')
    for name in ('jit_step', 'jit_eval'):
      warnings.warn(f"Error writing persistent compilation cache entry for '{name}': OSError: "
                    '[Errno 27] File too large')
    warnings.warn('another warning')
  err = capsys.readouterr().err.strip().splitlines()
  assert shown == ['another warning']
  assert err == [('warning: compiled steps are not kept in the compilation cache /cache/xla '
                    '(OSError: [Errno 27] File too large); JAX_COMPILATION_CACHE_DIR= (empty) '
                    'turns it off')]
