"""vit/formats/registry.py and table.py: one contract for every format; tables read what they
write, bitwise, for every parameter of a plain ViT."""
import inspect
import os

import jax
import numpy as np
import pytest

from vit import config as config_lib, init_spec
from vit.errors import UserError
from vit.formats import hf, registry, table, timm, vit_jax
from vit.formats.registry import FORMATS, Format
from vit.formats.tree import flatten, unflatten
from vit.models.spec import ModelSpec


@pytest.mark.parametrize('name', sorted(FORMATS))
def test_every_format_keeps_the_contract(name):
  module = FORMATS[name]
  for function in ('load', 'save', 'check_expressible'):
    want = list(inspect.signature(getattr(Format, function)).parameters.values())[1:]  # self
    have = list(inspect.signature(getattr(module, function)).parameters.values())
    assert [(p.name, p.kind, p.default) for p in have] == [
        (p.name, p.kind, p.default) for p in want], (name, function)
  assert module.SUFFIX in ('.npz', None)


def _random_tree(head: bool) -> dict:
  m = config_lib.model_defaults().to_dict()
  m.update(patches=dict(size=(4, 4)), hidden_size=32, num_classes=5 if head else None)
  m['transformer'].update(mlp_dim=64, num_heads=4, num_layers=2)
  shapes = init_spec.abstract_params(ModelSpec.from_dict(m), 16, 3)
  rng = np.random.default_rng(0)
  return unflatten(flatten(jax.tree.map(
      lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)))


@pytest.mark.parametrize('module', [hf, timm], ids=['hf', 'timm'])
@pytest.mark.parametrize('head', [True, False])
def test_a_table_reads_back_what_it_writes(module, head):
  params = _random_tree(head)
  dims, blocks = table.Dims.of(params), range(table.block_count(params))
  tensors = table.write(module.ROWS, params, blocks, dims)
  assert ('head.weight' in tensors or 'classifier.weight' in tensors) == head
  assert set(tensors) <= table.names(module.ROWS, blocks)
  back = flatten(table.read(module.ROWS, tensors, blocks, dims, missing=str))
  want = flatten(params)
  assert sorted(back) == sorted(want)  # Every parameter of a plain ViT has a row.
  for key, value in want.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
    assert back[key].dtype == value.dtype


def test_a_missing_tensor_is_named_and_a_missing_qkv_bias_is_zero():
  params = _random_tree(head=True)
  dims = table.Dims.of(params)
  tensors = table.write(timm.ROWS, params, range(2), dims)
  no_bias = {k: v for k, v in tensors.items() if not k.endswith('qkv.bias')}  # qkv_bias=False
  attn = table.read(timm.ROWS, no_bias, range(2), dims, missing=str)['Transformer'][
      'encoderblock_1']['MultiHeadDotProductAttention_1']
  for name in ('query', 'key', 'value'):
    assert attn[name]['bias'].shape == (4, 8) and not attn[name]['bias'].any()
  del tensors['blocks.1.mlp.fc2.bias']
  with pytest.raises(UserError, match=r'^lacks blocks\.1\.mlp\.fc2\.bias$'):
    table.read(timm.ROWS, tensors, range(2), dims, missing=lambda n: f'lacks {n}')


@pytest.mark.parametrize('name', sorted(FORMATS))
def test_a_tree_without_learned_1d_position_embeddings_is_refused_in_one_line(name, tmp_path):
  """Without a model (the official defaults assumed), the tree itself tells that its position
  embeddings are not the learned 1D table every format writes, and only the model's config says
  how to write them as one: a one-line refusal naming the missing table, nothing written,
  instead of a KeyError from the writer. With a model, a tree that does not hold its posemb's
  parameters, and a sincos_2d model without the image size that gives its grid, are refused
  too (the writing itself: tests/test_formats_posemb.py)."""
  params = _random_tree(head=True)
  t = params['Transformer']
  del t['posembed_input']  # posemb sincos_2d or none: no position parameters.
  missing = r'\(no Transformer/posembed_input/pos_embedding\)'
  with pytest.raises(UserError, match=rf'^--format {name}: .*posemb sincos_2d or none '
                                      rf'{missing}'):
    FORMATS[name].save(params, str(tmp_path / 'out'))
  t['posembed_input'] = dict(pos_embedding_row=np.zeros((4, 16), np.float32),
                             pos_embedding_col=np.zeros((4, 16), np.float32))
  with pytest.raises(UserError, match=rf'^--format {name}: .*posemb learned_2d {missing}'):
    FORMATS[name].save(params, str(tmp_path / 'out'), None)
  del t['posembed_input']
  with pytest.raises(UserError, match=rf'^--format {name}: .*posemb learned_2d \(but the '
                                      r'parameters are of sincos_2d or none\)'):
    FORMATS[name].save(params, str(tmp_path / 'out'), _model(posemb='learned_2d'))
  with pytest.raises(UserError, match=rf'^--format {name}: posemb sincos_2d has no parameters '
                                      r'to give the patch grid; the image size the model runs '
                                      r'at is needed to write its table$'):
    FORMATS[name].save(params, str(tmp_path / 'out'), _model(posemb='sincos_2d'))
  assert os.listdir(tmp_path) == []


def test_timm_names_a_hybrids_stem_and_the_format_that_holds_it():
  params = _random_tree(head=True)
  m = config_lib.model_defaults().to_dict()
  m.update(patches=dict(size=(1, 1)), hidden_size=32, num_classes=5, layer_norm_epsilon=1e-6,
           resnet=dict(num_layers=(1,), width_factor=1.0))
  m['transformer'].update(mlp_dim=64, num_heads=4, num_layers=2)
  with pytest.raises(UserError, match=r"^--format timm: timm's VisionTransformer has no ResNet "
                                      r'stem \(hybrid R\+ViT\); export with --format vit_jax$'):
    registry.check_expressible('timm', params, ModelSpec.from_dict(m))
  m['gelu_approximate'] = False  # Nor can the .npz hold this one.
  with pytest.raises(UserError, match=r'^--format hf: hybrid R\+ViT models have no transformers '
                                      r'ViT equivalent; no other format \(vit_jax, timm\) '
                                      r'holds it either$'):
    registry.check_expressible('hf', params, ModelSpec.from_dict(m))


def _model(**kw) -> ModelSpec:
  m = config_lib.model_defaults().to_dict()
  m.update(patches=dict(size=(4, 4)), hidden_size=32, num_classes=5, **kw)
  m['transformer'].update(mlp_dim=64, num_heads=4, num_layers=2)
  return ModelSpec.from_dict(m)


def test_a_vit_jax_refusal_suggests_only_the_formats_that_hold_the_model():
  """The .npz refusal suggested --format hf whatever the model: for a pooled (gap) model hf
  refuses too. Each suggestion is a format whose own check accepts the model, or none."""
  params = _random_tree(head=True)
  exact = _model(gelu_approximate=False)
  vit_jax.check_expressible(params, _model())  # The official ViT: every format holds it.
  for fmt in FORMATS.values():
    fmt.check_expressible(params, _model())
  with pytest.raises(UserError, match=r'^--format vit_jax: the .npz layout cannot hold exact '
                                      r'\(erf\) GELU .*, so the logits would change; export '
                                      r'with --format hf or timm$'):
    registry.check_expressible('vit_jax', params, exact)
  pooled = {k: v for k, v in params.items() if k != 'cls'}  # classifier='gap': no class token.
  with pytest.raises(UserError, match=r'^--format vit_jax: .*exact \(erf\) GELU.*; no other '
                                      r'format \(hf, timm\) holds it either$'):
    registry.check_expressible('vit_jax', pooled, _model(gelu_approximate=False,
                                                          classifier='gap'))
  # A format checked alone names only what it cannot hold.
  with pytest.raises(UserError, match=r'so the logits would change$'):
    vit_jax.check_expressible(params, exact)
  with pytest.raises(UserError, match=r'\(pre_logits: a model fine-tuned without '
                                      r'model.representation_size has none\); export with '
                                      r'--format vit_jax$'):
    registry.check_expressible('hf', dict(params, pre_logits={}), _model())
