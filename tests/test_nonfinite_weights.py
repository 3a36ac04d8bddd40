"""Weights with NaN or inf are refused by every reader, in one line naming the file, the
tensor and the count; a JSON output never holds NaN.

The checkpoint is real: transformers saves a ViT in float16 after one weight grew past
float16's largest value (65504), which the cast turns into inf.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from vit import init_spec
from vit.errors import UserError
from vit.formats import vit_jax

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def overflowed(tmp_path_factory):
  directory = tmp_path_factory.mktemp('fp16') / 'vit'
  torch.manual_seed(0)
  cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               intermediate_size=64, image_size=16, patch_size=4, num_labels=5)
  model = transformers.ViTForImageClassification(cfg).eval()
  with torch.no_grad():
    model.classifier.weight[2, 7] = 70000.0  # Fine in float32, inf in float16.
  model.half().save_pretrained(directory)
  return str(directory)


def test_an_overflowed_float16_weight_is_refused_by_name(overflowed):
  from safetensors.numpy import load_file
  path = f'{overflowed}/model.safetensors'
  weights = load_file(path)
  assert weights['classifier.weight'].dtype == np.float16  # What transformers wrote.
  assert np.isinf(weights['classifier.weight']).sum() == 1
  with pytest.raises(UserError, match=(
      rf'^hf:{path}: tensor classifier.weight has 1 non-finite values \(NaN or inf\) of 160; '
      r'the weights are damaged or overflowed their dtype \(e.g. float16\), so they are not '
      r'loaded$')):
    init_spec.load(f'hf:{overflowed}')


def test_predict_refuses_in_one_line_and_writes_no_json(overflowed, tmp_path):
  np.save(tmp_path / 'images.npy',
          np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
  out = tmp_path / 'x.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'supervised.predict', f'--init=hf:{overflowed}',
       f'--images={tmp_path / "images.npy"}', f'--output={out}'], cwd=ROOT, capture_output=True,
      text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines()[-1].startswith(
      f'error: hf:{overflowed}/model.safetensors: tensor classifier.weight has 1 non-finite')
  assert not out.exists()


def test_other_readers_refuse_too(tmp_path):
  npz = str(tmp_path / 'm.npz')
  np.savez(npz, **{'head/kernel': np.array([[np.nan, 1.0], [np.inf, -np.inf]], np.float32),
                   'embedding/bias': np.zeros(2, np.float32)})
  with pytest.raises(UserError, match=rf'^vit_jax:{npz}: tensor head/kernel has 3 non-finite'):
    vit_jax.load(npz)


def test_json_predictions_never_hold_nan(tmp_path):
  """Finite weights whose logits overflow float32 (a head of +-3e38): no .json is written."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from vit import config as config_lib
  from vit.models.spec import ModelSpec
  m = config_lib.model_defaults().to_dict()
  m.update(patches=dict(size=(4, 4)), hidden_size=16, num_classes=3)
  m['transformer'].update(mlp_dim=32, num_heads=2, num_layers=1)
  params = jax.device_get(nn.unbox(config_lib.build_model(ModelSpec.from_dict(m)).init(
      jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)['params']))
  # +-3e38 by row: the features' differences overflow float32 (their sum is 0 after LayerNorm).
  params['head']['kernel'] = np.where(np.arange(48).reshape(16, 3) % 2, 3e38, -3e38).astype(
      np.float32)
  npz = str(tmp_path / 'm.npz')
  vit_jax.save(params, npz)
  np.save(tmp_path / 'images.npy',
          np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
  out = tmp_path / 'x.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'supervised.predict', f'--init=vit_jax:{npz}',
       f'--images={tmp_path / "images.npy"}', f'--output={out}'], cwd=ROOT, capture_output=True,
      text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines()[-1] == (
      f'error: --output {out}: the model gave non-finite logits for 2 of 2 images (first: 0); '
      f'nothing was written')
  assert not out.exists()
