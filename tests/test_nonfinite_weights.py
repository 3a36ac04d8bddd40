"""Weights with NaN or inf are refused by every reader, in one line naming the file, the
tensor and the count; a JSON output never holds NaN.

The checkpoint is real: transformers saves a ViT in float16 after one weight grew past
float16's largest value (65504), which the cast turns into inf.
"""
import numpy as np
import pytest

from vit import init_spec
from vit.errors import UserError
from vit.formats import vit_jax
from vit.testing import commands, hf_vit

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')


@pytest.fixture(scope='module')
def overflowed(tmp_path_factory):
  directory = tmp_path_factory.mktemp('fp16') / 'vit'
  model = hf_vit.tiny_classifier(num_hidden_layers=1)
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


def _predict(init: str, tmp_path):
  """supervised.predict of two random 16-px images from `init` into tmp_path/x.json: (the
  finished process, the output path), after checking it failed in one line, exit status 2."""
  np.save(tmp_path / 'images.npy',
          np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
  out = tmp_path / 'x.json'
  proc = commands.run_module('supervised.predict', f'--init={init}',
                             f'--images={tmp_path / "images.npy"}', f'--output={out}',
                             timeout=300)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  return proc, out


def test_predict_refuses_in_one_line_and_writes_no_json(overflowed, tmp_path):
  proc, out = _predict(f'hf:{overflowed}', tmp_path)
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
  proc, out = _predict(f'vit_jax:{npz}', tmp_path)
  assert proc.stderr.strip().splitlines()[-1] == (
      f'error: --output {out}: the model gave non-finite logits for 2 of 2 images (first: 0); '
      f'nothing was written')
  assert not out.exists()
