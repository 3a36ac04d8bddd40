"""The Objective interface: both objectives implement it, equal to the functions they wrap."""
import dataclasses
import importlib
import sys

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from configs.mpp import fashion_mnist as mpp_config
from configs.supervised import fashion_mnist as sup_config
from mpp import objective as mpp_objective
from supervised import objective as sup_objective
from vit import config as config_lib, objective as objective_lib, sharding
from vit.errors import ConfigError, UserError
from vit.evaluators import fewshot
from vit.testing import steps


def _tiny(config):
  config.model.hidden_size, config.model.transformer.mlp_dim = 16, 32
  config.model.transformer.update(num_heads=2, num_layers=1)
  return config


def _batch(channels=3, n=4, size=28):
  rng = np.random.default_rng(0)
  return {'image': rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8),
          'label': rng.integers(0, 10, (n,), dtype=np.int32)}


@pytest.mark.parametrize('name,module', [
    ('mpp', mpp_objective), ('supervised', sup_objective),
    ('mpp.objective', mpp_objective), ('supervised.objective:DEFINITION', sup_objective)])
def test_resolve_finds_the_package_definition(name, module):
  assert objective_lib.resolve(name) is module.DEFINITION


def test_resolve_refuses_a_name_without_definition():
  with pytest.raises(ValueError, match=r"^objective 'vit': no Definition at "
                                       r'vit.objective.DEFINITION or vit.DEFINITION; the '
                                       r'objectives of this checkout: mae, mpp, simmim, '
                                       r'supervised$'):
    objective_lib.resolve('vit')
  with pytest.raises(objective_lib.UnknownObjectiveError, match='no Definition') as e:
    objective_lib.resolve('no_such_package')
  assert isinstance(e.value, UserError)  # One line at the command line.


def _package(root, name, objective_source):
  (root / name).mkdir()
  (root / name / '__init__.py').write_text('')
  (root / name / 'objective.py').write_text(objective_source)


def test_an_objective_whose_dependency_is_missing_is_not_an_unknown_one(tmp_path, monkeypatch):
  """The objective's module exists but imports a module that does not: one line naming it,
  never taken for 'no such objective' (a config section of that name is not called an unknown
  key); an error of the objective's own code is raised as it is."""
  _package(tmp_path, 'needy_objective', 'import no_such_dependency_xyz\n')
  _package(tmp_path, 'buggy_objective', 'DEFINITION = 1 / 0\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  for name in ('needy_objective', 'needy_objective.objective'):
    with pytest.raises(objective_lib.ObjectiveImportError) as e:
      objective_lib.resolve(name)
    assert str(e.value) == (f"objective '{name}' failed to import: needy_objective.objective "
                            f"needs module 'no_such_dependency_xyz', which is not found")
    assert not isinstance(e.value, ValueError)
  config = config_lib.defaults()
  with config.unlocked():
    config.needy_objective = ml_collections.ConfigDict({'rate': 0.5})
  with pytest.raises(objective_lib.ObjectiveImportError, match='no_such_dependency_xyz'):
    config_lib.sections(config)
  with pytest.raises(ZeroDivisionError):
    objective_lib.resolve('buggy_objective')
  for module in ('needy_objective', 'buggy_objective'):
    monkeypatch.delitem(sys.modules, module, raising=False)


def test_mpp_objective_is_the_trainers_model_and_loss():
  config = _tiny(mpp_config.get_config())
  m = config_lib.validate(config)
  obj = objective_lib.resolve('mpp').build(config, m)
  assert isinstance(obj, objective_lib.Objective)
  params = nn.unbox(obj.init_params(jax.random.key(0)))
  assert set(params) == {'backbone', 'mask_embedding', 'head'}
  batch, rng = _batch(), jax.random.key(3)
  reference = mpp_objective.make_loss_fn(mpp_objective.build_model(config, m),
                                         mpp_objective.Spec.from_config(config, m))
  loss, metrics = obj.loss(params, batch, rng, True)
  ref_loss, ref_metrics = reference(params, batch, rng, True)
  assert loss == ref_loss and metrics == ref_metrics  # Bitwise: the same program.
  assert obj.predictions(params, batch).shape == (4, 49, 512)  # 7x7 patches, 512 colours.
  features = obj.representation(params, batch['image'])
  np.testing.assert_array_equal(
      features, fewshot.make_patch_mean_fn(m)(params['backbone'], batch['image']))
  assert features.shape == (4, 16) and features.dtype == np.float32
  assert obj.backbone(params) is params['backbone']


def test_classifier_is_the_trainers_model_and_loss():
  config = _tiny(sup_config.get_config())
  m = config_lib.validate(config)
  obj = objective_lib.resolve('supervised').build(config, m)
  assert isinstance(obj, objective_lib.Objective)
  params = nn.unbox(obj.init_params(jax.random.key(0)))
  batch, rng = _batch(), jax.random.key(3)
  model = config_lib.build_model(m)
  loss, metrics = obj.loss(params, batch, rng, False)
  ref_loss, ref_metrics = sup_objective.make_loss_fn(model)(params, batch, rng, False)
  assert loss == ref_loss and metrics == ref_metrics
  logits = obj.predictions(params, batch)
  np.testing.assert_array_equal(logits, sup_objective.make_logits_fn(model)(params, batch))
  assert logits.shape == (4, 10) and logits.dtype == np.float32
  features = obj.representation(params, batch['image'])
  np.testing.assert_array_equal(features,
                                fewshot.make_representation_fn(m)(params, batch['image']))
  assert features.shape == (4, 16)
  assert 'head' in params and 'head' not in obj.backbone(params)


@pytest.mark.parametrize('package', ['mpp', 'supervised', 'mae', 'simmim'])
def test_every_loss_leaves_out_the_padding_rows_of_an_evaluation_batch(package):
  """The contract's loss counts rows whose batch['mask'] is False for nothing: MAE and SimMIM
  did, MPP and the classifier averaged the padding of a last partial batch in."""
  config = _tiny(importlib.import_module(f'configs.{package}.fashion_mnist').get_config())
  if package == 'mpp':  # Replacements from the batch would draw on the padding rows' pixels.
    config.mpp.random_source = 'image'
  m = config_lib.validate(config)
  obj = objective_lib.resolve(package).build(config, m)
  params = nn.unbox(obj.init_params(jax.random.key(0)))
  leaves, tree = jax.tree.flatten(params)  # Heads start at zero: every loss would be log(C).
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = tree.unflatten([p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  batch = {**_batch(), 'mask': np.array([True, True, False, False])}
  other = _batch(n=4)
  other['image'] = other['image'][::-1].copy()  # Other pixels and labels in the padding rows.
  other['label'] = (other['label'][::-1] + 1) % 10
  padded_otherwise = {'image': np.concatenate([batch['image'][:2], other['image'][2:]]),
                      'label': np.concatenate([batch['label'][:2], other['label'][2:]]),
                      'mask': batch['mask']}
  rng = jax.random.key(5)
  loss, metrics = obj.loss(params, batch, rng, False)
  again, again_metrics = obj.loss(params, padded_otherwise, rng, False)
  np.testing.assert_allclose(again, loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), again_metrics,
               metrics)
  unmasked, _ = obj.loss(params, {k: v for k, v in padded_otherwise.items() if k != 'mask'},
                         rng, False)
  assert abs(float(unmasked) - float(loss)) > 1e-4  # The padding did change the plain mean.


@pytest.mark.parametrize('package', ['mae', 'simmim'])
def test_masked_patches_is_the_whole_steps_under_accumulation(package):
  """With optimizer.accumulation_steps=2 the step's `masked_patches` counts both micro-batches'
  patches (it was one micro-batch's: the mean of the two)."""
  config = _tiny(importlib.import_module(f'configs.{package}.fashion_mnist').get_config())
  # At 28 px SimMIM's 8-px mask blocks are cut at the image's edges (blocks of 4, 2 or 1
  # patches), so its count varies with the blocks drawn. At 16 px they tile the 4x4 patches
  # whole, and both objectives mask exactly mask_ratio of every image's patches: MAE keeps
  # int(16 * 0.25) = 4, SimMIM masks ceil(4 * 0.75) = 3 of its 4 blocks (as its own 0.6 does),
  # so the expected count is the config's arithmetic, not a count of one draw.
  config.image_size = 16
  config[package].mask_ratio = 0.75
  if package == 'mae':  # Its configured decoder (2 blocks, 32 wide) would only add compiling.
    config.mae.decoder.update(hidden_size=8, num_layers=1, num_heads=2, mlp_dim=16)
  m = config_lib.validate(config)
  obj = objective_lib.resolve(package).build(config, m)
  batch = {'image': _batch(n=4, size=16)['image']}
  metrics = steps.one_step_metrics(obj, batch, accumulation_steps=2)
  rows, cols = config_lib.token_grid(config, m)
  masked_per_image = config[package].mask_ratio * rows * cols  # 12.0 of 16, exactly.
  assert int(metrics['masked_patches']) == len(batch['image']) * masked_per_image


def test_classifier_needs_classes():
  config = _tiny(sup_config.get_config())
  config.model.num_classes = None
  m = config_lib.validate(config)
  with pytest.raises(ConfigError, match='config.model.num_classes=None: must be set'):
    sup_objective.build(config, m)


def test_classifier_refuses_an_unpooled_model():
  """'unpooled' passes validation (the pretraining objectives' encoders use it), but a
  classifier needs one pooled token per image: a traceback in the loss before."""
  config = _tiny(sup_config.get_config())
  config.model.classifier = 'unpooled'
  m = config_lib.validate(config)
  with pytest.raises(ConfigError, match="config.model.classifier='unpooled': has no pooled"):
    sup_objective.build(config, m)


def test_objectives_are_frozen():
  config = _tiny(sup_config.get_config())
  obj = sup_objective.build(config, config_lib.validate(config))
  with pytest.raises(dataclasses.FrozenInstanceError):
    obj.model = None


@pytest.mark.parametrize('package', ['mpp', 'supervised', 'mae', 'simmim'])
def test_each_trainer_builds_one_mesh_and_trains_on_it(package, monkeypatch, tmp_path):
  """The evaluators' mesh is the task's, so the loop builds none of its own (issue 25)."""
  built, make_mesh = [], sharding.make_mesh
  monkeypatch.setattr(sharding, 'make_mesh', lambda *a, **k: built.append(make_mesh(*a, **k))
                      or built[-1])
  config = _tiny(importlib.import_module(f'configs.{package}.fashion_mnist').get_config())
  config.fewshot.enabled = True  # Its evaluator takes the mesh too.
  m = config_lib.validate(config)
  train = importlib.import_module(f'{package}.train')
  task = train.build_task(config, m, str(tmp_path)) if package == 'mpp' else (
      train.build_task(config, m))
  assert len(built) == 1 and task.mesh is built[0]


@pytest.mark.parametrize('package', ['mpp', 'supervised', 'mae', 'simmim'])
def test_each_trainer_opens_its_evaluation_split_before_training(package, tmp_path):
  """A wrong data.eval_split was told at the first evaluation, after every step had run (mae,
  simmim, supervised): building the task now names it."""
  config = _tiny(importlib.import_module(f'configs.{package}.fashion_mnist').get_config())
  config.data.eval_split = 'tset'
  m = config_lib.validate(config)
  train = importlib.import_module(f'{package}.train')
  with pytest.raises(ConfigError, match="config.data.eval_split='tset': not a split of "
                                        'fashion_mnist'):
    train.build_task(config, m, str(tmp_path)) if package == 'mpp' else (
        train.build_task(config, m))


def _notes_of_building(package, config, tmp_path, caplog, logger: str) -> list[str]:
  """The INFO lines `logger` logs while `package`'s trainer builds its task for `config`."""
  import logging
  m = config_lib.validate(config)
  train = importlib.import_module(f'{package}.train')
  caplog.clear()
  with caplog.at_level(logging.INFO, logger=logger):
    train.build_task(config, m, str(tmp_path)) if package == 'mpp' else (
        train.build_task(config, m))
  return [r.getMessage() for r in caplog.records if r.name == logger]


@pytest.mark.parametrize('package', ['mpp', 'mae', 'simmim'])
def test_more_eval_examples_than_the_split_holds_is_noted_before_training(package, tmp_path,
                                                                          caplog):
  """<objective>.eval_examples=20000 on the 10,000 test images scored all 10,000 with no word
  of why the metric's `examples` said 10000; building the task now notes it, once. As many as
  the split holds, no note."""
  for asked, notes in ((20000, [f"note: {package}.eval_examples=20000 is more than the 10,000 "
                                "images of data.eval_split 'test': all 10,000 are scored"]),
                       (10000, [])):
    config = _tiny(importlib.import_module(f'configs.{package}.fashion_mnist').get_config())
    config[package].eval_examples = asked
    assert _notes_of_building(package, config, tmp_path, caplog, 'vit.data.pipeline') == notes


@pytest.mark.parametrize('package', ['mpp', 'mae', 'simmim'])
def test_a_trainer_opens_its_evaluation_split_once(package, tmp_path, caplog, monkeypatch):
  """mpp.train opened data.eval_split three times while building its task (the evaluator's
  batches, the eval_examples note, the image grids); each trainer now opens it once and its
  evaluator reads that source."""
  from vit.data import pipeline
  opened = []
  make_source = pipeline.make_source
  monkeypatch.setattr(pipeline, 'make_source',
                      lambda config, split: opened.append(split) or make_source(config, split))
  config = _tiny(importlib.import_module(f'configs.{package}.fashion_mnist').get_config())
  _notes_of_building(package, config, tmp_path, caplog, 'vit.data.pipeline')
  assert opened.count('test') == 1, opened


@pytest.mark.parametrize('package', ['mpp', 'mae', 'simmim'])
def test_a_classifier_size_given_to_a_pretraining_trainer_is_noted(package, tmp_path, caplog):
  """--config.model.num_classes=10 on mpp/mae/simmim.train was dropped without a word (the
  backbone is built headless); building the task notes it. Unset (their configs), no note."""
  for classes, notes in ((10, [f'note: model.num_classes=10 is not used: {package}.train '
                               'pretrains a backbone without a classification head (fine-tune '
                               'it with supervised.finetune for one)']),
                         (None, [])):
    config = _tiny(importlib.import_module(f'configs.{package}.fashion_mnist').get_config())
    config.model.num_classes = classes
    assert _notes_of_building(package, config, tmp_path, caplog, 'vit.config') == notes
