"""vit/formats/hf.py against transformers' own pipeline (ViTImageProcessor + model).

The checkpoint under test has the traits that matter: exact GELU, LayerNorm eps 1e-12, a
processor with ImageNet mean and std, and weights in shards (model.safetensors.index.json).
"""
import json

import numpy as np
import pytest

from supervised import predict
from vit import config as config_lib, export, init_spec
from vit.errors import UserError
from vit.evaluators import fewshot
from vit.inspect import attention
from vit.preprocess import input_fn
from vit.testing import hf_vit

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
TOL = 1e-5
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  """A tiny sharded ViTForImageClassification and its processor, saved by transformers."""
  directory = tmp_path_factory.mktemp('hf') / 'vit'
  model = hf_vit.tiny_classifier(num_hidden_layers=2)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_((1.0 if 'layernorm' in name and name.endswith('weight') else 0.0)
              + 0.3 * torch.randn_like(p))
  model.save_pretrained(directory, max_shard_size='20KB')
  processor = transformers.ViTImageProcessor(size={'height': 16, 'width': 16},
                                             image_mean=MEAN, image_std=STD)
  processor.save_pretrained(directory)
  return str(directory), model, processor


def _uint8(n=4, size=16, seed=1):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _pipeline(model, processor, images):
  inputs = processor(images=list(images), return_tensors='pt')
  with torch.no_grad():
    return model(**inputs).logits.numpy(), model.vit(**inputs).last_hidden_state[:, 0].numpy()


def test_sharded_checkpoint_with_processor_predicts_transformers_logits(checkpoint):
  directory, model, processor = checkpoint
  shards = json.load(open(f'{directory}/model.safetensors.index.json'))['weight_map'].values()
  assert len(set(shards)) > 1  # Really sharded: model-0000k-of-0000n.safetensors.
  apply_fn, ckpt, size = predict.load_classifier(f'hf:{directory}')
  assert size == 16 and ckpt.model.pixels.mean == tuple(MEAN)
  images = _uint8()
  ref, _ = _pipeline(model, processor, images)
  ours = predict.predict(apply_fn, images, batch_size=4)
  assert np.abs(ref).max() > 0.5
  assert np.abs(ours - ref).max() <= TOL
  # Without the processor's normalisation the logits are far off: the check is not vacuous.
  plain = ckpt.model.replace(pixels=None)
  off = config_lib.build_model(plain).apply({'params': ckpt.params},
                                             images.astype(np.float32) / 127.5 - 1, train=False)
  assert np.abs(np.asarray(off) - ref).max() > 0.1


def test_fewshot_and_inspect_use_the_processor(checkpoint):
  directory, model, processor = checkpoint
  ckpt = init_spec.load(f'hf:{directory}')
  images = _uint8()
  ref_logits, ref_features = _pipeline(model, processor, images)
  model = ckpt.model
  features = fewshot.make_representation_fn(model.replace(num_classes=None))(ckpt.params, images)
  assert np.abs(np.asarray(features) - ref_features).max() <= TOL
  net = config_lib.build_model(model)
  out, _ = attention.make_attention_fn(net, input_fn(model))(ckpt.params, images)
  assert np.abs(np.asarray(out) - ref_logits).max() <= TOL


def test_export_writes_the_processor_back_and_refuses_a_lossy_npz(checkpoint, tmp_path):
  directory, model, processor = checkpoint
  export.export(f'hf:{directory}', 'hf', str(tmp_path / 'out'))
  again = transformers.ViTForImageClassification.from_pretrained(str(tmp_path / 'out')).eval()
  proc = transformers.ViTImageProcessor.from_pretrained(str(tmp_path / 'out'))
  assert list(proc.image_mean) == MEAN and dict(proc.size) == {'height': 16, 'width': 16}
  # A grey image goes in as predict feeds it, its channel repeated (transformers refused it).
  grey = _uint8(n=1)[..., 0]
  np.testing.assert_array_equal(proc(images=[grey], return_tensors='np')['pixel_values'],
                                proc(images=[np.repeat(grey[..., None], 3, -1)],
                                     return_tensors='np')['pixel_values'])
  images = _uint8()
  assert np.abs(_pipeline(again, proc, images)[0] - _pipeline(model, processor, images)[0]
                ).max() <= TOL
  with pytest.raises(UserError) as e:
    export.export(f'hf:{directory}', 'vit_jax', str(tmp_path / 'm.npz'))
  msg = str(e.value)
  assert 'exact (erf) GELU' in msg and 'LayerNorm epsilon 1e-12' in msg
  assert 'input normalisation' in msg and '\n' not in msg
  assert not (tmp_path / 'm.npz').exists()
  with pytest.raises(UserError, match='LayerNorm epsilon 1e-12 .timm: 1e-6.'):
    export.export(f'hf:{directory}', 'timm', str(tmp_path / 't'))


def test_unsupported_processors_and_shards_are_named(checkpoint, tmp_path):
  import shutil
  directory, _, _ = checkpoint
  bad = tmp_path / 'bad'
  shutil.copytree(directory, bad)
  cfg = json.loads((bad / 'preprocessor_config.json').read_text())
  (bad / 'preprocessor_config.json').write_text(json.dumps(dict(cfg, size={'height': 16,
                                                                           'width': 24})))
  with pytest.raises(UserError, match=r'preprocessor_config.json: size is 16x24; only square'):
    init_spec.load(f'hf:{bad}')
  (bad / 'preprocessor_config.json').write_text(json.dumps(cfg))
  shard = sorted(set(json.load(open(bad / 'model.safetensors.index.json'))['weight_map'].values()))
  (bad / shard[-1]).unlink()
  with pytest.raises(UserError, match=f'lists shard {shard[-1]}, which is missing'):
    init_spec.load(f'hf:{bad}')
  index = bad / 'model.safetensors.index.json'  # A null shard was os.path.join's traceback.
  listed = json.loads(index.read_text())
  name = sorted(listed['weight_map'])[0]
  listed['weight_map'][name] = None
  index.write_text(json.dumps(listed))
  with pytest.raises(UserError) as e:
    init_spec.load(f'hf:{bad}')
  assert str(e.value) == (f'hf:{index}: weight_map gives {name} the shard null, not a file '
                          'name')
  with pytest.raises(UserError, match=rf"^timm:{directory}: a Hugging Face transformers folder "
                                      rf"\(config.json has model_type='vit'\); load it with "
                                      rf"hf:{directory}$"):
    init_spec.load(f'timm:{directory}')


def test_non_square_position_grid_is_named(tmp_path):
  torch.manual_seed(0)
  cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               intermediate_size=64, image_size=(8, 16), patch_size=4)
  transformers.ViTModel(cfg).save_pretrained(tmp_path / 'wide')
  with pytest.raises(UserError, match=r'hf:.*wide: its position embedding has 8 patch entries, '
                                      r'not a square grid'):
    init_spec.load(f'hf:{tmp_path / "wide"}')


def _shapes():
  """Images of several shapes, with margins of 2k + 1 pixels for odd k (where transformers'
  crop offsets, rounded down, and torchvision's, rounded to the nearest, differ)."""
  rng = np.random.default_rng(3)
  return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in
          ((23, 30, 3), (40, 17, 3), (16, 16, 3), (57, 57, 3), (9, 33, 3))]


@pytest.mark.parametrize('size, crop_size, resample', [
    ({'height': 27, 'width': 27}, 16, 3),    # DeiT's layout: both sides, bicubic, centre crop.
    ({'shortest_edge': 19}, 16, 2),          # The short side, as CLIP's and BiT's processors.
    ({'height': 16, 'width': 16}, None, 1),  # A plain resize with another filter (lanczos).
])
def test_a_processor_view_is_applied_as_transformers_applies_it(tmp_path, capsys, size,
                                                                crop_size, resample):
  """A processor that resizes then centre-crops, or resamples with another filter: the view
  predict and inspect feed the model is transformers' own input. It was a warning before."""
  model = hf_vit.tiny_classifier(num_hidden_layers=1)
  model.save_pretrained(tmp_path)
  crop = dict(do_center_crop=True, crop_size={'height': crop_size, 'width': crop_size}) \
      if crop_size else dict(do_center_crop=False)
  processor = transformers.DeiTImageProcessorPil(size=size, resample=resample, image_mean=MEAN,
                                                 image_std=STD, **crop)
  processor.save_pretrained(tmp_path)
  processor = transformers.AutoImageProcessor.from_pretrained(str(tmp_path))
  capsys.readouterr()
  apply_fn, ckpt, side = predict.load_classifier(f'hf:{tmp_path}')
  assert capsys.readouterr().err == '' and side == 16
  assert ckpt.view['crop_offsets'] == 'floor'
  images = _shapes()
  ref = processor(images=images, return_tensors='np')['pixel_values']
  ours = predict.prepare_images(images, side, 3, ckpt.view)
  assert np.abs(np.asarray(input_fn(ckpt.model)(ours)).transpose(0, 3, 1, 2) - ref).max() <= TOL
  with torch.no_grad():
    ref_logits = model(pixel_values=torch.from_numpy(ref)).logits.numpy()
  assert np.abs(predict.predict(apply_fn, ours, 5) - ref_logits).max() <= TOL
  # A plain bilinear resize, as before, is visibly off: the check is not vacuous.
  plain = predict.predict(apply_fn, predict.prepare_images(images, side, 3), 5)
  assert np.abs(plain - ref_logits).max() > 100 * TOL
  # torchvision's rounded offsets would differ too, where the view crops.
  if crop_size:
    rounded = predict.prepare_images(images, side, 3, dict(ckpt.view, crop_offsets='round'))
    assert (rounded != ours).any()
  # The view travels with an hf export: transformers' processor of the export computes it.
  export.export(f'hf:{tmp_path}', 'hf', str(tmp_path / 'again'))
  assert capsys.readouterr().err == ''
  again = transformers.AutoImageProcessor.from_pretrained(str(tmp_path / 'again'))
  np.testing.assert_array_equal(again(images=images, return_tensors='np')['pixel_values'], ref)
  assert init_spec.load(f'hf:{tmp_path / "again"}').view == ckpt.view


def test_a_processor_class_fills_the_keys_its_file_leaves_out(tmp_path):
  """A DeiT file that states only its class: transformers resizes to 256 x 256 bicubically
  and crops 224 (DeiTImageProcessorPil's class attributes), not ViTImageProcessor's plain
  224 resize."""
  from vit.formats import hf
  (tmp_path / 'preprocessor_config.json').write_text(json.dumps(
      dict(image_processor_type='DeiTImageProcessor')))
  _, size, view = hf.read_processor(str(tmp_path), 3)
  assert size == 224 and view == dict(crop_pct=224 / 256, interpolation='bicubic',
                                      crop_mode='squash', crop_offsets='floor')
  processor = transformers.AutoImageProcessor.from_pretrained(str(tmp_path))
  images = _shapes()[:2]
  ref = processor(images=images, return_tensors='np')['pixel_values']
  ours = predict.prepare_images(images, size, 3, view).astype(np.float32) / 127.5 - 1
  assert np.abs(ours.transpose(0, 3, 1, 2) - ref).max() <= TOL


@pytest.mark.parametrize('stated', [
    dict(image_processor_type='DeiTImageProcessorFast', size={'height': 20, 'width': 20},
         crop_size={'height': 16, 'width': 16}),  # The class's crop and filter apply.
    dict(image_processor_type='DeiTImageProcessorPil', size={'height': 19, 'width': 19},
         crop_size={'height': 16, 'width': 16}),
    dict(image_processor_type='ViTImageProcessor', size=18, default_to_square=False,
         do_center_crop=True, crop_size=16),  # An int size is the short side.
    dict(image_processor_type='ViTImageProcessor', size=16, resample='bicubic'),  # Bilinear.
    dict(image_processor_type='ViTImageProcessor', size=[16, 16]),  # (height, width).
])
def test_what_transformers_reads_into_a_processor_file_is_read_the_same(tmp_path, capsys,
                                                                        stated):
  """Found by a new user's checks: class names with transformers' backend suffixes, an int
  size that is not square, a resample that is no filter number."""
  from vit.formats import hf
  (tmp_path / 'preprocessor_config.json').write_text(json.dumps(stated))
  processor = transformers.AutoImageProcessor.from_pretrained(str(tmp_path))
  capsys.readouterr()
  _, size, view = hf.read_processor(str(tmp_path), 3)
  assert size == 16 and capsys.readouterr().err == ''
  images = _shapes()
  ref = processor(images=images, return_tensors='np')['pixel_values']
  ours = predict.prepare_images(images, size, 3, view).astype(np.float32) / 127.5 - 1
  assert np.abs(ours.transpose(0, 3, 1, 2) - ref).max() <= TOL


@pytest.mark.parametrize('key, value', [('size', 0), ('size', -5), ('crop_size', 0),
                                        ('size', {'shortest_edge': 0}), ('size', True),
                                        ('size', {'height': 1.5, 'width': 1.5})])
def test_a_side_that_is_no_positive_number_is_one_line(tmp_path, key, value):
  """They were a ZeroDivisionError or PIL's ValueError, as tracebacks."""
  from vit.formats import hf
  stated = dict(image_processor_type='DeiTImageProcessor', size=20, crop_size=16)
  (tmp_path / 'preprocessor_config.json').write_text(json.dumps(dict(stated, **{key: value})))
  with pytest.raises(UserError, match=rf"^hf:{tmp_path}/preprocessor_config.json: {key}="):
    hf.read_processor(str(tmp_path), 3)


def test_a_centre_crop_without_its_size_is_one_line(tmp_path):
  """transformers refuses it when processing; it was skipped here, silently."""
  from vit.formats import hf
  (tmp_path / 'preprocessor_config.json').write_text(json.dumps(dict(
      image_processor_type='ViTImageProcessor', size=20, do_center_crop=True)))
  with pytest.raises(UserError, match=r'preprocessor_config.json: do_center_crop is true and '
                                      r'crop_size is missing'):
    hf.read_processor(str(tmp_path), 3)


def test_the_crop_offset_warning_only_where_offsets_can_differ():
  """torchvision rounds a crop's offset to the nearest (ties to even), transformers down: a
  margin of 4k + 3 or an odd padding differs; DeiT's 256 -> 224 (margin 32) does not."""
  from vit.data import transforms
  squash = lambda scale: dict(crop_pct=transforms.crop_pct_for(16, scale), crop_mode='squash')
  assert [transforms.offsets_differ(squash(s), 16) for s in (20, 21, 19, 23, 15, 14)] == [
      False, False, True, True, True, False]
  assert transforms.offsets_differ(dict(crop_pct=0.875, crop_mode='center'), 16)
  # The warning names this view's own margin (it said "an odd number of pixels", which 21's
  # margin of 5 is, and which does not differ).
  assert transforms.offsets_note(squash(23), 16) == (
      'its margin of 7 pixels puts the input one pixel off')
  assert transforms.offsets_note(squash(15), 16) == (
      'its padding of 1 pixel puts the input one pixel off')
  rng = np.random.default_rng(0)
  for scale in (20, 21, 19, 23, 15, 14):
    image = rng.integers(0, 256, (scale, scale, 3), dtype=np.uint8)
    crops = [transforms.EvalView(16, crop_offsets=o, **squash(scale)).map({'image': image})
             for o in ('round', 'floor')]
    same = np.array_equal(crops[0]['image'], crops[1]['image'])
    assert same != transforms.offsets_differ(squash(scale), 16), scale


def test_a_processor_view_that_cannot_be_applied_is_named(tmp_path, capsys):
  from vit.formats import hf
  transformers.DeiTImageProcessorPil(size={'shortest_edge': 40, 'longest_edge': 60},
                                     crop_size={'height': 32, 'width': 32}
                                     ).save_pretrained(tmp_path)
  assert hf.read_processor(str(tmp_path), 3)[1:] == (32, None)
  assert capsys.readouterr().err == (
      f"warning: hf:{tmp_path}/preprocessor_config.json: the processor resizes to "
      f"size={{'longest_edge': 60, 'shortest_edge': 40}} then centre-crops 32x32; this "
      f"repository resizes straight to 32x32 bilinearly, so its inputs and logits differ from "
      f"transformers' pipeline\n")
  transformers.ViTImageProcessor(size={'height': 32, 'width': 32}).save_pretrained(tmp_path)
  assert hf.read_processor(str(tmp_path), 3)[1:] == (32, None)
  assert capsys.readouterr().err == ''


def test_a_processor_that_crops_without_resizing_is_named(tmp_path, capsys):
  """do_resize false with a centre crop: transformers crops the image as it comes, this
  repository resizes the whole image; it was said nowhere."""
  from vit.formats import hf
  processor = transformers.DeiTImageProcessorPil(size={'height': 40, 'width': 40},
                                                 crop_size={'height': 32, 'width': 32},
                                                 resample=2, do_resize=False)
  processor.save_pretrained(tmp_path)
  capsys.readouterr()
  assert hf.read_processor(str(tmp_path), 3)[1] == 32
  assert capsys.readouterr().err == (
      f'warning: hf:{tmp_path}/preprocessor_config.json: the processor centre-crops 32x32 out '
      f'of the image as it comes, without resizing; this repository resizes straight to 32x32 '
      f'bilinearly, so its inputs and logits differ from transformers\' pipeline\n')


def test_a_processor_size_other_than_the_models_is_named(tmp_path, capsys):
  """A processor resizing to 32 px for a model whose config and position embeddings are for
  16 px: transformers refuses such inputs (without interpolate_pos_encoding); here the
  position embeddings are interpolated, silently until now."""
  hf_vit.tiny_classifier(num_hidden_layers=1).save_pretrained(tmp_path)
  transformers.ViTImageProcessor(size={'height': 32, 'width': 32}).save_pretrained(tmp_path)
  capsys.readouterr()
  assert init_spec.load(f'hf:{tmp_path}').image_size == 32
  assert capsys.readouterr().err == (
      f'warning: hf:{tmp_path}: its files state 32px inputs and its position embeddings are '
      f'for 16px; they are interpolated to 32px (paper §3.2), where transformers refuses such '
      f'inputs unless told to interpolate its own way, so the logits differ from those it '
      f'computes\n')
  model = transformers.ViTForImageClassification.from_pretrained(str(tmp_path)).eval()
  inputs = transformers.ViTImageProcessor.from_pretrained(str(tmp_path))(
      images=list(_uint8(n=1)), return_tensors='pt')
  with pytest.raises(ValueError, match="doesn't match model"):  # transformers' own refusal.
    model(**inputs)


def test_a_processor_normalisation_that_is_not_a_finite_number_is_refused(tmp_path):
  """Python's JSON reader takes NaN and Infinity: a processor's image_std of Infinity made
  every input 0, silently."""
  hf_vit.tiny_classifier(num_hidden_layers=1).save_pretrained(tmp_path)
  transformers.ViTImageProcessor(size={'height': 16, 'width': 16}).save_pretrained(tmp_path)
  path = tmp_path / 'preprocessor_config.json'
  cfg = json.loads(path.read_text())
  path.write_text(json.dumps(dict(cfg, image_std=[0.5, float('inf'), 0.5])))
  with pytest.raises(UserError, match=rf'^hf:{path}: rescale_factor/image_mean/image_std: a '
                                      r'value that is not finite \(rescale 0.00392'):
    init_spec.load(f'hf:{tmp_path}')
  path.write_text(json.dumps(dict(cfg, rescale_factor='1/255')))  # Was float()'s traceback.
  with pytest.raises(UserError, match=rf'^hf:{path}: rescale_factor/image_mean/image_std: could '
                                      r'not convert string to float'):
    init_spec.load(f'hf:{tmp_path}')


@pytest.mark.parametrize('key, value, message', [
    ('hidden_size', 16, "hidden_size=16, but the weights are 32 wide (embeddings.cls_token): is "
                        "config.json this model's?"),
    ('num_attention_heads', 3, 'num_attention_heads=3 does not divide hidden_size=32'),
    ('num_attention_heads', 0, 'num_attention_heads=0: must be a positive integer'),
    ('hidden_size', None, 'hidden_size=None: must be a positive integer'),
    ('layer_norm_eps', 'abc', "layer_norm_eps='abc': must be a number"),
    ('patch_size', 16, "patch_size=16, but the weights' patches are 4x4 "
                       "(embeddings.patch_embeddings.projection.weight): is config.json this "
                       "model's?"),
    ('id2label', ['a', 'b'], 'id2label is an array, not an object of label numbers to names '
                             '({"0": "cat", ...})'),
])
def test_a_config_json_that_does_not_fit_the_weights_is_one_line(tmp_path, key, value, message):
  """Each was a traceback in the reader (a reshape, a division by zero, a float of text); a
  wrong patch_size was a warning that the position embeddings are for another resolution
  (64px), then a shape error on the patch kernel."""
  torch.manual_seed(0)
  cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               intermediate_size=64, image_size=16, patch_size=4)
  transformers.ViTModel(cfg).save_pretrained(tmp_path / 'm')
  path = tmp_path / 'm' / 'config.json'
  edited = json.loads(path.read_text())
  edited[key] = value
  path.write_text(json.dumps(edited))
  with pytest.raises(UserError) as e:
    init_spec.load(f'hf:{tmp_path / "m"}')
  assert str(e.value) == f'hf:{path}: {message}'


def test_a_classifier_config_over_headless_weights_is_named(tmp_path, capsys):
  """An encoder's model.safetensors beside a classifier's config.json was read as a headless
  encoder without a word (prediction then said only that it has no head)."""
  torch.manual_seed(0)
  cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               intermediate_size=64, image_size=16, patch_size=4, num_labels=3)
  transformers.ViTForImageClassification(cfg).save_pretrained(tmp_path / 'c')
  transformers.ViTModel(cfg, add_pooling_layer=False).save_pretrained(tmp_path / 'e')
  (tmp_path / 'e' / 'config.json').write_text((tmp_path / 'c' / 'config.json').read_text())
  capsys.readouterr()
  assert init_spec.load(f'hf:{tmp_path / "e"}').model.num_classes is None
  assert capsys.readouterr().err.strip().splitlines() == [
      f'warning: hf:{tmp_path / "e"}: config.json names ViTForImageClassification, but the '
      'weights have no classifier (classifier.weight): read as a headless encoder']
