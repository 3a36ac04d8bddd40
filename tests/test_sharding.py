"""Sharded training equals one-device training; fsdp divides the state's memory.

The meshes need 8 devices, and XLA's device count is fixed when jax is first imported, which
pytest already did with one. So each check runs this file as a script in a subprocess with
`--xla_force_host_platform_device_count=8`, and the script prints its numbers as JSON.
"""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESHES = {'data8': dict(data=8, fsdp=1, tensor=1),
          'fsdp8': dict(data=1, fsdp=8, tensor=1),
          'd2f2t2': dict(data=2, fsdp=2, tensor=2)}


def tiny_config(**mesh):
  from vit import config as config_lib
  config = config_lib.defaults()
  config.image_size = 8
  config.batch_size = 16
  config.total_steps = 3
  config.data.channels = 1
  config.model.patches.size = (4, 4)
  # Every sharded dimension divides 8 (fsdp=8) and 2 (tensor=2).
  config.model.hidden_size = 16
  config.model.transformer.mlp_dim = 32
  config.model.transformer.num_heads = 2
  config.model.transformer.num_layers = 1
  config.model.num_classes = 10
  # SGD, not Adam: the attention key bias has an exactly zero gradient (softmax ignores a
  # shift shared by a query's logits), and Adam's g / sqrt(v) would turn the rounding noise in
  # it, which differs between meshes, into full-size steps.
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 0.1
  config.mesh = dict(data=-1, fsdp=1, tensor=1) if not mesh else mesh
  return config


def batches(config, steps):
  """One fixed random batch, repeated: a loss that can fall in 3 steps."""
  rng = np.random.default_rng(0)
  shape = (config.batch_size, config.image_size, config.image_size, config.data.channels)
  batch = {'image': rng.integers(0, 256, shape, dtype=np.uint8),
           'label': rng.integers(0, 10, (config.batch_size,), dtype=np.int32)}
  return [batch] * steps


def build(config, devices=None):
  """(make_state, jitted step, mesh, state shardings) by the trainers' own code path."""
  import jax
  import jax.numpy as jnp
  from supervised import objective
  from vit import config as config_lib, sharding
  from vit.training import loop, optimizers

  m = config_lib.validate(config, num_devices=len(devices or jax.devices()))
  model = config_lib.build_model(m)
  image_shape = (1, config.image_size, config.image_size, config.data.channels)
  task = loop.Task(
      init_params=lambda rng: model.init(rng, jnp.zeros(image_shape), train=False)['params'],
      loss_fn=objective.make_loss_fn(model), train_data=None)
  mesh = sharding.make_mesh(config.mesh, devices)
  tx, schedule = optimizers.build(config.optimizer, config.total_steps)
  make_state, shardings = loop.create_state(task, tx, config, mesh)
  step = loop.jit_train_step(task.loss_fn, tx, schedule, config, shardings, mesh)
  return make_state, step, mesh, shardings


def train(config, devices=None):
  import jax
  from vit import sharding
  make_state, step, mesh, _ = build(config, devices)
  losses = []
  with jax.set_mesh(mesh):
    state = make_state()
    for batch in batches(config, config.total_steps):
      state, metrics = step(state, sharding.global_batch(batch, mesh))
      losses.append(float(metrics['loss']))
  flat = jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))
  return losses, {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}, state


def state_bytes_per_device(config):
  """(compiled step's argument bytes per device less the batch's, replicated state bytes,
  all state bytes): compiled from shapes alone, nothing is initialised."""
  import jax
  from vit import sharding
  make_state, step, mesh, shardings = build(config)
  shapes = jax.eval_shape(make_state)
  state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                       shapes, shardings)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                      sharding=sharding.batch_sharding(mesh)),
                       batches(config, 1)[0])
  with jax.set_mesh(mesh):
    compiled = step.lower(state, batch).compile()
  devices = len(mesh.devices.flat)
  batch_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(batch)) // devices
  nbytes = lambda x: x.size * x.dtype.itemsize
  leaves = jax.tree.leaves(state)
  whole = sum(nbytes(x) for x in leaves if x.sharding.is_fully_replicated)
  return (compiled.memory_analysis().argument_size_in_bytes - batch_bytes, whole,
          sum(nbytes(x) for x in leaves))


def _memory():
  out = {}
  for name, mesh in (('data8', MESHES['data8']), ('fsdp8', MESHES['fsdp8']),
                     ('fsdp4', dict(data=2, fsdp=4, tensor=1))):
    config = tiny_config(**mesh)
    config.model.hidden_size, config.model.transformer.mlp_dim = 64, 256
    config.model.transformer.num_layers = 2
    config.optimizer.name = 'adam'  # Two parameter-shaped moments, placed by like_params.
    out[name] = state_bytes_per_device(config)
  return out


def _equivalence():
  import jax
  ref_losses, ref_params, _ = train(tiny_config(), jax.devices()[:1])
  out = {}
  for name, mesh in MESHES.items():
    losses, params, state = train(tiny_config(**mesh))
    leaf = state.params['Transformer']['encoderblock_0']['MlpBlock_3']['Dense_0']['kernel']
    out[name] = dict(
        loss_diff=float(np.max(np.abs(np.subtract(losses, ref_losses)))),
        param_diff=max(float(np.max(np.abs(params[k] - ref_params[k]))) for k in ref_params),
        shard_shape=list(leaf.addressable_shards[0].data.shape), losses=losses)
  return out


@pytest.fixture(scope='module')
def results():
  """Both checks from one 8-device subprocess (jax start-up and compiles dominate)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
             XLA_FLAGS=f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=1500)  # The shared CPU may be busy.
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  assert proc.returncode == 0 and lines, proc.stderr[-3000:]
  return json.loads(lines[-1][len('RESULT '):])


def test_meshes_match_one_device(results):
  out = results['equivalence']
  for name, r in out.items():
    assert r['loss_diff'] < 1e-5 and r['param_diff'] < 1e-5, (name, r)
    assert r['losses'][-1] < r['losses'][0], (name, r['losses'])
  # The MLP kernel [embed=16, mlp=32] is really split: over fsdp along embed, over tensor along
  # mlp, and whole on every device under pure data parallelism.
  assert out['data8']['shard_shape'] == [16, 32]
  assert out['fsdp8']['shard_shape'] == [2, 32]
  assert out['d2f2t2']['shard_shape'] == [8, 16]


def test_fsdp_divides_state_memory(results):
  out = results['memory']
  per_device, _, total = out['data8']
  assert per_device == pytest.approx(total, rel=1e-3)  # Data parallel: a whole copy each.
  for name, n in (('fsdp8', 8), ('fsdp4', 4)):
    per_device, whole, total = out[name]
    # Only the head, the MLP and attention biases and the scalars stay whole under fsdp.
    assert whole / total < 0.05, out
    assert per_device / total == pytest.approx(1 / n, abs=0.05), out
    assert per_device == pytest.approx(whole + (total - whole) / n, rel=0.02), out


def _one_device_run(**changes):
  """3 steps on this process's one device, with config fields changed (dotted keys)."""
  import jax
  config = tiny_config()
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return train(config, jax.devices()[:1])


@pytest.fixture(scope='module')
def one_device():
  """(losses, params, state) of the unchanged config: the reference of the three tests below,
  trained once."""
  return _one_device_run()


def test_accumulation_matches_one_big_batch(one_device):
  losses, params, _ = one_device
  acc_losses, acc_params, _ = _one_device_run(**{'optimizer.accumulation_steps': 4})
  np.testing.assert_allclose(acc_losses, losses, atol=1e-5)
  for k in params:
    np.testing.assert_allclose(acc_params[k], params[k], atol=1e-5, err_msg=k)


def test_remat_changes_nothing_but_memory(one_device):
  losses, params, _ = one_device
  remat_losses, remat_params, _ = _one_device_run(**{'model.remat': True})
  np.testing.assert_allclose(remat_losses, losses, atol=1e-6)
  for k in params:
    np.testing.assert_allclose(remat_params[k], params[k], atol=1e-6, err_msg=k)


def test_bfloat16_compute_keeps_float32_state(one_device):
  import jax
  import jax.numpy as jnp
  losses, _, _ = one_device
  bf16_losses, _, state = _one_device_run(**{'model.dtype': 'bfloat16',
                                             'optimizer.name': 'adam'})
  dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.opt_state))
            if jnp.issubdtype(x.dtype, jnp.floating)}
  assert dtypes == {jnp.dtype(jnp.float32)}
  np.testing.assert_allclose(bf16_losses[0], losses[0], atol=2e-2)  # Same init, bf16 rounding.
  assert bf16_losses[-1] < bf16_losses[0]


def test_batch_contract(tmp_path, caplog):
  import jax
  from vit import sharding
  from vit.training import loop, optimizers
  config = tiny_config()
  config.optimizer.accumulation_steps = 2
  config.optimizer.warmup_steps = 2
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  _, schedule = optimizers.build(config.optimizer, config.total_steps)
  contract = loop.write_batch_contract(config, str(tmp_path), mesh, schedule)
  assert json.loads((tmp_path / 'batch_contract.json').read_text()) == contract
  assert (contract['global_batch'], contract['per_process_batch'],
          contract['micro_batches_per_step'], contract['per_device_micro_batch']) == (16, 16, 2, 8)
  assert contract['peak_learning_rate'] == 0.1 and contract['learning_rate_at_step_0'] == 0.0
  assert contract['warmup_steps'] == 2
  assert not [r for r in caplog.records if r.levelname == 'WARNING']
  config.optimizer.warmup_steps, config.optimizer.learning_rate = 0, 1e-3
  _, schedule = optimizers.build(config.optimizer, config.total_steps)
  # The float32 schedule's shortest decimal, in the log line and the JSON alike.
  with caplog.at_level(logging.INFO, logger='vit.training.loop'):
    assert loop.write_batch_contract(config, str(tmp_path), mesh, schedule)[
        'learning_rate_at_step_0'] == 0.001
  assert 'learning_rate_at_step_0=0.001,' in caplog.text
  config.optimizer.learning_rate = 0.1
  config.optimizer.warmup_steps = 10 * config.total_steps  # States the warmup the run gets.
  _, schedule = optimizers.build(config.optimizer, config.total_steps)
  contract = loop.write_batch_contract(config, str(tmp_path), mesh, schedule)
  assert contract['warmup_steps'] == config.total_steps
  (warned,) = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  last = float(schedule(config.total_steps - 1))
  assert 0 < last < 0.1
  assert warned == (
      f'config.optimizer.warmup_steps={10 * config.total_steps} is not below '
      f'config.total_steps={config.total_steps}: the learning rate rises from 0 for the whole run '
      f'and never reaches config.optimizer.learning_rate=0.1 (its last step trains at '
      f'{last:.3g}); shorten the warmup or lengthen the run')


if __name__ == '__main__':
  sys.path.insert(0, ROOT)
  print('RESULT ' + json.dumps(dict(equivalence=_equivalence(), memory=_memory())), flush=True)
