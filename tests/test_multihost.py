"""Two real processes (gloo on 127.0.0.1, 2 CPU devices each) train like one process, and a
checkpoint of theirs resumes in one process, whose checkpoint resumes in two again.

The guarantee: a P-process run's global batch at step s is the concatenation, in process
order, of what `pipeline.train_dataset` yields in each process (process p reads the p-th of P
contiguous shards). A one-process run with the same global batch size reads the records in another
order, so the reference here builds both processes' pipelines in this process and feeds their
concatenation to the same train step on one device.
"""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from vit.testing import ports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {
    'batch_size': 16, 'log_every': 1,
    'model.hidden_size': 16, 'model.transformer.mlp_dim': 32,
    'model.transformer.num_heads': 2, 'model.transformer.num_layers': 1,
    # SGD: Adam would magnify rounding noise in exactly-zero gradients (see test_sharding.py).
    # A constant rate: a leg that ends at step 2 follows the schedule of the whole run.
    'optimizer.name': 'sgd', 'optimizer.learning_rate': 0.1, 'optimizer.warmup_steps': 0,
    'optimizer.decay': 'constant', 'ema_decay': 0.5,
    'mpp.image_every': 0,
    # One global evaluation batch at the end of each leg, in 1 process or 2: 16 images.
    'mpp.eval_examples': 16, 'eval_batch_size': 16,
}
EVALUATED = 'eval/examples 16.0000'  # Was 32 in two processes (a batch per process's share).
# (processes, the step the leg trains to, its mesh): one run, resumed on another process count
# twice; the mesh keeps the tensor axis within a process and the fsdp axis across them.
LEGS = [(2, 2, dict(data=1, fsdp=2, tensor=2)),
        (1, 4, dict(data=1, fsdp=1, tensor=2)),
        (2, 6, dict(data=1, fsdp=2, tensor=2))]


def _launch(workdir: str, processes: int, total_steps: int, mesh: dict) -> list[str]:
  """`mpp.train` in `processes` processes of 2 CPU devices each, gloo on the loopback."""
  with ports.reserved() as port:  # Held until they have ended: no other process takes it.
    return _launch_on(port, workdir, processes, total_steps, mesh)


def _launch_on(port: int, workdir: str, processes: int, total_steps: int, mesh: dict
               ) -> list[str]:
  overrides = {**OVERRIDES, 'total_steps': total_steps,
               **{f'mesh.{k}': v for k, v in mesh.items()}}
  flags = [f'--config.{k}={v}' for k, v in overrides.items()]
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
             XLA_FLAGS=f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=2")
  join = lambda i: [f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={processes}',
                    f'--process_id={i}'] if processes > 1 else []
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'mpp.train', '--config', 'configs/mpp/fashion_mnist.py',
       '--workdir', workdir, *join(i), *flags], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(processes)]
  outputs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=1500)  # The shared CPU may be busy.
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    outputs.append(out)
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return outputs


def _config():
  from configs.mpp import fashion_mnist
  config = fashion_mnist.get_config()
  for key, value in OVERRIDES.items():
    node, *path = key.split('.')
    target = config
    for p in [node, *path][:-1]:
      target = target[p]
    target[[node, *path][-1]] = value
  config.total_steps = LEGS[-1][1]
  return config


def _global_batches(config, processes: int, skip: int):
  """The global batches of a `processes`-process run after `skip` steps: what each process's
  pipeline yields (process p reads shard p of P), concatenated in process order."""
  import grain
  from vit.data import pipeline
  iterators = [iter(pipeline.train_dataset(config, shard=grain.sharding.ShardOptions(
      p, processes, drop_remainder=True))) for p in range(processes)]
  for _ in range(skip):
    for it in iterators:
      next(it)
  while True:
    parts = [next(it) for it in iterators]
    yield {k: np.concatenate([b[k] for b in parts]) for k in parts[0]}


def _reference_states(config):
  """(initial params, {step: state}) at the end of each leg, on one device, uninterrupted.

  The documented input of a resumed run: after a change of process count, the new layout's
  batches from the same position in epochs, i.e. those of a run that had always had that
  layout, after the steps already taken (the batch size is global).
  """
  from mpp import train as mpp_train
  from vit import config as config_lib, sharding
  from vit.training import loop, optimizers
  local = config.copy_and_resolve_references()
  local.mesh.data, local.mesh.fsdp, local.mesh.tensor = -1, 1, 1
  m = config_lib.validate(local)
  task = mpp_train.build_task(local, m, '/tmp')
  mesh = sharding.make_mesh(local.mesh)
  tx, schedule = optimizers.build(local.optimizer, local.total_steps)
  make_state, shardings = loop.create_state(task, tx, local, mesh)
  step = loop.jit_train_step(task.loss_fn, tx, schedule, local, shardings, mesh)
  states, done = {}, 0
  with jax.set_mesh(mesh):
    state = make_state()
    initial = jax.device_get(state.params)  # Before the donating step consumes it.
    for processes, until, _ in LEGS:
      batches = _global_batches(local, processes, skip=done)
      for _ in range(until - done):
        state, _ = step(state, sharding.global_batch(next(batches), mesh))
      states[until], done = jax.device_get(state), until
  return initial, states


def _assert_close(saved, expected, atol=1e-5):
  flat_saved = dict(jax.tree_util.tree_leaves_with_path(jax.device_get(saved)))
  flat_expected = jax.tree_util.tree_leaves_with_path(expected)
  assert len(flat_saved) == len(flat_expected)
  for path, want in flat_expected:
    np.testing.assert_allclose(np.asarray(flat_saved[path]), want, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


def test_two_processes_match_one_and_resume_on_another_process_count(tmp_path):
  """2 processes -> 1 -> 2: each leg resumes the previous one's checkpoint (params, momentum,
  EMA, step into the new mesh; the data position re-derived) and ends where the uninterrupted
  one-device reference does, up to reduction order."""
  from vit import checkpoints
  workdir = str(tmp_path / 'run')
  initial, expected = _reference_states(_config())
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          expected[2])
  read = lambda: checkpoints.restore(checkpoints.manager(workdir, read_only=True), abstract)

  outputs = _launch(workdir, *LEGS[0])
  assert all('step 2/2' in out for out in outputs)
  assert EVALUATED in outputs[0], outputs[0][-3000:]
  contract = json.loads(open(os.path.join(workdir, 'batch_contract.json')).read())
  assert (contract['processes'], contract['per_process_batch'], contract['devices']) == (2, 8, 4)
  assert contract['mesh'] == {'data': 1, 'fsdp': 2, 'tensor': 2}
  # Restored onto this process's one device: the 4-device layout is not needed to read it.
  saved, step = read()
  assert step == 2 and int(saved.step) == 2
  _assert_close(saved, expected[2])
  moved = max(float(np.max(np.abs(w - i)))
              for w, i in zip(jax.tree.leaves(expected[2].params), jax.tree.leaves(initial)))
  assert moved > 1e-3  # The steps really changed the parameters being compared.
  # What fine-tuning and inspection read: the checkpoint without any target tree.
  host = dict(jax.tree_util.tree_leaves_with_path(checkpoints.restore_params(workdir)))
  for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(saved.params)):
    np.testing.assert_array_equal(np.asarray(host[path]), leaf, jax.tree_util.keystr(path))

  out, = _launch(workdir, *LEGS[1])
  assert ('note: the data iterator was saved by 2 processes x 0 data workers, this run has 1 '
          'process x 0 data workers: input position re-derived for it: epoch 0, record 32 of the '
          "60000 in this process's shard; the sample order from here on differs") in out
  assert out.index('note: the data iterator') < out.index('step 3/4')
  assert 'unreadable' not in out and 'step 4/4' in out and EVALUATED in out
  outputs = _launch(workdir, *LEGS[2])
  for out in outputs:
    assert ('was saved by 1 process x 0 data workers, this run has 2 processes x 0 data '
            "workers: input position re-derived for it: epoch 0, record 32 of the 30000 ") in out
    assert 'unreadable' not in out and 'step 6/6' in out
  assert EVALUATED in outputs[0]
  saved, step = read()
  assert step == 6 and int(saved.step) == 6
  _assert_close(saved, expected[6])


def test_join_failures_are_one_line(tmp_path):
  """A coordinator port taken by another job, and a process whose peers never join, each end
  in one line and exit 2: jax raised a traceback for the first (or crashed, SIGSEGV) and,
  after 5 silent minutes, aborted every waiting process with a C++ stack dump for the
  second."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='3')
  with socket.socket() as taken:  # Another job's server on the port.
    taken.bind(('127.0.0.1', 0))  # Loopback only; it still holds the port jax binds on all.
    taken.listen()
    address = f'127.0.0.1:{taken.getsockname()[1]}'
    result = subprocess.run(
        [sys.executable, '-m', 'mpp.train', '--config', 'configs/mpp/fashion_mnist.py',
         '--workdir', str(tmp_path / 'run'), f'--coordinator_address={address}',
         '--num_processes=2', '--process_id=0'], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=300)
  assert result.returncode == 2 and result.stdout == '', result
  assert result.stderr.strip().splitlines() == [
      f'error: --coordinator_address={address}: process 0 cannot start the coordinator there '
      f'(port {address.rpartition(":")[2]}: in use by another program); give every process '
      'another port']
  assert not (tmp_path / 'run').exists()
  join = ('import sys; from vit import distributed; distributed._JOIN_S = 2; '
          'distributed.initialize(sys.argv[1], 2, 1); print("joined")')
  with ports.reserved() as port:  # Nobody serves it: process 0 was never started.
    result = subprocess.run([sys.executable, '-c', join, f'127.0.0.1:{port}'], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and result.stdout == '', result
  assert result.stderr.strip().splitlines() == [
      f'error: --coordinator_address=127.0.0.1:{port}: the 2 processes of this job did not all '
      'join within 2 s (this is process 1); start every process with the same '
      '--coordinator_address and --num_processes']


def test_launch_settings_errors(monkeypatch):
  from vit import distributed
  from vit.errors import UserError
  for name in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    monkeypatch.delenv(name, raising=False)
  cases = [(dict(num_processes=2), 'go together'),
           (dict(num_processes=2, process_id=2, coordinator_address='h:1'),
            r'--process_id=2: must be in \[0, 2\)'),
           (dict(num_processes=0, process_id=0), 'at least 1'),
           (dict(num_processes=2, process_id=0), 'coordinator_address=None: set HOST:PORT'),
           # jax raised a traceback for these ('Failed to start RPC server') or waited silently.
           (dict(num_processes=2, process_id=0, coordinator_address='127.0.0.1:abc'),
            r"the port 'abc' is not a number in \[1, 65535\]"),
           (dict(num_processes=2, process_id=1, coordinator_address='localhost:99999'),
            r"the port '99999' is not a number"),
           # The port follows the last ':', an IPv6 host has its own.
           (dict(num_processes=2, process_id=1, coordinator_address='[::1]:0'),
            r"--coordinator_address='\[::1\]:0': the port '0' is not a number"),
           # No port: it was "the port '1]' is not a number".
           (dict(num_processes=2, process_id=0, coordinator_address='[::1]'),
            r"--coordinator_address='\[::1\]': set HOST:PORT of process 0")]
  for kwargs, message in cases:
    with pytest.raises(UserError, match=message):
      distributed.initialize(**kwargs)
  monkeypatch.setenv('JAX_NUM_PROCESSES', 'two')
  with pytest.raises(UserError, match="JAX_NUM_PROCESSES='two'"):
    distributed.initialize()
  monkeypatch.setenv('JAX_NUM_PROCESSES', '1')
  monkeypatch.setenv('JAX_PROCESS_ID', '0')
  distributed.initialize()  # One process: nothing to join.
  assert not jax.distributed.is_initialized() and jax.process_count() == 1
