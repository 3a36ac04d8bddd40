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
from vit.testing.timm_import import import_timm, import_timm_or_skip

torch = pytest.importorskip('torch')
timm = import_timm_or_skip()
transformers = pytest.importorskip('transformers')

TOL = 1e-5
IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _tiny_timm(directory, seed=0, **kw):
  """A tiny timm ViT with weights large enough for logits of order one, saved by timm."""
  torch.manual_seed(seed)
  args = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=5)
  overlay = kw.pop('pretrained_cfg_overlay', IMAGENET)
  args.update(kw)
  model = timm.create_model('vit_tiny_patch16_224', pretrained=False,
                            pretrained_cfg_overlay=overlay, **args).eval()
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
  assert size == 16 and ckpt.model.gelu_approximate is False
  assert ckpt.model.pixels.mean == IMAGENET['mean']
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
  assert ckpt.model.num_heads == 3
  images = _uint8()
  assert np.abs(predict.predict(apply_fn, images, 4) - _timm_logits(model, images)).max() <= TOL


def test_an_unstated_mean_and_std_are_timms_default(tmp_path):
  """A config.json whose pretrained_cfg states no mean or std was read as the official
  0.5/0.5; timm reads such a folder with ImageNet's (PretrainedCfg's defaults), as its
  resolve_data_config does without a config.json. Ours follows timm: the same logits."""
  _tiny_timm(tmp_path / 't', embed_dim=192, num_heads=3)
  cfg = json.loads((tmp_path / 't' / 'config.json').read_text())
  del cfg['pretrained_cfg']['mean'], cfg['pretrained_cfg']['std']
  (tmp_path / 't' / 'config.json').write_text(json.dumps(cfg))
  model = timm.create_model(f'local-dir:{tmp_path / "t"}', pretrained=True).eval()
  stated = timm.data.resolve_model_data_config(model)
  assert (stated['mean'], stated['std']) == (timm.data.IMAGENET_DEFAULT_MEAN,
                                            timm.data.IMAGENET_DEFAULT_STD)
  apply_fn, ckpt, _ = predict.load_classifier(f'timm:{tmp_path / "t"}')
  assert (ckpt.model.pixels.mean, ckpt.model.pixels.std) == (stated['mean'], stated['std'])
  images = _uint8()
  assert np.abs(predict.predict(apply_fn, images, 4) - _timm_logits(model, images)).max() <= TOL
  (tmp_path / 't' / 'config.json').unlink()  # timm cannot make a model; its data config:
  bare = timm.data.resolve_data_config({'input_size': (3, 16, 16)})
  pixels = init_spec.load(f'timm:{tmp_path / "t"}').model.pixels
  assert (pixels.mean, pixels.std) == (bare['mean'], bare['std'])
  # A mean stated wrong beside an unstated std: the label names the std as timm's default.
  cfg['pretrained_cfg']['mean'] = [0.5, 0.5]
  (tmp_path / 't' / 'config.json').write_text(json.dumps(cfg))
  with pytest.raises(UserError, match=rf"^timm:{tmp_path / 't'}/config.json: pretrained_cfg "
                                      r"mean/std \(std unstated: timm's ImageNet default\): 2 "
                                      r"mean values for 3-channel images$"):
    init_spec.load(f'timm:{tmp_path / "t"}')


def test_a_greyscale_model_without_mean_and_std_is_read_with_the_official_pixels(tmp_path,
                                                                                 caplog):
  """timm's default is of 3 channels, which a greyscale model cannot take: such a folder was
  refused (naming a config.json it did not have); it reads with the official 0.5/0.5, as it
  did before timm's default was followed, with one warning naming the folder."""
  _tiny_timm(tmp_path / 'grey', embed_dim=192, num_heads=3, in_chans=1)
  cfg = json.loads((tmp_path / 'grey' / 'config.json').read_text())
  del cfg['pretrained_cfg']['mean'], cfg['pretrained_cfg']['std']
  (tmp_path / 'grey' / 'config.json').write_text(json.dumps(cfg))
  for where in (f'{tmp_path / "grey"}/config.json', f'{tmp_path / "grey"} (no config.json)'):
    caplog.clear()
    ckpt = init_spec.load(f'timm:{tmp_path / "grey"}')
    assert ckpt.model.pixels is None  # The official x / 127.5 - 1.
    assert [r.getMessage() for r in caplog.records if r.levelname == 'WARNING'] == [
        f'timm:{where}: timm states no default mean/std for 1-channel images, so 0.5/0.5 (the '
        'official ViT pixels) is used; state mean/std in config.json to choose']
    (tmp_path / 'grey' / 'config.json').unlink(missing_ok=True)


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
  # An integer buffer (a relative_position_index of timm's other models) is named as a weight
  # a plain ViT does not have, not as a weight of a wrong dtype.
  from safetensors.numpy import load_file, save_file
  _tiny_timm(tmp_path / 'buf')
  weights = load_file(tmp_path / 'buf' / 'model.safetensors')
  weights['blocks.0.attn.relative_position_index'] = np.zeros((5, 5), np.int64)
  save_file(weights, tmp_path / 'buf' / 'model.safetensors')
  with pytest.raises(UserError, match=r'buf: weights a plain ViT does not have.*relative_pos'):
    init_spec.load(f'timm:{tmp_path / "buf"}')
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


# The evaluation view a timm checkpoint states: timm's usual crop_pct 0.875 and bicubic filter.
VIEW = dict(IMAGENET, crop_pct=0.875, interpolation='bicubic')


def _timm_eval_inputs(model, images):
  """timm's own eval input for uint8 [H, W, 3] images of any shape: the transform of
  `resolve_model_data_config(model)` (`create_transform`, when torchvision is installed; else
  the same steps written out from torchvision's Resize(int) and CenterCrop on PIL images)."""
  from PIL import Image
  cfg = timm.data.resolve_model_data_config(model)
  try:
    import torchvision  # noqa: F401
  except ImportError:
    pass
  else:
    transform = timm.data.create_transform(**cfg, is_training=False)
    return torch.stack([transform(Image.fromarray(x)) for x in images]).numpy()
  size = cfg['input_size'][1]
  scale = int(size / cfg['crop_pct'])  # math.floor for positive numbers.
  out = []
  for x in images:
    h, w = x.shape[:2]
    new = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)  # (W, H)
    pil = Image.fromarray(x).resize(new, timm.data.transforms.str_to_pil_interp(
        cfg['interpolation']))
    top, left = int(round((new[1] - size) / 2.0)), int(round((new[0] - size) / 2.0))
    crop = np.asarray(pil)[top:top + size, left:left + size].astype(np.float32) / 255
    out.append(((crop - np.asarray(cfg['mean'])) / np.asarray(cfg['std'])).transpose(2, 0, 1))
  return np.stack(out).astype(np.float32)


def _shapes():
  rng = np.random.default_rng(3)
  return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in
          ((23, 30, 3), (40, 17, 3), (16, 16, 3), (57, 57, 3))]


def _timm_from_files(directory):
  """The model as timm builds it from the files: its config.json's pretrained_cfg (what
  `resolve_model_data_config` reads) and model_args, then the weights."""
  from safetensors.torch import load_file
  cfg = json.loads((directory / 'config.json').read_text())
  model = timm.create_model(cfg['architecture'], pretrained=False,
                            pretrained_cfg_overlay=cfg['pretrained_cfg'], **cfg['model_args'])
  model.load_state_dict(load_file(str(directory / 'model.safetensors')))
  return model.eval()


def test_a_stated_crop_pct_and_filter_are_applied_as_timm_applies_them(tmp_path):
  _tiny_timm(tmp_path / 't', pretrained_cfg_overlay=VIEW)
  model = _timm_from_files(tmp_path / 't')
  stated = json.loads((tmp_path / 't' / 'config.json').read_text())['pretrained_cfg']
  assert (stated['crop_pct'], stated['interpolation']) == (0.875, 'bicubic')  # timm wrote them.
  apply_fn, ckpt, size = predict.load_classifier(f'timm:{tmp_path / "t"}')
  assert ckpt.view == dict(crop_pct=0.875, interpolation='bicubic', crop_mode='center')
  images = _shapes()
  ours = predict.prepare_images(images, size, 3, ckpt.view)
  ref = _timm_eval_inputs(model, images)
  from vit.preprocess import input_fn
  ours_input = np.asarray(input_fn(ckpt.model)(ours)).transpose(0, 3, 1, 2)
  assert np.abs(ours_input - ref).max() <= TOL
  with torch.no_grad():
    ref_logits = model(torch.from_numpy(ref)).numpy()
  assert np.abs(predict.predict(apply_fn, ours, 4) - ref_logits).max() <= TOL
  # What ignoring the view would have given: a plain resize, visibly off.
  plain = predict.predict(apply_fn, predict.prepare_images(images, size, 3), 4)
  assert np.abs(plain - ref_logits).max() > 100 * TOL
  # vit.inspect feeds the model the same view.
  from PIL import Image
  from vit.inspect import images as inspect_images
  (tmp_path / 'pictures').mkdir()
  for i, x in enumerate(images):
    Image.fromarray(x).save(tmp_path / 'pictures' / f'{i}.png')
  shown, _ = inspect_images.load(str(tmp_path / 'pictures'), size, 3, 10, ckpt.view)
  np.testing.assert_array_equal(shown, ours)


def test_exports_state_the_view_the_product_uses(tmp_path, capsys):
  _tiny_timm(tmp_path / 't', pretrained_cfg_overlay=VIEW)
  # A view travels with a timm export, and with an hf one as DeiTImageProcessor's resize and
  # centre crop, whose offsets, rounded down, are named in a warning.
  export.export(f'timm:{tmp_path / "t"}', 'timm', str(tmp_path / 'same'))
  assert init_spec.load(f'timm:{tmp_path / "same"}').view == dict(
      crop_pct=0.875, interpolation='bicubic', crop_mode='center')
  capsys.readouterr()
  export.export(f'timm:{tmp_path / "t"}', 'hf', str(tmp_path / 'hf'))
  assert capsys.readouterr().err.strip().splitlines() == [
      "warning: --format hf: transformers centres its crop at offsets rounded down, this "
      "checkpoint's view (crop_pct 0.875, crop_mode center) at rounded ones: on an image whose "
      "margin is 4k + 3 pixels (3, 7, 11, ...), or whose padding is odd, its input is one pixel "
      "off"]
  view = init_spec.load(f'hf:{tmp_path / "hf"}').view
  assert view == dict(crop_pct=16 / 18, interpolation='bicubic', crop_mode='center',
                      crop_offsets='floor')
  from vit.preprocess import input_fn
  images = _shapes()
  processor = transformers.AutoImageProcessor.from_pretrained(str(tmp_path / 'hf'))
  hf_inputs = processor(images=images, return_tensors='np')['pixel_values']
  ckpt = init_spec.load(f'timm:{tmp_path / "t"}')
  ours = np.asarray(input_fn(ckpt.model)(predict.prepare_images(images, 16, 3, view)))
  assert np.abs(ours.transpose(0, 3, 1, 2) - hf_inputs).max() <= TOL
  # Back to timm, the offsets are named the other way round.
  export.export(f'hf:{tmp_path / "hf"}', 'timm', str(tmp_path / 'back'))
  assert capsys.readouterr().err.strip().splitlines() == [
      "warning: --format timm: timm centres its crop at rounded offsets, this checkpoint's view "
      "(from transformers' processor: crop_pct 0.888889, crop_mode center) at offsets rounded "
      "down: on an image whose margin is 4k + 3 pixels (3, 7, 11, ...), or whose padding is odd, "
      "its input is one pixel off"]
  # A checkpoint predicted on a plain resize (an hf folder whose processor states that)
  # exports to timm saying so, and timm's own pipeline then computes exactly our input.
  transformers.ViTImageProcessorPil(
      size={'height': 16, 'width': 16}, image_mean=IMAGENET['mean'],
      image_std=IMAGENET['std']).save_pretrained(tmp_path / 'hf')
  ckpt = init_spec.load(f'hf:{tmp_path / "hf"}')
  assert ckpt.view is None
  export.export(f'hf:{tmp_path / "hf"}', 'timm', str(tmp_path / 'plain'))
  again = _timm_from_files(tmp_path / 'plain')
  assert {k: timm.data.resolve_model_data_config(again)[k] for k in (
      'crop_pct', 'interpolation', 'crop_mode')} == dict(crop_pct=1.0, interpolation='bilinear',
                                                         crop_mode='squash')
  assert init_spec.load(f'timm:{tmp_path / "plain"}').view is None  # Read back: plain.
  if _has_torchvision():  # timm's create_transform needs it.
    to_input = input_fn(ckpt.model)
    ours = np.asarray(to_input(predict.prepare_images(images, ckpt.image_size, 3)))
    assert np.abs(ours.transpose(0, 3, 1, 2) - _timm_eval_inputs(again, images)).max() <= TOL


def _has_torchvision():
  try:
    import torchvision  # noqa: F401
  except ImportError:
    return False
  return True


def test_a_view_that_cannot_be_applied_is_named(tmp_path, capsys):
  _tiny_timm(tmp_path / 't', pretrained_cfg_overlay=dict(VIEW, crop_mode='border'))
  capsys.readouterr()
  assert init_spec.load(f'timm:{tmp_path / "t"}').view is None
  assert capsys.readouterr().err.strip().splitlines() == [
      f"warning: timm:{tmp_path / 't'}/config.json: pretrained_cfg crop_mode='border' is not "
      f"applied; this repository resizes straight to 16x16 bilinearly, so its logits differ "
      f"from timm's evaluation"]
  # A crop_pct that is no number was named as crop_pct=-1.0, a value the file does not hold.
  path = tmp_path / 't' / 'config.json'
  cfg = json.loads(path.read_text())
  cfg['pretrained_cfg'].update(crop_mode='center', crop_pct='x')
  path.write_text(json.dumps(cfg))
  assert init_spec.load(f'timm:{tmp_path / "t"}').view is None
  assert capsys.readouterr().err.strip().splitlines() == [
      f"warning: timm:{tmp_path / 't'}/config.json: pretrained_cfg crop_pct='x' is not "
      f"applied; this repository resizes straight to 16x16 bilinearly, so its logits differ "
      f"from timm's evaluation"]


@pytest.mark.parametrize('key, value, message', [
    ('embed_dim', 64, "model_args.embed_dim=64, but model.safetensors has 32 (cls_token width, "
                      "blocks): is config.json this model's?"),
    ('depth', 4, "model_args.depth=4, but model.safetensors has 2 (cls_token width, blocks): is "
                 "config.json this model's?"),
    ('num_heads', 3, 'model_args.num_heads=3: must be a positive integer that divides the width '
                     '32'),
])
def test_a_config_json_of_another_model_is_refused(tmp_path, key, value, message):
  """timm's create_model refuses such a folder; we read the head count from it, so another
  model's config.json gave 4 heads to a 2-head model without a word (wrong logits)."""
  _tiny_timm(tmp_path / 't')
  path = tmp_path / 't' / 'config.json'
  cfg = json.loads(path.read_text())
  cfg['model_args'][key] = value
  path.write_text(json.dumps(cfg))
  with pytest.raises(UserError) as e:
    init_spec.load(f'timm:{tmp_path / "t"}')
  assert str(e.value) == f'timm:{path}: {message}'


def test_a_timm_folder_given_as_hf_names_timm(tmp_path):
  """It said 'model_type=None, only "vit" is supported', where an hf folder given as timm:
  already named hf:."""
  _tiny_timm(tmp_path / 't')
  with pytest.raises(UserError, match=rf"^hf:{tmp_path / 't'}: a timm folder \(config.json has "
                                      rf"architecture='vit_tiny_patch16_224'\); load it with "
                                      rf"timm:{tmp_path / 't'}$"):
    init_spec.load(f'hf:{tmp_path / "t"}')


def test_a_config_section_that_is_not_an_object_is_one_line(tmp_path):
  """A model_args or pretrained_cfg that is a list (or null) gave an AttributeError traceback
  ("'list' object has no attribute 'get'") in predict, fine-tuning and export. A long value is
  cut with an ellipsis (it was cut without one)."""
  _tiny_timm(tmp_path / 't')
  path = tmp_path / 't' / 'config.json'
  cfg = json.loads(path.read_text())
  for key, value, shown in (('model_args', [1], '[1]'), ('pretrained_cfg', None, 'null'),
                            ('model_args', [1] * 40, json.dumps([1] * 40)[:60] + '…')):
    path.write_text(json.dumps({**cfg, key: value}))
    with pytest.raises(UserError) as e:
      init_spec.load(f'timm:{tmp_path / "t"}')
    assert str(e.value) == (f'timm:{path}: {key}={shown}: must be a JSON object, as '
                            'timm.models.save_for_hf writes it')


@pytest.mark.parametrize('section, key, value, message', [
    ('pretrained_cfg', 'input_size', 16, 'pretrained_cfg.input_size=16; only square inputs '
                                         '[C, S, S] are supported'),
    ('model_args', 'act_layer', ['gelu'], "act_layer=['gelu']; supported: gelu, gelu_tanh"),
    ('pretrained_cfg', 'interpolation', ['bilinear'], 'pretrained_cfg.interpolation=["bilinear"]: '
                                                      'must be a string, as '
                                                      'timm.models.save_for_hf writes it'),
])
def test_a_setting_of_the_wrong_type_is_one_line(tmp_path, section, key, value, message):
  """An int input_size gave "TypeError: object of type 'int' has no len()", a list act_layer or
  interpolation "TypeError: unhashable type: 'list'"."""
  _tiny_timm(tmp_path / 't')
  path = tmp_path / 't' / 'config.json'
  cfg = json.loads(path.read_text())
  cfg[section][key] = value
  path.write_text(json.dumps(cfg))
  with pytest.raises(UserError) as e:
    init_spec.load(f'timm:{tmp_path / "t"}')
  assert str(e.value) == f'timm:{path}: {message}'


def test_an_input_size_off_the_patch_grid_is_one_line(tmp_path, capsys):
  """An input_size that is no multiple of the patch was first warned of as interpolated to
  (18px), then refused: the warning said what never happened."""
  _tiny_timm(tmp_path / 't')
  path = tmp_path / 't' / 'config.json'
  cfg = json.loads(path.read_text())
  cfg['pretrained_cfg']['input_size'] = [3, 18, 18]
  path.write_text(json.dumps(cfg))
  capsys.readouterr()
  with pytest.raises(UserError) as e:
    init_spec.load(f'timm:{tmp_path / "t"}')
  assert str(e.value) == (f'init timm:{tmp_path / "t"}: its input size 18px is not a multiple '
                          'of the patch stride 4')
  assert capsys.readouterr().err == ''
