"""vit/formats/timm.py against timm itself: files made by timm, logits equal to timm's model.

timm is installed with --no-deps (requirements-bench.txt; `make test` installs it), imported
through vit/testing/timm_import.py.
"""
import json

import numpy as np
import pytest

from supervised import predict
from vit import export, init_spec
from vit.errors import UserError
from vit.formats import timm as timm_format

torch = pytest.importorskip('torch')
try:
  from vit.testing.timm_import import import_timm
  timm = import_timm()
except ImportError:
  pytest.skip('timm is not installed (make test installs requirements-bench.txt)',
              allow_module_level=True)

TOL = 1e-5
IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _tiny_timm(directory, seed=0, **kw):
  """A tiny timm ViT with weights large enough for logits of order one, saved by timm."""
  torch.manual_seed(seed)
  args = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=5)
  args.update(kw)
  model = timm.create_model('vit_tiny_patch16_224', pretrained=False,
                            pretrained_cfg_overlay=IMAGENET, **args).eval()
  spread = 0.3 * (32 / args['embed_dim']) ** 0.5  # Logits of order one at any width.
  with torch.no_grad():
    for name, p in model.named_parameters():
      scale = 0.2 if 'norm' in name else spread
      p.copy_((1.0 if 'norm' in name and name.endswith('weight') else 0.0)
              + scale * torch.randn_like(p))
  timm.models.save_for_hf(model, str(directory), safe_serialization=True)
  return model


def _uint8(n=4, size=16, seed=1):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _timm_logits(model, images):
  """timm's own eval input: ToTensor (x / 255) then Normalize(mean, std) of its data config."""
  cfg = timm.data.resolve_data_config({}, model=model)
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255)
  x = (x - torch.tensor(cfg['mean'])[:, None, None]) / torch.tensor(cfg['std'])[:, None, None]
  with torch.no_grad():
    return model(x).numpy()


def test_timm_checkpoint_predicts_timms_logits(tmp_path):
  model = _tiny_timm(tmp_path / 't')
  assert json.loads((tmp_path / 't' / 'config.json').read_text())['pretrained_cfg']['mean'] == \
      list(IMAGENET['mean'])
  apply_fn, ckpt, size = predict.load_classifier(f'timm:{tmp_path / "t"}')
  assert size == 16 and ckpt.model['gelu_approximate'] is False
  assert ckpt.model['pixels']['mean'] == IMAGENET['mean']
  images = _uint8()
  ours = predict.predict(apply_fn, images, batch_size=4)
  ref = _timm_logits(model, images)
  assert np.abs(ref).max() > 0.5
  assert np.abs(ours - ref).max() <= TOL


def test_no_embed_class_and_no_config_heads(tmp_path):
  """pos_embed over the patches only (the class token gets none) reads as a zero class row."""
  model = _tiny_timm(tmp_path / 't', no_embed_class=True, embed_dim=192, num_heads=3)
  cfg = json.loads((tmp_path / 't' / 'config.json').read_text())
  del cfg['model_args']  # Hub configs often have none: the width names the head count.
  (tmp_path / 't' / 'config.json').write_text(json.dumps(cfg))
  apply_fn, ckpt, _ = predict.load_classifier(f'timm:{tmp_path / "t"}')
  assert ckpt.model['transformer']['num_heads'] == 3
  images = _uint8()
  assert np.abs(predict.predict(apply_fn, images, 4) - _timm_logits(model, images)).max() <= TOL


def test_export_to_timm_loads_in_timm_with_the_same_logits(tmp_path):
  """A timm checkpoint through our writer (and an HF round trip) comes back to timm unchanged."""
  model = _tiny_timm(tmp_path / 't')
  export.export(f'timm:{tmp_path / "t"}', 'hf', str(tmp_path / 'hf'))
  export.export(f'hf:{tmp_path / "hf"}', 'timm', str(tmp_path / 'back'))
  cfg = json.loads((tmp_path / 'back' / 'config.json').read_text())
  again = timm.create_model(cfg['architecture'], pretrained=False,
                            pretrained_cfg_overlay=cfg['pretrained_cfg'], **cfg['model_args'])
  from safetensors.torch import load_file
  again.load_state_dict(load_file(str(tmp_path / 'back' / 'model.safetensors')))
  images = _uint8()
  assert np.abs(_timm_logits(again.eval(), images) - _timm_logits(model, images)).max() <= TOL


def test_unsupported_timm_models_are_named(tmp_path):
  _tiny_timm(tmp_path / 'ls', init_values=1e-5)  # LayerScale.
  with pytest.raises(UserError, match=r'timm:.*ls: weights a plain ViT does not have.*ls1'):
    init_spec.load(f'timm:{tmp_path / "ls"}')
  _tiny_timm(tmp_path / 'avg', global_pool='avg', class_token=False, fc_norm=False)
  with pytest.raises(UserError, match="global_pool='avg' without a class token"):
    init_spec.load(f'timm:{tmp_path / "avg"}')
  (tmp_path / 'bin').mkdir()
  (tmp_path / 'bin' / 'pytorch_model.bin').write_bytes(b'\x80')
  with pytest.raises(UserError, match='pickled weights are never loaded'):
    init_spec.load(f'timm:{tmp_path / "bin"}')


def test_torchvision_stand_in_is_gone_after_timm_is_imported():
  """Left visible, transformers took the stand-in for torchvision and failed parsing its version
  'N/A' in the next test that loads an image processor (an order-dependent failure)."""
  import importlib.util
  from transformers.utils import import_utils
  assert import_timm() is timm  # A second call, as in the next test module, changes nothing.
  assert importlib.util.find_spec('torchvision') is None
  assert import_utils._is_package_available('torchvision', return_version=True) == (False, 'N/A')
  assert timm.create_model('vit_tiny_patch16_224', img_size=16, patch_size=4, embed_dim=32,
                           depth=1, num_heads=4, num_classes=5).head.out_features == 5
