"""SimMIM: the loss equals transformers' ViTForMaskedImageModeling on the same mask and weights;
masks are whole blocks at the configured ratio; the loss sees masked pixels only; a run through
the entry point checkpoints, resumes and fine-tunes (`simmim:DIR`)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.simmim import fashion_mnist as simmim_config
from simmim import objective
from vit import checkpoints, config as config_lib, init_spec
from vit.errors import ConfigError, UserError
from vit.testing import commands



def _tiny(image=16):
  config = simmim_config.get_config()
  config.image_size = image
  config.model.hidden_size, config.model.transformer.mlp_dim = 16, 32
  config.model.transformer.num_heads, config.model.transformer.num_layers = 2, 2
  return config


def test_loss_equals_transformers_masked_image_modeling():
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from vit.testing import hf_masked_image
  config = _tiny()
  config.model.gelu_approximate, config.model.layer_norm_epsilon = False, 1e-12
  m = config_lib.validate(config)
  model, spec = objective.build_model(config, m), objective.Spec.from_config(config, m)
  params = nn.unbox(objective.init_fn(model, (1, 16, 16, 3))(jax.random.key(0)))
  params = hf_masked_image.perturbed(params, seed=1)
  rng = np.random.default_rng(0)
  inputs = rng.uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
  mask = np.asarray(objective.sample_mask(spec, jax.random.key(2), 3))
  loss, _ = objective.loss_on(model, spec, params, jnp.asarray(inputs), jnp.asarray(mask),
                              train=False)
  pred = model.apply({'params': params}, inputs, mask, train=False)

  hf_config = transformers.ViTConfig(
      image_size=16, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
      num_attention_heads=2, intermediate_size=32, hidden_act='gelu', layer_norm_eps=1e-12,
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, qkv_bias=True,
      encoder_stride=4)
  torch_model = transformers.ViTForMaskedImageModeling(hf_config).eval()
  state = hf_masked_image.simmim_state(params, patch=4, channels=3)
  result = torch_model.load_state_dict({k: torch.tensor(v) for k, v in state.items()},
                                       strict=True)
  assert not result.missing_keys and not result.unexpected_keys
  with torch.no_grad():
    out = torch_model(pixel_values=torch.from_numpy(inputs.transpose(0, 3, 1, 2)),
                      bool_masked_pos=torch.tensor(mask))
  # Their reconstruction is an image [B, C, H, W]; ours a row of pixels per patch.
  image = np.asarray(pred).reshape(3, 4, 4, 4, 4, 3).transpose(0, 5, 1, 3, 2, 4).reshape(
      3, 3, 16, 16)
  np.testing.assert_allclose(image, out.reconstruction.numpy(), atol=2e-5)
  np.testing.assert_allclose(float(loss), float(out.loss), rtol=2e-6)
  assert float(loss) > 0.1


def test_masks_are_whole_blocks_at_the_ratio():
  # A grid the blocks tile: 8x8 patches in 2x2 blocks, ceil(16 * 0.6) = 10 blocks masked.
  spec = objective.Spec((4, 4), (8, 8), 3, 0.6, 8)
  assert (spec.blocks, spec.block, spec.masked_blocks) == ((4, 4), (2, 2), 10)
  mask = np.asarray(objective.sample_mask(spec, jax.random.key(0), 2000)).reshape(2000, 8, 8)
  assert (mask.sum((1, 2)) == 40).all()
  blocks = mask.reshape(2000, 4, 2, 4, 2)
  assert (blocks == blocks[:, :, :1, :, :1]).all()  # Each block all masked or all visible.
  np.testing.assert_allclose(mask.mean(0), 10 / 16, atol=3 * np.sqrt(0.25 / 2000))
  # The default at 28 px: a 7x7 grid in a 4x4 grid of blocks cut at the edges.
  spec = objective.Spec((4, 4), (7, 7), 3, 0.6, 8)
  mask = np.asarray(objective.sample_mask(spec, jax.random.key(1), 4000)).reshape(4000, 7, 7)
  padded = np.pad(mask, ((0, 0), (0, 1), (0, 1)), mode='edge').reshape(4000, 4, 2, 4, 2)
  assert (padded == padded[:, :, :1, :, :1]).all()
  assert (padded[:, :, 0, :, 0].sum((1, 2)) == 10).all()
  np.testing.assert_allclose(mask.mean(0), 10 / 16, atol=3 * np.sqrt(0.25 / 4000))


def test_loss_ignores_visible_pixels():
  spec = objective.Spec((4, 4), (7, 7), 3, 0.6, 8)
  rng = np.random.default_rng(0)
  pred, target = rng.normal(size=(2, 2, 49, 48)).astype(np.float32)
  mask = rng.uniform(size=(2, 49)) < 0.6
  loss, count = objective.masked_l1(spec, pred, target, mask.astype(np.float32))
  assert float(count) == mask.sum()
  moved = np.where(mask[..., None], pred, pred + 100.0)
  np.testing.assert_allclose(objective.masked_l1(spec, moved, target,
                                                 mask.astype(np.float32))[0], loss)
  np.testing.assert_allclose(float(loss), np.abs(pred - target)[mask].mean(), rtol=1e-5)


def test_mask_token_replaces_masked_patches_only():
  config = _tiny()
  m = config_lib.validate(config)
  model = objective.build_model(config, m)
  params = nn.unbox(objective.init_fn(model, (1, 16, 16, 3))(jax.random.key(0)))
  x = jax.random.normal(jax.random.key(1), (1, 16, 16, 3))
  mask = np.zeros((1, 16), bool)
  mask[0, 5] = True
  out = model.apply({'params': params}, x, mask, train=False)
  # Patch 5's pixels no longer reach the model; patch 6's still do.
  moved = model.apply({'params': params}, x.at[:, 4:8, 4:8].add(5.0), mask, train=False)
  np.testing.assert_allclose(moved, out, atol=1e-6)
  moved = model.apply({'params': params}, x.at[:, 4:8, 8:12].add(5.0), mask, train=False)
  assert np.abs(np.asarray(moved - out)).max() > 1e-3


def test_config_errors_name_the_key():
  config = _tiny()
  config.simmim.mask_patch_size = 6
  with pytest.raises(ConfigError, match=r'config.simmim.mask_patch_size=6: must be a positive '
                     r'multiple of the patch size \(4, 4\)'):
    objective.check_config(config, config_lib.validate(config))


@pytest.mark.parametrize('key,value,message', [
    ('simmim.mask_ratio', 1.0, 'must be in (0, 1)'),
    # 16 px of 16: one block, masked whole.
    ('simmim.mask_patch_size', 16, 'leaves one mask block in the 16-px image'),
    # 2x2 blocks of 8 px: ceil(4 * 0.9) = 4, all of them.
    ('simmim.mask_ratio', 0.9, 'masks all 4 blocks of 8 px'),
    ('model.classifier', 'gap', 'SimMIM pretrains an encoder with a class token'),
])
def test_masks_and_backbones_that_cannot_train_are_refused(key, value, message):
  """Issue 27: each refused in one line naming the key, not trained on images with no
  visible pixel, nor saved as a model the checkpoint's params do not hold."""
  config = _tiny()
  section, name = key.split('.')
  config[section][name] = value
  with pytest.raises(ConfigError) as e:
    config_lib.validate(config)
  assert str(e.value).startswith(f'config.{key}={value!r}: {message}')
  config = _tiny()
  config.simmim.mask_ratio = 0.7  # ceil(4 * 0.7) = 3 of the 4 blocks: one stays visible.
  assert objective.Spec.from_config(config, config_lib.validate(config)).masked_blocks == 3


def test_a_hybrid_backbone_is_refused():
  config = _tiny(image=32)
  config.model.resnet.num_layers, config.model.patches.size = (1, 1, 1), (1, 1)
  with pytest.raises(ConfigError, match=r'config.model.resnet.num_layers=\(1, 1, 1\): SimMIM '
                     'predicts the pixels of each model.patches.size patch'):
    config_lib.validate(config)
  config = _tiny()  # A pre-logits layer with no head to feed: neither trained nor saved.
  config.model.representation_size = 16
  with pytest.raises(ConfigError, match=r'config.model.representation_size=16: SimMIM has no '
                     'classifier head'):
    config_lib.validate(config)


def _run(workdir, *extra):
  return commands.train_tiny('simmim', workdir, *extra)


@pytest.fixture(scope='module')
def simmim_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('simmim') / 'run')
  run = _run(workdir, '--config.total_steps=2')
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'step 2/2' in run.stdout and 'eval step 2: eval/loss' in run.stdout, run.stdout
  return workdir


def test_run_checkpoints_resumes_and_fine_tunes(simmim_workdir):
  from configs.finetune import fashion_mnist as ft_config
  from supervised import finetune
  params = checkpoints.restore_params(simmim_workdir)
  assert set(params) == {'backbone', 'mask_token', 'decoder'}
  assert params['decoder']['kernel'].shape == (16, 4 * 4 * 3)
  run = _run(simmim_workdir, '--config.total_steps=3')
  assert run.returncode == 0, run.stderr[-3000:]
  assert f'resumed from {simmim_workdir} at step 2' in run.stdout and 'step 3/3' in run.stdout

  with pytest.raises(UserError, match=r'not an MAE checkpoint.*try simmim:'):
    init_spec.load(f'mae:{simmim_workdir}')
  config = ft_config.get_config()
  config.init = f'simmim:{simmim_workdir}'
  m, ckpt = finetune.prepare(config)
  assert (ckpt.image_size, ckpt.channels, m.hidden_size) == (28, 3, 16)
  target = init_spec.abstract_params(m, config.image_size, 3)
  adapted = init_spec.adapt_params(ckpt.params, target, config_lib.token_grid(config, m))
  saved = checkpoints.restore_params(simmim_workdir)
  np.testing.assert_array_equal(adapted['embedding']['kernel'],
                                saved['backbone']['embedding']['kernel'])
  assert adapted['Transformer']['posembed_input']['pos_embedding'].shape == (1, 65, 16)


def test_objective_interface_and_plan():
  from vit import objective as objective_lib, plan
  definition = objective_lib.resolve('simmim')
  assert definition is objective.DEFINITION and definition.section().mask_patch_size == 8
  config = _tiny()
  config.batch_size = 8
  m = config_lib.validate(config)
  obj = definition.build(config, m)
  assert isinstance(obj, objective_lib.Objective)
  # Jitted, as the trainer initialises: one compile, not one per op.
  params = nn.unbox(jax.jit(obj.init_params)(jax.random.key(0)))
  batch = {'image': np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), np.uint8)}
  assert obj.predictions(params, batch).shape == (2, 16, 48)
  assert obj.representation(params, batch['image']).shape == (2, 16)
  loss, metrics = obj.loss(params, batch, jax.random.key(1), True)
  assert float(metrics['masked_patches']) == 2 * 3 * 4  # ceil(0.6 * 4) of 4 blocks of 2x2.
  # vit.plan reads the objective from the config's section and compiles its step for a slice.
  assert plan.config_objective(simmim_config.get_config(), 'c.py') == 'simmim'
  config.model.transformer.num_layers = 1  # The objective's step is planned; one block will do.
  report = plan.plan(config, 'v5e:2x2', 'simmim')
  assert report['fits'] and report['flops_per_step'] > 0
  config.simmim.mask_patch_size = 6
  with pytest.raises(ConfigError, match='simmim.mask_patch_size'):
    definition.build(config, m)


def test_short_run_learns_beyond_predicting_the_background(tmp_path):
  """40 steps on Fashion-MNIST: the held-out loss falls from the initial model's and ends
  well below predicting black (-1, the background) everywhere."""
  from simmim import train
  from vit.training import loop
  config = simmim_config.get_config()
  config.total_steps, config.batch_size, config.eval_batch_size, config.log_every = 40, 32, 128, 40
  config.data.channels = 1
  config.model.hidden_size, config.model.transformer.mlp_dim = 32, 64
  config.model.transformer.num_layers = 2
  config.optimizer.learning_rate, config.optimizer.warmup_steps = 3e-3, 10
  config.simmim.eval_examples = 256
  task = train.build_task(config, config_lib.validate(config))
  evaluator = task.evaluators[0]
  params = nn.unbox(task.init_params(jax.random.key(config.seed)))
  before = evaluator.evaluate(params)['loss']
  black = evaluator.evaluate(dict(params, decoder={
      'kernel': np.zeros_like(params['decoder']['kernel']),
      'bias': -np.ones_like(params['decoder']['bias'])}))['loss']
  after = evaluator.evaluate(loop.train(config, str(tmp_path), task).state.params)['loss']
  assert after < before - 0.3 and after < black - 0.1, (before, black, after)


def test_encoder_exports_to_the_official_and_timm_formats(simmim_workdir, tmp_path):
  from vit import export
  saved = checkpoints.restore_params(simmim_workdir)['backbone']
  export.export(simmim_workdir, 'vit_jax', str(tmp_path / 'vit.npz'))
  export.export(simmim_workdir, 'timm', str(tmp_path / 'timm'))
  for spec in (f'vit_jax:{tmp_path / "vit.npz"}', f'timm:{tmp_path / "timm"}'):
    ckpt = init_spec.load(spec)
    assert 'head' not in ckpt.params and ckpt.image_size == 28
    np.testing.assert_allclose(
        ckpt.params['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_1']['query'][
            'kernel'],
        saved['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_1']['query'][
            'kernel'], rtol=1e-6)
