"""Fine-tuning from a real `mpp.train` workdir (`mpp:DIR`): its backbone, at a new resolution."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs.finetune import fashion_mnist as ft_config
from supervised import finetune
from vit import checkpoints, init_spec, sharding
from vit.data import fashion_mnist
from vit.errors import UserError
from vit.training import loop, optimizers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def mpp_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('mpp') / 'run')
  run = subprocess.run(
      [sys.executable, '-m', 'mpp.train', '--config=configs/mpp/fashion_mnist.py',
       f'--workdir={workdir}', '--config.model.hidden_size=16',
       '--config.model.transformer.num_layers=1', '--config.model.transformer.mlp_dim=32',
       '--config.model.transformer.num_heads=2', '--config.total_steps=2',
       '--config.batch_size=16', '--config.mpp.eval_examples=0'],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert run.returncode == 0, run.stderr[-2000:]
  return workdir


def test_mpp_backbone_is_loaded_and_adapted(mpp_workdir):
  ckpt = init_spec.load(f'mpp:{mpp_workdir}')
  saved = checkpoints.restore_params(mpp_workdir)
  assert set(saved) >= {'backbone', 'head'} and 'head' not in ckpt.params
  assert ckpt.model.classifier == 'token' and ckpt.model.num_classes is None
  assert (ckpt.image_size, ckpt.channels, ckpt.model.hidden_size) == (28, 3, 16)
  with pytest.raises(UserError, match='an MPP checkpoint.*use mpp:'):
    init_spec.load(f'supervised:{mpp_workdir}')

  config = ft_config.get_config()
  config.init, config.image_size, config.total_steps = f'mpp:{mpp_workdir}', 32, 3
  config.batch_size, config.eval_batch_size = 16, 100
  m, ckpt = finetune.prepare(config)
  images, labels = fashion_mnist.load('test')
  source = fashion_mnist.ArraySource(images[:200], labels[:200])
  task = finetune.build_task(config, m, ckpt, train_source=source, eval_source=source)
  tx, _ = optimizers.build(config.optimizer, config.total_steps)
  mesh = sharding.make_mesh(config.mesh)
  build, _ = loop.create_state(task, tx, config, mesh)
  with jax.set_mesh(mesh):
    params = jax.device_get(build().params)
  block = 'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel'.split('/')
  get = lambda tree: tree[block[0]][block[1]][block[2]][block[3]][block[4]]
  np.testing.assert_array_equal(get(params), get(saved['backbone']))
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 65, 16)
  assert params['head']['kernel'].shape == (16, 10) and not params['head']['kernel'].any()
