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
                             timeout=900)
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


def test_bfloat16_weights_are_checked_too(tmp_path):
  """numpy does not count bfloat16 as floating point: a transformers checkpoint saved in
  bfloat16 with a NaN weight, and a big_vision .npz whose bfloat16 arrays np.savez stored as
  2-byte void with an inf, both loaded silently."""
  model = hf_vit.tiny_classifier(num_hidden_layers=1)
  with torch.no_grad():
    model.classifier.weight[1, 3] = float('nan')
  model.to(torch.bfloat16).save_pretrained(tmp_path / 'bf16')
  path = tmp_path / 'bf16' / 'model.safetensors'
  with pytest.raises(UserError, match=rf'^hf:{path}: tensor classifier.weight has 1 non-finite '
                                      r'values \(NaN or inf\) of 160;'):
    init_spec.load(f'hf:{tmp_path / "bf16"}')
  import ml_dtypes
  kernel = np.ones((4, 4, 3, 8), ml_dtypes.bfloat16)
  kernel[0, 0, 0, :2] = np.inf
  npz = str(tmp_path / 'bv.npz')
  np.savez(npz, **{'params/embedding/kernel': kernel.view(np.dtype('V2'))})
  with pytest.raises(UserError, match=rf'^vit_jax:{npz}: tensor params/embedding/kernel has 2 '
                                      r'non-finite values \(NaN or inf\) of 384;'):
    vit_jax.load(npz)


def test_weights_that_are_not_floating_point_are_refused(tmp_path):
  """A safetensors header that names an integer dtype for a float tensor (the same bytes), and
  an integer array in an .npz, were cast to float32 silently. A big_vision file's optimiser
  state beside its params (integer step counts) is not a weight and still reads."""
  import json
  import struct
  model = hf_vit.tiny_classifier(num_hidden_layers=1)
  model.save_pretrained(tmp_path / 'hf')
  path = tmp_path / 'hf' / 'model.safetensors'
  raw = path.read_bytes()
  size = struct.unpack('<Q', raw[:8])[0]
  header = json.loads(raw[8:8 + size])
  assert header['classifier.bias']['dtype'] == 'F32'
  header['classifier.bias']['dtype'] = 'I32'
  text = json.dumps(header).encode()
  text += b' ' * (-len(text) % 8)
  path.write_bytes(struct.pack('<Q', len(text)) + text + raw[8 + size:])
  with pytest.raises(UserError, match=rf'^hf:{path}: tensor classifier.bias is int32, not '
                                      r'floating point; weights are floating-point numbers'):
    init_spec.load(f'hf:{tmp_path / "hf"}')
  # An integer buffer that a ViT never reads (transformers' `position_ids` of other models) is
  # not a weight: the HF reader leaves it out; the timm reader names it as not a plain ViT's.
  from safetensors.numpy import load_file, save_file
  model.save_pretrained(tmp_path / 'buffer')
  weights = load_file(tmp_path / 'buffer' / 'model.safetensors')
  weights['vit.embeddings.position_ids'] = np.arange(5, dtype=np.int64)[None]
  save_file(weights, tmp_path / 'buffer' / 'model.safetensors', metadata={'format': 'pt'})
  init_spec.load(f'hf:{tmp_path / "buffer"}')
  params = {'embedding/kernel': np.ones((4, 4, 3, 8), np.float32),
            'head/kernel': np.ones((8, 2), np.int64)}
  npz = str(tmp_path / 'int.npz')
  np.savez(npz, **params)
  with pytest.raises(UserError, match=rf'^vit_jax:{npz}: tensor head/kernel is int64, not '
                                      r'floating point'):
    vit_jax.load(npz)
  np.savez(npz, **{f'params/{k}': v for k, v in params.items() if k != 'head/kernel'},
           **{'opt/state/count': np.int32(7)})
  with pytest.raises(UserError, match='no Transformer/ arrays'):  # Past the dtype check.
    vit_jax.load(npz)
