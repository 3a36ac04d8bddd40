"""A short MPP run on Fashion-MNIST learns, and writes what fine-tuning loads."""
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

from configs.mpp import fashion_mnist
from mpp import train
from vit import checkpoints, config as config_lib
from vit.training import loop


def _tiny_config():
  config = fashion_mnist.get_config()
  config.total_steps = 100
  config.batch_size = 32
  config.data.channels = 1  # 8 grey classes: learns in tens of steps.
  config.model.hidden_size = 32
  config.model.transformer.mlp_dim = 64
  config.model.transformer.num_layers = 2
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_steps = 10
  config.log_every = 50
  config.mpp.eval_examples = 512
  config.mpp.image_every = 0
  return config


def test_short_run_learns_and_saves_a_backbone(tmp_path):
  config = _tiny_config()
  m = config_lib.validate(config)
  workdir = str(tmp_path / 'mpp')
  task = train.build_task(config, m, workdir)
  evaluator = task.evaluators[0]
  before = evaluator.evaluate(nn.unbox(jax.jit(task.init_params)(jax.random.key(0))))
  # The head starts at zero: uniform over the 8 grey classes.
  np.testing.assert_allclose(before['loss'], math.log(8), rtol=1e-5)

  state = loop.train(config, workdir, task).state
  after = evaluator.evaluate(state.params)
  assert after['loss'] < before['loss'] - 0.5, after
  # Better than always answering the most frequent colour (black background), by a margin.
  assert after['accuracy'] > after['majority_accuracy'] + 0.03, after
  assert 0.3 < after['majority_accuracy'] < 0.6
  assert set(after) == set(evaluator.metric_names)  # Stated before training (best_metric).

  params = checkpoints.restore_params(workdir)
  assert set(params) == {'backbone', 'mask_embedding', 'head'}
  assert {'embedding', 'cls', 'Transformer'} <= set(params['backbone'])
  assert params['mask_embedding'].shape == (32,)
  # The backbone is exactly a token classifier's tree without its head.
  classifier = config_lib.build_model(config_lib.validate(config), num_classes=10)
  shapes = jax.eval_shape(lambda: classifier.init(
      jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32), train=False))['params']
  shapes = nn.unbox(shapes)
  shapes.pop('head')
  assert jax.tree.structure(shapes) == jax.tree.structure(params['backbone'])
  assert checkpoints.saved_config(workdir)['mpp']['target'] == 'mean_color'

  picture = Image.open(os.path.join(workdir, 'images', 'mpp_0000100.png'))
  assert picture.size == (8 * (28 * 4 + 2) + 2, 3 * (28 * 4 + 2) + 2)


def test_cli_reports_a_bad_target_in_one_line(tmp_path):
  out = subprocess.run(
      [sys.executable, '-m', 'mpp.train', '--config', 'configs/mpp/fashion_mnist.py',
       '--workdir', str(tmp_path), '--config.mpp.target=colour'],
      capture_output=True, text=True, timeout=900,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == (
      "error: config.mpp.target='colour': must be one of mean_color, downsampled_color, pixels")
  assert 'Traceback' not in out.stderr


def test_grey_configs_end_to_end_32_levels_then_fine_tuning(tmp_path):
  from configs.finetune import fashion_mnist as ft_rgb, fashion_mnist_grey as ft_grey
  from configs.mpp import fashion_mnist_grey
  from supervised import finetune
  from vit.errors import ConfigError
  config = fashion_mnist_grey.get_config()
  config.total_steps, config.batch_size, config.log_every = 2, 16, 1
  config.model.hidden_size, config.mpp.eval_examples = 16, 256
  config.model.transformer.update(mlp_dim=32, num_heads=2, num_layers=1)
  m = config_lib.validate(config)
  workdir = str(tmp_path / 'mpp')
  task = train.build_task(config, m, workdir)
  before = task.evaluators[0].evaluate(nn.unbox(jax.jit(task.init_params)(jax.random.key(0))))
  np.testing.assert_allclose(before['loss'], math.log(32), rtol=1e-5)  # 32 grey levels.
  loop.train(config, workdir, task)
  assert checkpoints.restore_params(workdir)['head']['kernel'].shape == (16, 32)

  grey = ft_grey.get_config()
  grey.init = f'mpp:{workdir}'
  m, ckpt = finetune.prepare(grey)
  assert ckpt.channels == 1 and m.hidden_size == 16
  rgb = ft_rgb.get_config()
  rgb.init = f'mpp:{workdir}'
  with pytest.raises(ConfigError, match=r'config.data.channels=3: the checkpoint mpp:.* takes '
                     r'1-channel images'):
    finetune.prepare(rgb)
