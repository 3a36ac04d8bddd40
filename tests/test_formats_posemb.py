"""Position embeddings other than the learned 1D table, through every format's writer: learned_2d,
sincos_2d and none are written as the table they add at the model's grid, and each format's own
reader (transformers' ViTModel, timm's VisionTransformer, this repository's .npz reader) computes
what our model computes; relative biases and axial attention are still refused."""
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit import config as config_lib, init_spec
from vit.errors import UserError
from vit.formats import registry
from vit.formats.registry import FORMATS
from vit.models.spec import ModelSpec
from vit.testing.timm_import import import_timm_or_skip

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
timm = import_timm_or_skip()

TOL = 1e-5
SIZE = 16  # Pixels per side: a 4x4 grid of 4-pixel patches.


def _model(**kw) -> ModelSpec:
  """A tiny headless encoder (an MPP, MAE or SimMIM backbone's shape)."""
  m = config_lib.model_defaults().to_dict()
  m.update(patches=dict(size=(4, 4)), hidden_size=32, **kw)
  m['transformer'].update(mlp_dim=64, num_heads=4, num_layers=2)
  return ModelSpec.from_dict(m)


def _random_params(m: ModelSpec) -> dict:
  """Parameters of `m` at SIZE, every one random and non-zero (LayerNorm scales near 1), of a
  size that keeps activations of order one."""
  rng = np.random.default_rng(0)
  shapes = init_spec.abstract_params(m, SIZE, 3)
  return jax.tree_util.tree_map_with_path(
      lambda path, s: ((1.0 if 'scale' in jax.tree_util.keystr(path) else 0.0)
                       + 0.3 * rng.standard_normal(s.shape)).astype(np.float32), shapes)


@pytest.fixture(scope='module', params=['learned_2d', 'sincos_2d', 'none'])
def encoder(request):
  """(posemb, model, params, images, every output token of our model on the images)."""
  m = _model(posemb=request.param)
  params = _random_params(m)
  images = np.random.default_rng(1).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
  tokens = np.asarray(config_lib.build_model(m, classifier='unpooled').apply(
      {'params': params}, jnp.asarray(images), train=False))
  if request.param != 'none':  # The embedding matters: without it the outputs move.
    t = {k: v for k, v in params['Transformer'].items() if k != 'posembed_input'}
    moved = config_lib.build_model(_model(posemb='none'), classifier='unpooled').apply(
        {'params': dict(params, Transformer=t)}, jnp.asarray(images), train=False)
    assert np.abs(np.asarray(moved) - tokens).max() > 1000 * TOL
  return request.param, m, params, images, tokens


def _hf(out, images):
  model = transformers.ViTModel.from_pretrained(out, add_pooling_layer=False).eval()
  with torch.no_grad():
    return model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
                 ).last_hidden_state.numpy()


def _timm(out, images):
  from safetensors.torch import load_file
  with open(os.path.join(out, 'config.json')) as f:
    cfg = json.load(f)
  model = timm.create_model(cfg['architecture'], pretrained=False,
                            pretrained_cfg_overlay=cfg['pretrained_cfg'], **cfg['model_args'])
  model.load_state_dict(load_file(os.path.join(out, 'model.safetensors')))
  with torch.no_grad():
    return model.eval().forward_features(
        torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def _vit_jax(out, images):
  """Our own reader of the official .npz, as `--config.init=vit_jax:FILE` reads it."""
  ckpt = init_spec.load(f'vit_jax:{out}')
  assert ckpt.model.posemb == 'learned_1d' and ckpt.image_size == SIZE
  return np.asarray(config_lib.build_model(ckpt.model, classifier='unpooled').apply(
      {'params': ckpt.params}, jnp.asarray(images), train=False))


_READERS = {'hf': _hf, 'timm': _timm, 'vit_jax': _vit_jax}


@pytest.mark.parametrize('fmt', sorted(FORMATS))
def test_a_posemb_without_the_table_is_written_as_it_and_read_with_the_same_outputs(
    encoder, fmt, tmp_path, caplog):
  posemb, m, params, images, ours = encoder
  out = str(tmp_path / ('m.npz' if FORMATS[fmt].SUFFIX else 'out'))
  registry.check_expressible(fmt, params, m)  # What vit.export checks, then writes:
  with caplog.at_level(logging.WARNING):
    FORMATS[fmt].save(params, out, m, image_size=SIZE)
  assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
      f"--format {fmt}: posemb {posemb} is written as the format's learned 1D table " + {
          'learned_2d': '(row and column halves concatenated; exact at grid 4x4; a reader '
                        'fine-tunes each of its 16 patch entries on its own, not row and '
                        'column tables)',
          'sincos_2d': '(exact at grid 4x4; a reader fine-tunes it as learned, and resizing '
                       'interpolates it rather than recomputing sin-cos)',
          'none': 'of zeros (exact at any grid; a reader fine-tunes it as learned, so the '
                  'model gains position embeddings it did not have)'}[posemb]]
  theirs = _READERS[fmt](out, images)
  assert theirs.shape == ours.shape == (2, 17, 32)
  assert np.abs(ours).max() > 0.5  # Outputs of order one, not a comparison of zeros.
  assert np.abs(theirs - ours).max() <= TOL


@pytest.mark.parametrize('fmt', sorted(FORMATS))
@pytest.mark.parametrize('kind', [dict(posemb='relative'),
                                  dict(posemb='sincos_2d', attention='axial')],
                         ids=['relative', 'axial'])
def test_relative_biases_and_axial_attention_are_still_refused_in_one_line(fmt, kind, tmp_path):
  m = _model(**kind)
  params = _random_params(m)
  named = 'posemb relative' if kind['posemb'] == 'relative' else 'axial attention'
  with pytest.raises(UserError) as e:
    registry.check_expressible(fmt, params, m)
  others = ', '.join(f for f in FORMATS if f != fmt)
  assert '\n' not in str(e.value) and named in str(e.value), str(e.value)
  assert str(e.value).startswith(f'--format {fmt}: ')
  assert str(e.value).endswith(f'; no other format ({others}) holds it either')
  with pytest.raises(UserError, match=rf'^--format {fmt}: .*{named}'):
    FORMATS[fmt].save(params, str(tmp_path / 'out'), m, image_size=SIZE)
  assert os.listdir(tmp_path) == []
