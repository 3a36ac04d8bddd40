"""A short Fashion-MNIST fine-tune reaching a stated accuracy; the CLI's help and errors."""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs.finetune import fashion_mnist as ft_config
from supervised import finetune
from vit import config as config_lib
from vit.formats import vit_jax
from vit.models.spec import ModelSpec
from vit.data import fashion_mnist
from vit.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_tiny_npz(path):
  m = config_lib.model_defaults().to_dict()
  m.update(patches=dict(size=(7, 7)), hidden_size=32, num_classes=7)
  m['transformer'].update(mlp_dim=64, num_heads=4, num_layers=2)
  net = config_lib.build_model(ModelSpec.from_dict(m))
  params = jax.jit(lambda rng: net.init(rng, jnp.zeros((1, 28, 28, 3)), train=False)['params'])(
      jax.random.key(0))  # Jitted: one compile, not one per op of the initialisers.
  vit_jax.save(jax.device_get(nn.unbox(params)), str(path))


def test_fashion_mnist_finetune_reaches_70_percent(tmp_path):
  """200 SGD steps of 64 images, from a tiny official-layout checkpoint (7x7 patches, width
  32, 2 layers), with the fine-tuning recipe: 0.73 on these 1000 test images when written."""
  write_tiny_npz(tmp_path / 'tiny.npz')
  train_images, train_labels = fashion_mnist.load('train')
  test_images, test_labels = fashion_mnist.load('test')
  train = fashion_mnist.ArraySource(train_images[:12800], train_labels[:12800])
  test = fashion_mnist.ArraySource(test_images[:1000], test_labels[:1000])
  config = ft_config.get_config()
  config.init = f'vit_jax:{tmp_path / "tiny.npz"}'
  config.image_size, config.total_steps, config.log_every = 28, 200, 50
  config.batch_size, config.eval_batch_size = 64, 250
  config.optimizer.warmup_steps, config.optimizer.learning_rate = 20, 0.1
  m, ckpt = finetune.prepare(config)
  task = finetune.build_task(config, m, ckpt, train_source=train, eval_source=test)
  state = loop.train(config, str(tmp_path / 'run'), task).state
  accuracy = task.evaluators[0].evaluate(state.params)
  assert accuracy['examples'] == 1000 and set(accuracy) == set(task.evaluators[0].metric_names)
  assert accuracy['accuracy'] >= 0.70
  assert task.evaluators[0].evaluate(state.ema_params)['accuracy'] >= 0.65
  assert np.all(np.isfinite(np.asarray(state.params['head']['kernel'])))


def test_cli_help_and_missing_init(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  # Independent processes (each its own workdir), started together: their interpreter
  # start-ups share the cores.
  procs = [subprocess.Popen([sys.executable, '-m', 'supervised.finetune', *a], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for a in (('--help',),
                     ('--config=configs/finetune/fashion_mnist.py', f'--workdir={tmp_path / "w"}'),
                     ('--config=configs/finetune/fashion_mnist.py', f'--workdir={tmp_path / "v"}',
                      f'--config.init=hf:{tmp_path / "absent"}'))]
  try:
    (helped, _), (_, no_init), (_, absent) = [p.communicate(timeout=900) for p in procs]
  finally:  # A timed-out case leaves no process behind.
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  assert '--config' in helped and '--workdir' in helped
  # The flags themselves, not only the usage line of the module docstring.
  assert '  --config: Path to an ml_collections config file' in helped
  assert '  --workdir: Directory for checkpoints' in helped
  # The multi-process flags that docs/guides/scaling_out.md passes to a trainer (vit.distributed):
  # --help showed only --config and --workdir.
  for name in ('coordinator_address', 'num_processes', 'process_id', 'lost_process_after'):
    assert f'  --{name}: ' in helped, name
  assert procs[1].returncode == 2
  assert no_init.strip().splitlines() == [
      'error: config.init=None: set the weights to start from: mpp:DIR, mae:DIR, simmim:DIR, '
      'supervised:DIR, vit_jax:FILE.npz, hf:DIR or timm:DIR']
  assert procs[2].returncode == 2 and 'directory not found' in absent
