"""Checkpoint formats against the real transformers ViT, and round trips of the official .npz.

The tolerance is 5e-6 on logits of order one: a GELU of the wrong flavour shows as ~1e-5 on
these tiny random models (asserted below), so a looser bound would prove nothing.
"""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit import config as config_lib, init_spec
from vit.formats import hf as hf_format, vit_jax
from vit.formats.tree import flatten
from vit.errors import UserError
from vit.models.spec import ModelSpec

TOL = 5e-6
torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')


def _tiny_hf(directory, hidden_act='gelu', num_labels=5, image_size=16, seed=0):
  """A tiny ViTForImageClassification with weights large enough for logits of order one."""
  torch.manual_seed(seed)
  cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, image_size=image_size, patch_size=4,
                               num_labels=num_labels, hidden_act=hidden_act,
                               id2label={i: f'class{i}' for i in range(num_labels)},
                               label2id={f'class{i}': i for i in range(num_labels)})
  model = transformers.ViTForImageClassification(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'layernorm' in name and name.endswith('weight'):
        p.copy_(1 + 0.2 * torch.randn_like(p))
      else:
        p.copy_(0.3 * torch.randn_like(p))
  model.save_pretrained(directory)
  return model


def _hf_logits(model, images_nhwc):
  with torch.no_grad():
    x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
    return model(pixel_values=x).logits.numpy()


def _our_logits(m, params, images, **overrides):
  net = config_lib.build_model(m, **overrides)
  return np.asarray(net.apply({'params': params}, jnp.asarray(images), train=False))


def _images(n=4, size=16, seed=1):
  return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def test_hf_checkpoint_reproduces_transformers_logits(tmp_path):
  hf = _tiny_hf(tmp_path / 'hf')
  ckpt = init_spec.load(f'hf:{tmp_path / "hf"}')
  assert ckpt.model.gelu_approximate is False
  assert ckpt.model.layer_norm_epsilon == 1e-12
  assert (ckpt.image_size, ckpt.channels, ckpt.model.num_classes) == (16, 3, 5)
  assert ckpt.class_names == [f'class{i}' for i in range(5)]
  x = _images()
  ref = _hf_logits(hf, x)
  assert 0.3 < np.abs(ref).mean() < 10  # Logits of order one, so the bound means something.
  ours = _our_logits(ckpt.model, ckpt.params, x)
  assert np.abs(ours - ref).max() <= TOL
  # The test can tell GELU flavours apart: the tanh GELU misses the bound.
  wrong = ckpt.model.replace(gelu_approximate=True)
  assert np.abs(_our_logits(wrong, ckpt.params, x) - ref).max() > TOL


def test_hf_renamed_in_memory_layout_is_read(tmp_path):
  """transformers >= 5 names modules q_proj/fc1 in memory; such a state dict loads too."""
  from safetensors.numpy import save_file
  hf = _tiny_hf(tmp_path / 'a')
  state = {k: v.numpy() for k, v in hf.state_dict().items()}
  assert any('q_proj' in k for k in state)
  os.makedirs(tmp_path / 'b')
  save_file(state, str(tmp_path / 'b' / 'model.safetensors'))
  (tmp_path / 'b' / 'config.json').write_text((tmp_path / 'a' / 'config.json').read_text())
  a = hf_format.load(str(tmp_path / 'a')).params
  b = hf_format.load(str(tmp_path / 'b')).params
  fa, fb = flatten(a), flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k])


def _random_official_params(m, image_size=16, seed=0):
  net = config_lib.build_model(m)
  import flax.linen as nn
  # Jitted: one compile, not one per op of the initialisers (~4 s on a loaded machine).
  params = jax.jit(lambda rng: nn.unbox(net.init(
      rng, jnp.zeros((1, image_size, image_size, 3)), train=False)['params']))(
          jax.random.key(seed))
  rng = np.random.default_rng(seed)
  # Non-zero head and biases, so every tensor's layout matters.
  return jax.tree.map(lambda p: np.asarray(p) + 0.3 * rng.standard_normal(p.shape).astype(
      np.float32), params)


def _tiny_model(**kw):
  m = config_lib.model_defaults().to_dict()
  m.update(patches=dict(size=(4, 4)), hidden_size=32, num_classes=5)
  m['transformer'].update(mlp_dim=64, num_heads=4, num_layers=2)
  m.update(kw)
  return ModelSpec.from_dict(m)


def test_vit_jax_npz_round_trip_and_inference(tmp_path):
  m = _tiny_model(representation_size=24)
  params = _random_official_params(m)
  path = str(tmp_path / 'tiny.npz')
  vit_jax.save(params, path)
  with np.load(path, allow_pickle=False) as f:
    assert 'Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel' in f.files
    assert f['Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel'].shape == (
        32, 4, 8)
  ckpt = init_spec.load(f'vit_jax:{path}')
  assert ckpt.model.to_dict()['transformer'] == m.to_dict()['transformer']
  assert (ckpt.model.representation_size, ckpt.model.num_classes) == (24, 5)
  assert ckpt.model.gelu_approximate is True and ckpt.image_size == 16
  x = _images()
  np.testing.assert_array_equal(_our_logits(ckpt.model, ckpt.params, x),
                                _our_logits(m, params, x))
  vit_jax.save(ckpt.params, str(tmp_path / 'again.npz'))
  with np.load(path) as a, np.load(str(tmp_path / 'again.npz')) as b:
    assert sorted(a.files) == sorted(b.files)
    assert all(np.array_equal(a[k], b[k]) for k in a.files)


@pytest.mark.parametrize('approximate', [True, False])
def test_save_hf_loads_in_transformers_with_same_logits(tmp_path, approximate):
  m = _tiny_model(gelu_approximate=approximate, layer_norm_epsilon=1e-6)
  params = _random_official_params(m)
  hf_format.save(params, str(tmp_path / 'out'), m, class_names=list('abcde'))
  hf = transformers.ViTForImageClassification.from_pretrained(str(tmp_path / 'out')).eval()
  assert hf.config.id2label[2] == 'c'
  x = _images()
  ref = _hf_logits(hf, x)
  assert np.abs(ref).mean() > 0.3
  assert np.abs(_our_logits(m, params, x) - ref).max() <= TOL
  # And back: HF -> official tree is the identity on the parameters.
  back = hf_format.load(str(tmp_path / 'out')).params
  fa, fb = flatten(params), flatten(back)
  assert sorted(fa) == sorted(fb)
  assert all(np.array_equal(np.asarray(fa[k]), fb[k]) for k in fa)


def test_save_hf_refuses_what_transformers_cannot_express(tmp_path):
  gap = _tiny_model(classifier='gap')
  with pytest.raises(UserError, match='global average pooling'):
    hf_format.save(_random_official_params(gap), str(tmp_path / 'gap'), gap)
  rep = _tiny_model(representation_size=8)
  with pytest.raises(UserError, match='pre_logits'):
    hf_format.save(_random_official_params(rep), str(tmp_path / 'rep'), rep)


def test_the_init_spec_table_of_the_docs_lists_every_format():
  """docs/guides/training.md's table of `--config.init=` specs: one row per init_spec.FORMATS."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, 'docs', 'guides', 'training.md')) as f:
    rows = re.findall(r'^\| `(\w+):', f.read(), re.MULTILINE)
  assert sorted(rows) == sorted(init_spec.FORMATS)


def test_a_published_folder_given_as_a_run_names_the_format_that_reads_it(tmp_path):
  """supervised:DIR of an hf or timm folder was 'DIR: no checkpoint found under
  DIR/checkpoints', naming neither the spec nor the format to use."""
  for kind, cfg in [('hf', dict(model_type='vit')), ('timm', dict(architecture='vit_tiny'))]:
    folder = tmp_path / kind
    folder.mkdir()
    (folder / 'config.json').write_text(json.dumps(cfg))
    library = 'Hugging Face transformers' if kind == 'hf' else 'timm'
    for fmt in ('supervised', 'mpp'):
      with pytest.raises(UserError) as error:
        init_spec.load(f'{fmt}:{folder}')
      assert str(error.value) == (f'{fmt}:{folder}: a {library} folder (config.json), not a '
                                  f'run directory; load it with {kind}:{folder}')
  (tmp_path / 'other').mkdir()  # A config.json of something else: the workdir reader's line.
  (tmp_path / 'other' / 'config.json').write_text('[1, 2]')
  with pytest.raises(UserError, match='no checkpoint found under'):
    init_spec.load(f'supervised:{tmp_path}/other')


def test_bad_specs_give_clear_errors(tmp_path):
  with pytest.raises(UserError, match='FORMAT:PATH'):
    init_spec.load('torch:model.pt')
  with pytest.raises(UserError, match='file not found'):
    init_spec.load(f'vit_jax:{tmp_path}/missing.npz')
  (tmp_path / 'text.npz').write_text('not a zip')
  with pytest.raises(UserError, match='not a readable .npz'):
    init_spec.load(f'vit_jax:{tmp_path}/text.npz')
  np.savez(tmp_path / 'other.npz', weights=np.zeros(3))
  with pytest.raises(UserError, match='not an official ViT checkpoint'):
    init_spec.load(f'vit_jax:{tmp_path}/other.npz')
  # A file where a directory is read, and the other way round, said as such.
  npz = tmp_path / 'other.npz'
  for fmt in ('mpp', 'mae', 'simmim', 'supervised'):
    with pytest.raises(UserError) as error:
      init_spec.load(f'{fmt}:{npz}')
    assert str(error.value) == (f'{fmt}:{npz}: a file, not a run directory (the --workdir of '
                                f'{fmt} training); for an .npz of parameters, vit_jax:{npz}')
  with pytest.raises(UserError, match=rf'^hf:{npz}: a file, not a model directory \(config.json'):
    init_spec.load(f'hf:{npz}')
  with pytest.raises(UserError, match=rf'^timm:{npz}: a file, not a model directory'):
    init_spec.load(f'timm:{npz}')
  with pytest.raises(UserError, match=rf'^vit_jax:{tmp_path}: a directory, not an .npz file'):
    init_spec.load(f'vit_jax:{tmp_path}')
  # A run directory holding no step named the folder only ('DIR: no checkpoint found under
  # DIR/checkpoints'); the spec and what it reads are said now.
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(UserError) as error:
    init_spec.load(f'simmim:{empty}')
  assert str(error.value) == (f'simmim:{empty}: no checkpoint found under {empty}/checkpoints; '
                              'expected a run directory, the --workdir of simmim training, '
                              'holding its saved steps (checkpoints/STEP/)')
  (empty / 'batch_contract.json').write_text('{}')  # A run that stopped before its first save.
  with pytest.raises(UserError, match=rf'^mae:{empty}: no checkpoint found under '
                                      rf'{empty}/checkpoints \(its run stopped before saving a '
                                      r'step\); expected a run directory, the --workdir of mae '):
    init_spec.load(f'mae:{empty}')
  np.savez(tmp_path / 'pickled.npz', embedding=np.array([{'a': 1}], dtype=object))
  with pytest.raises(UserError, match='pickle'):
    vit_jax.load(str(tmp_path / 'pickled.npz'))
  with pytest.raises(UserError, match='directory not found'):
    init_spec.load(f'hf:{tmp_path}/nope')
  os.makedirs(tmp_path / 'torchbin')
  (tmp_path / 'torchbin' / 'config.json').write_text(json.dumps(dict(model_type='vit')))
  (tmp_path / 'torchbin' / 'pytorch_model.bin').write_bytes(b'\x80')
  with pytest.raises(UserError, match='pickled weights are never loaded'):
    init_spec.load(f'hf:{tmp_path}/torchbin')
  (tmp_path / 'torchbin' / 'config.json').write_text(json.dumps(dict(model_type='bert')))
  with pytest.raises(UserError, match='only "vit"'):
    init_spec.load(f'hf:{tmp_path}/torchbin')


def test_shape_conflict_lists_keys_and_shapes(tmp_path):
  m = _tiny_model()
  flat = flatten(_random_official_params(m))
  key = 'Transformer/encoderblock_1/MlpBlock_3/Dense_1/kernel'
  flat[key] = np.zeros((48, 32), np.float32)  # Block 1's MLP is narrower than block 0's.
  np.savez(tmp_path / 'bad.npz', **flat)
  with pytest.raises(UserError) as e:
    init_spec.load(f'vit_jax:{tmp_path}/bad.npz')
  assert f'{key}: checkpoint (48, 32) vs model (64, 32)' in str(e.value)


def test_config_conflicting_with_checkpoint_lists_keys():
  import ml_collections
  cfg = config_lib.model_defaults()
  cfg.hidden_size = 64
  cfg.transformer.num_layers = 2
  cfg.gelu_approximate = False
  with pytest.raises(UserError) as e:
    init_spec.merge_model(cfg, _tiny_model())
  msg = str(e.value)
  assert 'model.hidden_size: config 64 vs checkpoint 32' in msg
  assert 'model.gelu_approximate: config False vs checkpoint True' in msg
  assert 'num_layers' not in msg  # It agrees.
  preset = config_lib.model_defaults()
  preset.name = 'ViT-B/16'
  with pytest.raises(UserError, match=r'model.patches.size: config \(16, 16\) vs checkpoint'):
    init_spec.merge_model(preset, _tiny_model())
  ok = config_lib.model_defaults()
  ok.transformer.dropout_rate = 0.1
  merged = init_spec.merge_model(ok, _tiny_model(gelu_approximate=False))
  assert merged['hidden_size'] == 32 and merged['gelu_approximate'] is False
  assert merged['transformer']['dropout_rate'] == 0.1
  assert isinstance(ml_collections.ConfigDict(merged), ml_collections.ConfigDict)


def test_adapt_params_resizes_posemb_and_zeroes_head():
  m = _tiny_model(representation_size=24)
  params = _random_official_params(m)
  new = _tiny_model(num_classes=3)
  target = init_spec.abstract_params(new, 24, 3)
  out = init_spec.adapt_params(params, target, (6, 6))
  pe = out['Transformer']['posembed_input']['pos_embedding']
  assert pe.shape == (1, 1 + 36, 32)
  old = params['Transformer']['posembed_input']['pos_embedding']
  np.testing.assert_array_equal(pe[:, 0], old[:, 0])  # Class token's embedding kept.
  # Corners of a linearly zoomed grid are the old corners.
  np.testing.assert_allclose(pe[0, 1], old[0, 1], atol=1e-6)
  np.testing.assert_allclose(pe[0, -1], old[0, -1], atol=1e-6)
  assert 'pre_logits' not in out
  assert np.all(out['head']['kernel'] == 0) and out['head']['kernel'].shape == (32, 3)
  np.testing.assert_array_equal(out['embedding']['kernel'], params['embedding']['kernel'])
