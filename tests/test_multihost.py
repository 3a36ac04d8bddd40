"""Two real processes (gloo on 127.0.0.1, 4 CPU devices each) train like one process.

The guarantee: a P-process run's global batch at step s is the concatenation, in process
order, of what `pipeline.train_dataset` yields in each process (process p reads records
p, p+P, ...). A one-process run with the same global batch size reads the records in another
order, so the reference here builds both processes' pipelines in this process and feeds their
concatenation to the same train step on one device.
"""
import json
import os
import socket
import subprocess
import sys
from unittest import mock

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {
    'batch_size': 16, 'total_steps': 3, 'log_every': 1,
    'model.hidden_size': 16, 'model.transformer.mlp_dim': 32,
    'model.transformer.num_heads': 2, 'model.transformer.num_layers': 1,
    # SGD: Adam would magnify rounding noise in exactly-zero gradients (see test_sharding.py).
    'optimizer.name': 'sgd', 'optimizer.learning_rate': 0.1, 'optimizer.warmup_steps': 0,
    'mpp.eval_examples': 0, 'mpp.image_every': 0,
    'mesh.data': 2, 'mesh.fsdp': 2, 'mesh.tensor': 2,
}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(workdir: str) -> list[str]:
  port = _free_port()
  flags = [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'mpp.train', '--config', 'configs/mpp/fashion_mnist.py',
       '--workdir', workdir, f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
       f'--process_id={i}', *flags], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
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
  return config


def _reference_params(config):
  """(initial params, final state) of the same 3 steps on one device, fed both processes' batches, concatenated."""
  from mpp import train as mpp_train
  from vit import config as config_lib, sharding
  from vit.data import pipeline
  from vit.training import loop, optimizers
  local = config.copy_and_resolve_references()
  local.mesh.data, local.mesh.fsdp, local.mesh.tensor = -1, 1, 1
  m = config_lib.validate(local)
  task = mpp_train.build_task(local, m, '/tmp')
  iterators = []
  for p in range(2):  # What mpp.train's pipeline yields in process p of 2.
    with mock.patch.object(jax, 'process_index', lambda p=p: p), \
         mock.patch.object(jax, 'process_count', lambda: 2):
      iterators.append(iter(pipeline.train_dataset(local)))
  mesh = sharding.make_mesh(local.mesh)
  tx, schedule = optimizers.build(local.optimizer, local.total_steps)
  make_state, shardings = loop.create_state(task, tx, local, mesh)
  step = loop.jit_train_step(task.loss_fn, tx, schedule, local, shardings, mesh)
  with jax.set_mesh(mesh):
    state = make_state()
    initial = jax.device_get(state.params)  # Before the donating step consumes it.
    for _ in range(local.total_steps):
      parts = [next(it) for it in iterators]
      batch = {k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
      state, _ = step(state, sharding.global_batch(batch, mesh))
  return initial, state


def test_two_processes_match_one(tmp_path):
  from vit import checkpoints
  workdir = str(tmp_path / 'run')
  outputs = _launch(workdir)
  assert 'step 3/3' in outputs[0] and 'step 3/3' in outputs[1]

  contract = json.loads(open(os.path.join(workdir, 'batch_contract.json')).read())
  assert (contract['processes'], contract['per_process_batch'], contract['devices']) == (2, 8, 8)
  assert contract['mesh'] == {'data': 2, 'fsdp': 2, 'tensor': 2}

  initial, state = _reference_params(_config())
  expected = jax.device_get(state.params)
  # Restored onto this process's one device: the 8-device layout is not needed to read it.
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  saved, step = checkpoints.restore(checkpoints.manager(workdir, read_only=True), abstract)
  assert step == 3 and int(saved.step) == 3
  saved = jax.device_get(saved.params)
  flat_saved = dict(jax.tree_util.tree_leaves_with_path(saved))
  flat_expected = jax.tree_util.tree_leaves_with_path(expected)
  assert len(flat_saved) == len(flat_expected)
  for path, want in flat_expected:
    np.testing.assert_allclose(np.asarray(flat_saved[path]), want, atol=1e-5,
                               err_msg=jax.tree_util.keystr(path))
  moved = max(float(np.max(np.abs(w - i)))
              for w, i in zip(jax.tree.leaves(expected), jax.tree.leaves(initial)))
  assert moved > 1e-3  # The three steps really changed the parameters being compared.
  # What fine-tuning and inspection read: the 8-device checkpoint without any target tree.
  host = checkpoints.restore_params(workdir)
  for path, want in flat_expected:
    np.testing.assert_array_equal(np.asarray(dict(jax.tree_util.tree_leaves_with_path(host))[path]),
                                  np.asarray(flat_saved[path]), err_msg=jax.tree_util.keystr(path))


def test_launch_settings_errors(monkeypatch):
  from vit import distributed
  from vit.errors import UserError
  for name in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    monkeypatch.delenv(name, raising=False)
  cases = [(dict(num_processes=2), 'go together'),
           (dict(num_processes=2, process_id=2, coordinator_address='h:1'),
            r'--process_id=2: must be in \[0, 2\)'),
           (dict(num_processes=0, process_id=0), 'at least 1'),
           (dict(num_processes=2, process_id=0), 'coordinator_address=None: set HOST:PORT')]
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
