"""MAE: the loss equals transformers' ViTMAEForPreTraining on the same noise and weights; the
masking is the official shuffle-and-keep; the loss sees masked patches only; a run through the
entry point checkpoints, resumes, fine-tunes (`mae:DIR`) and exports."""
import glob
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.mae import fashion_mnist as mae_config
from mae import objective
from vit import checkpoints, config as config_lib, init_spec
from vit.evaluators import fewshot
from vit.errors import ConfigError, UserError
from vit.testing import commands



def _tiny(image=16, **mae):
  config = mae_config.get_config()
  config.image_size = image
  config.model.hidden_size, config.model.transformer.mlp_dim = 16, 32
  config.model.transformer.num_heads, config.model.transformer.num_layers = 2, 2
  config.mae.decoder.update(hidden_size=8, num_layers=1, num_heads=2, mlp_dim=16)
  config.mae.update(mae)
  return config


@pytest.mark.parametrize('norm_pix_loss', [True, False])
def test_loss_equals_transformers_vit_mae(norm_pix_loss):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from vit.testing import hf_masked_image
  config = _tiny(norm_pix_loss=norm_pix_loss)
  # transformers' ViTMAE: exact GELU, LayerNorm eps 1e-12 (the backbone's keys for both).
  config.model.gelu_approximate, config.model.layer_norm_epsilon = False, 1e-12
  m = config_lib.validate(config)
  objective.check_config(config, m)
  model, spec = objective.build_model(config, m), objective.Spec.from_config(config, m)
  init = objective.init_fn(model, spec, (1, 16, 16, 3))
  # Jitted, the initialisers and the perturbation, then the loss and the model: two compiles,
  # not one per op (eager, they took about 30 s on a loaded machine).
  params = jax.jit(lambda rng: hf_masked_image.perturbed(nn.unbox(init(rng))))(jax.random.key(0))
  rng = np.random.default_rng(0)
  inputs = rng.uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
  inputs[0, :4, :4] = 0.5  # A flat patch: norm_pix_loss's eps decides its target.
  noise = rng.uniform(size=(3, 16)).astype(np.float32)

  @jax.jit
  def ours(params, inputs, noise):
    loss, _ = objective.loss_on(model, spec, params, inputs, noise, train=False)
    return loss, model.apply({'params': params}, inputs, noise, train=False)

  loss, (pred, mask) = ours(params, jnp.asarray(inputs), jnp.asarray(noise))

  hf_config = transformers.ViTMAEConfig(
      image_size=16, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
      num_attention_heads=2, intermediate_size=32, decoder_hidden_size=8,
      decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=16,
      mask_ratio=0.75, norm_pix_loss=norm_pix_loss, hidden_act='gelu', layer_norm_eps=1e-12,
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, qkv_bias=True)
  torch_model = transformers.ViTMAEForPreTraining(hf_config).eval()
  # Our fixed decoder table is the official one, which transformers rebuilds (rotated into
  # the official [w | h] layout) for the pretrained checkpoints.
  from transformers.models.vit_mae import modeling_vit_mae as hf_mae
  official = hf_mae.build_2d_sinusoidal_position_embedding(4, 4, 8, cls_token=True).numpy()
  official = np.concatenate([official[:, 4:], official[:, :4]], axis=1)
  np.testing.assert_allclose(objective.sincos_2d(4, 8), official, atol=1e-6)
  state = hf_masked_image.mae_state(params, objective.sincos_2d(4, 8))
  missing = torch_model.load_state_dict({k: torch.tensor(v) for k, v in state.items()},
                                        strict=True)
  assert not missing.missing_keys and not missing.unexpected_keys
  with torch.no_grad():
    out = torch_model(pixel_values=torch.from_numpy(inputs.transpose(0, 3, 1, 2)),
                      noise=torch.from_numpy(noise))
  np.testing.assert_array_equal(np.asarray(mask), out.mask.numpy().astype(bool))
  np.testing.assert_allclose(np.asarray(pred), out.logits.numpy(), atol=2e-5)
  np.testing.assert_allclose(float(loss), float(out.loss), rtol=2e-6)
  assert float(loss) > 0.1


def test_random_masking_is_the_official_shuffle_and_keep():
  n, keep = 49, objective.num_kept(49, 0.75)
  assert keep == 12  # int(49 * 0.25), as models_mae.py
  noise = jax.random.uniform(jax.random.key(0), (4000, n))
  ids_keep, mask, ids_restore = objective.random_masking(noise, keep)
  mask, ids_keep = np.asarray(mask), np.asarray(ids_keep)
  assert (mask.sum(1) == n - keep).all()
  # The kept ids are the visible positions, the smallest noise first.
  assert (~np.take_along_axis(mask, ids_keep, 1)).all()
  kept_noise = np.take_along_axis(np.asarray(noise), ids_keep, 1)
  assert (np.diff(kept_noise, axis=1) >= 0).all()  # (float32 noise ties now and then)
  assert (kept_noise.max(1) <= np.where(mask, np.asarray(noise), 2).min(1)).all()
  # Every position is masked with probability 37/49 (3 standard errors over 4000 images).
  np.testing.assert_allclose(mask.mean(0), 37 / 49, atol=3 * np.sqrt(0.25 * 0.75 / 4000))
  assert sorted(np.asarray(ids_restore)[0]) == list(range(n))


def test_loss_ignores_visible_patches_and_normalises_targets():
  spec = objective.Spec((4, 4), (7, 7), 0.75, True)
  rng = np.random.default_rng(1)
  inputs = rng.uniform(-1, 1, (2, 28, 28, 3)).astype(np.float32)
  t = np.asarray(objective.targets(spec, jnp.asarray(inputs)))
  assert t.shape == (2, 49, 48)
  np.testing.assert_allclose(t.mean(-1), 0, atol=1e-5)
  np.testing.assert_allclose(t.var(-1, ddof=1), 1, atol=1e-4)  # Unbiased, as torch's var.
  pred = rng.normal(size=t.shape).astype(np.float32)
  mask = rng.uniform(size=(2, 49)) < 0.75
  loss, count = objective.masked_mse(pred, t, mask.astype(np.float32))
  assert float(count) == mask.sum()
  moved = np.where(mask[..., None], pred, pred + 100.0)  # Only the visible patches move.
  np.testing.assert_allclose(objective.masked_mse(moved, t, mask.astype(np.float32))[0], loss)
  expected = ((pred - t) ** 2).mean(-1)[mask].mean()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_encoder_sees_only_the_kept_patches():
  config = _tiny()
  m = config_lib.validate(config)
  backbone = config_lib.build_model(m, num_classes=None, classifier='unpooled')
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  # Jitted, as the trainer runs them: one compile each, not one per op.
  params = jax.jit(backbone.init, static_argnames='train')(jax.random.key(1), x, train=False)
  apply = jax.jit(backbone.apply, static_argnames='train')
  keep = jnp.array([[3, 0, 9], [15, 4, 5]])
  out = apply(params, x, train=False, keep=keep)
  assert out.shape == (2, 4, 16)
  # Visible tokens do not depend on the dropped patches' pixels.
  y = x.at[:, 4:8, 4:8].add(5.0)  # Patch 5 of image 0 (dropped), kept in image 1.
  moved = apply(params, y, train=False, keep=keep)
  np.testing.assert_allclose(moved[0], out[0], atol=1e-6)
  assert np.abs(np.asarray(moved[1] - out[1])).max() > 1e-3


def test_config_errors_name_the_key():
  config = _tiny(mask_ratio=0.99)
  m = config_lib.validate(_tiny())
  with pytest.raises(ConfigError, match=r'config.mae.mask_ratio=0.99: leaves the encoder none'):
    objective.check_config(config, m)
  with pytest.raises(ConfigError, match=r'config.mae.mask_ratio=0.99: leaves the encoder none'):
    config_lib.validate(config)  # The section is checked with the core schema.
  with pytest.raises(ConfigError, match=r'config.mae.mask_ratio=1e-17: masks none of the'):
    config_lib.validate(_tiny(mask_ratio=1e-17))
  config = _tiny()
  config.mae.decoder.num_heads = 3
  with pytest.raises(ConfigError, match=r'mae.decoder.num_heads=3: does not divide'):
    objective.check_config(config, config_lib.validate(config))
  config = _tiny()
  config.model.posemb = 'relative'
  with pytest.raises(ConfigError, match=r'model.posemb'):
    objective.check_config(config, config_lib.validate(config))


def test_a_backbone_the_checkpoint_cannot_describe_is_refused():
  """Issue 27: the encoder is built with a class token whatever model.classifier says, and
  the saved config is what fine-tuning reads, so 'gap' is refused (token and unpooled pass);
  a hybrid's tokens cover the ResNet stride, not the patches the targets are cut into."""
  for classifier in ('token', 'unpooled'):
    config = _tiny()
    config.model.classifier = classifier
    config_lib.validate(config)
  config = _tiny()
  config.model.classifier = 'gap'
  with pytest.raises(ConfigError, match=r"config.model.classifier='gap': MAE pretrains an "
                     'encoder with a class token'):
    config_lib.validate(config)
  config = _tiny(image=32)
  config.model.resnet.num_layers, config.model.patches.size = (1, 1, 1), (1, 1)
  with pytest.raises(ConfigError, match=r'config.model.resnet.num_layers=\(1, 1, 1\): MAE '
                     'predicts the pixels of each model.patches.size patch'):
    config_lib.validate(config)
  config = _tiny()  # A pre-logits layer with no head to feed: neither trained nor saved.
  config.model.representation_size = 16
  with pytest.raises(ConfigError, match=r'config.model.representation_size=16: MAE has no '
                     'classifier head'):
    config_lib.validate(config)


def test_norm_pix_loss_on_patches_of_one_value_is_refused():
  """The unbiased variance of one value is 0/0: every target is NaN, so is every loss."""
  spec = objective.Spec((1, 1), (2, 2), 0.75, norm_pix_loss=True)
  assert np.isnan(np.asarray(objective.targets(spec, jnp.ones((1, 2, 2, 1))))).all()
  config = _tiny()
  config.model.patches.size, config.data.channels = (1, 1), 1
  with pytest.raises(ConfigError, match=r'config.mae.norm_pix_loss=True: normalises each patch '
                     r'by its variance, but a \(1, 1\) patch of 1 channel\(s\) holds one value'):
    config_lib.validate(config)
  config.mae.norm_pix_loss = False
  config_lib.validate(config)
  # Fashion-MNIST at 3 channels: three copies of one value, every target 0 (a loss near 0
  # that trains nothing, as a new user found).
  config.mae.norm_pix_loss, config.data.channels = True, 3
  assert not np.asarray(objective.targets(spec, jnp.ones((1, 2, 2, 3)))).any()
  with pytest.raises(ConfigError, match=r'but a \(1, 1\) patch of 3 copies of one grey channel '
                     r'\(data.source fashion_mnist is greyscale\) holds one value'):
    config_lib.validate(config)
  config.data.source = 'tfds:cifar10'  # Three colours: a variance.
  config_lib.validate(config)


def _run(workdir, *extra):
  return commands.train_tiny('mae', workdir, '--config.mae.decoder.hidden_size=8',
                             '--config.mae.decoder.num_layers=1',
                             '--config.mae.decoder.mlp_dim=16', *extra)


@pytest.fixture(scope='module')
def mae_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('mae') / 'run')
  run = _run(workdir, '--config.total_steps=2')
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'step 2/2' in run.stdout and 'eval step 2: eval/loss' in run.stdout, run.stdout
  return workdir


def test_run_checkpoints_and_resumes(mae_workdir):
  params = checkpoints.restore_params(mae_workdir)
  assert set(params) == {'backbone', 'decoder'}
  assert params['backbone']['Transformer']['posembed_input']['pos_embedding'].shape == (1, 50, 16)
  assert params['decoder']['decoder_pred']['kernel'].shape == (8, 4 * 4 * 3)
  assert checkpoints.saved_config(mae_workdir)['mae']['mask_ratio'] == 0.75
  run = _run(mae_workdir, '--config.total_steps=3')
  assert run.returncode == 0, run.stderr[-3000:]
  assert f'resumed from {mae_workdir} at step 2' in run.stdout
  assert 'step 3/3' in run.stdout


def test_fine_tunes_and_exports_from_the_encoder(mae_workdir, tmp_path):
  from configs.finetune import fashion_mnist as ft_config
  from supervised import finetune
  from vit import export
  ckpt = init_spec.load(f'mae:{mae_workdir}')
  saved = checkpoints.restore_params(mae_workdir)
  assert (ckpt.image_size, ckpt.channels, ckpt.model.hidden_size) == (28, 3, 16)
  assert ckpt.model.classifier == 'token' and 'head' not in ckpt.params
  with pytest.raises(UserError, match=r'not a SimMIM checkpoint.*try mae:'):
    init_spec.load(f'simmim:{mae_workdir}')
  with pytest.raises(UserError, match=r'an MAE checkpoint.*use mae:'):
    init_spec.load(f'supervised:{mae_workdir}')
  # The run or the format written without it, or in capitals, is given back spelled right.
  for spec, fix in [(mae_workdir, f'a run directory: give mae:{mae_workdir}'),
                    (f'MAE:{mae_workdir}', f'lower case: give mae:{mae_workdir}')]:
    with pytest.raises(UserError, match=re.escape(f"init spec {spec!r}: expected FORMAT:PATH "
                                                  'with FORMAT one of mpp, mae, simmim, '
                                                  f'supervised, vit_jax, hf, timm ({fix})')):
      init_spec.load(spec)

  config = ft_config.get_config()
  config.init = f'mae:{mae_workdir}'
  m, ckpt = finetune.prepare(config)
  grid = config_lib.token_grid(config, m)
  target = init_spec.abstract_params(m, config.image_size, 3)
  adapted = init_spec.adapt_params(ckpt.params, target, grid)
  np.testing.assert_array_equal(
      adapted['Transformer']['encoderblock_0']['MlpBlock_3']['Dense_0']['kernel'],
      saved['backbone']['Transformer']['encoderblock_0']['MlpBlock_3']['Dense_0']['kernel'])
  assert adapted['Transformer']['posembed_input']['pos_embedding'].shape == (1, 65, 16)
  assert adapted['head']['kernel'].shape == (16, 10)

  out = str(tmp_path / 'hf')
  exported = export.export(mae_workdir, 'hf', out)
  assert export.notes('hf', exported, out) == [
      f'{out} is a headless encoder without a pooler: load it with '
      f'transformers.ViTModel.from_pretrained({out!r}, add_pooling_layer=False)']
  transformers = pytest.importorskip('transformers')
  torch = pytest.importorskip('torch')
  hf_model = transformers.ViTModel.from_pretrained(out, add_pooling_layer=False).eval()
  images = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 3), dtype=np.uint8)
  ours = fewshot.make_patch_mean_fn(ckpt.model)(ckpt.params, images)
  with torch.no_grad():
    theirs = hf_model(pixel_values=torch.from_numpy(
        (images / 127.5 - 1).astype(np.float32).transpose(0, 3, 1, 2))).last_hidden_state
  np.testing.assert_allclose(np.asarray(ours), theirs[:, 1:].mean(1).numpy(), atol=1e-4)


def test_a_published_format_given_a_run_directory_names_the_spec_that_reads_it(mae_workdir):
  """vit_jax:RUN or hf:RUN said only what the format missed ('no config.json'); the line now
  gives the spec that reads the run, also for a path inside its checkpoints folder."""
  fix = f'a training run directory: give mae:{mae_workdir}'
  for spec, said in [(f'vit_jax:{mae_workdir}', 'a directory, not an .npz file of named '
                      'parameters'),
                     (f'hf:{mae_workdir}', 'no config.json (a Hugging Face model directory holds '
                      'config.json and model.safetensors)'),
                     (f'timm:{mae_workdir}', 'no model.safetensors')]:
    with pytest.raises(UserError) as error:
      init_spec.load(spec)
    assert str(error.value) == f'{spec}: {said}; {fix}'
  inside = f'{mae_workdir}/checkpoints'
  with pytest.raises(UserError, match=re.escape(
      f'; inside the checkpoints folder of the training run {mae_workdir}: give '
      f'mae:{mae_workdir}') + '$'):
    init_spec.load(f'hf:{inside}')


def test_fine_tuning_from_a_damaged_newest_step_says_so_in_one_line(mae_workdir, tmp_path,
                                                                   capsys):
  """A run whose newest step is damaged was read at the previous step with only 'fine-tuning
  from mae:DIR at step 3 of 3', the run's end by its look; one warning now names the run, the
  damaged step and the step used, and the origin line says which step was passed over."""
  import os
  import shutil
  from configs.finetune import fashion_mnist as ft_config
  from supervised import finetune
  run = tmp_path / 'run'
  shutil.copytree(mae_workdir, run)
  steps = run / 'checkpoints'
  newest = max(int(name) for name in os.listdir(steps) if name.isdigit())
  shutil.copytree(steps / str(newest), steps / '9')
  for name in glob.glob(f'{steps}/9/state/ocdbt.process_0/d/*'):
    os.truncate(name, os.path.getsize(name) // 2)
  config = ft_config.get_config()
  config.init = f'mae:{run}'
  capsys.readouterr()
  _, ckpt = finetune.prepare(config)
  assert re.fullmatch(rf'warning: mae:{run}: its newest checkpoint step 9 is damaged \(.+\); '
                      rf'using step {newest}, the newest that reads \(rerun its training '
                      r'command with the same --workdir to save it again\)\n',
                      capsys.readouterr().err)
  assert ckpt.step == newest and init_spec.unfinished(config.init, ckpt) is None  # Said once.
  assert init_spec.origin(config.init, ckpt) == (
      f'mae:{run} at step {newest} of {newest}, not its damaged step 9')


def test_fewshot_cli_reads_the_representation_the_trainer_evaluates(mae_workdir):
  """`python -m vit.evaluators.fewshot --init mae:DIR` and the MAE trainer's few-shot evaluator
  read one representation (the patch mean), so they give one number for one checkpoint."""
  import ml_collections
  saved, params, _ = checkpoints.read_params(mae_workdir, use_ema=True)
  config = ml_collections.ConfigDict(saved)
  trainer = objective.build(config, config_lib.validate(config))
  spec = f'mae:{mae_workdir}'
  ckpt = init_spec.load(spec)
  images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
  cli = fewshot.checkpoint_representation(spec, ckpt.model)(ckpt.params, images)
  np.testing.assert_allclose(cli, trainer.representation(params, images), rtol=1e-6, atol=1e-6)
  # Not the class token's output, which the CLI read before.
  token = fewshot.make_representation_fn(ckpt.model)(ckpt.params, images)
  assert np.abs(np.asarray(cli) - np.asarray(token)).max() > 1e-3


def test_objective_interface_and_plan():
  from vit import objective as objective_lib, plan
  definition = objective_lib.resolve('mae')
  assert definition is objective.DEFINITION and definition.section().mask_ratio == 0.75
  config = _tiny()
  config.batch_size = 8
  m = config_lib.validate(config)
  obj = definition.build(config, m)
  assert isinstance(obj, objective_lib.Objective)
  # Jitted, as the trainer initialises: one compile, not one per op.
  params = nn.unbox(jax.jit(obj.init_params)(jax.random.key(0)))
  batch = {'image': np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), np.uint8)}
  assert obj.predictions(params, batch).shape == (2, 16, 48)
  np.testing.assert_array_equal(obj.predictions(params, batch), obj.predictions(params, batch))
  assert obj.representation(params, batch['image']).shape == (2, 16)
  assert obj.backbone(params) is params['backbone']
  loss, metrics = obj.loss(params, batch, jax.random.key(1), True)
  assert float(metrics['masked_patches']) == 2 * 12  # 16 patches, int(16 * 0.25) = 4 kept.
  # vit.plan reads the objective from the config's section and compiles its step for a slice.
  assert plan.config_objective(mae_config.get_config(), 'c.py') == 'mae'
  config.model.transformer.num_layers = 1  # The objective's step is planned; one block will do.
  report = plan.plan(config, 'v5e:2x2', 'mae')
  assert report['fits'] and report['flops_per_step'] > 0


def test_short_run_learns_beyond_predicting_zero(tmp_path):
  """60 steps on Fashion-MNIST: the held-out loss falls from the initial model's and ends
  below the zero prediction's (the per-patch mean: the whole loss of a flat patch)."""
  from mae import train
  from vit.training import loop, optimizers
  config = mae_config.get_config()
  config.total_steps, config.batch_size, config.eval_batch_size, config.log_every = 60, 32, 128, 60
  config.data.channels = 1
  config.model.hidden_size, config.model.transformer.mlp_dim = 32, 64
  config.model.transformer.num_layers = 2
  config.optimizer.learning_rate, config.optimizer.warmup_steps = 3e-3, 10
  config.mae.eval_examples = 256
  task = train.build_task(config, config_lib.validate(config))
  evaluator = task.evaluators[0]
  # The initial params as the loop makes them (its init program, on its mesh): the loop's init
  # and its last evaluation then reuse the programs compiled here, not compile their own twins.
  build, _ = loop.create_state(task, optimizers.build(config.optimizer, config.total_steps)[0],
                               config, task.mesh)
  with jax.set_mesh(task.mesh):
    params = build().params
  before = evaluator.evaluate(params)['loss']
  pred = params['decoder']['decoder_pred']
  zero = evaluator.evaluate(dict(params, decoder=dict(
      params['decoder'], decoder_pred=jax.tree.map(jnp.zeros_like, pred))))['loss']
  after = evaluator.evaluate(loop.train(config, str(tmp_path), task).state.params)['loss']
  assert after < before - 0.5 and after < zero - 0.01, (before, zero, after)


def test_held_out_loss_scores_eval_examples_rounded_up_to_whole_batches():
  """config.<objective>.eval_examples=5 at batches of 4 scores two whole batches, 8 images (as
  its docs say), each weighted by its valid rows; the split's padding rows are left out."""
  from vit import sharding
  from vit.evaluators import held_out_loss
  pulled = []

  def batches():
    for start in (0, 4, 8):  # Rows 8..11: a third batch, never read.
      pulled.append(start)
      values = np.arange(start, start + 4, dtype=np.float32)
      yield {'image': values[:, None], 'mask': np.array([True, True, True, start < 4])}

  def loss_fn(params, batch, rng, train):
    del params, rng, train
    weights = batch['mask'].astype(jnp.float32)
    count = jnp.sum(weights)
    return jnp.sum(batch['image'][:, 0] * weights) / count, {'masked_patches': count}

  mesh = sharding.make_mesh(config_lib.defaults().mesh, jax.devices()[:1])
  evaluator = held_out_loss.HeldOutLoss(loss_fn, batches, mesh, examples=5, global_batch_size=4)
  result = evaluator.evaluate({})
  assert pulled == [0, 4]
  # Rows 0-6 (row 7 is padding): their mean, not that of the first 5 (2.0).
  assert result['loss'] == pytest.approx(3.0) and result['examples'] == 7
  assert set(result) == set(evaluator.metric_names)  # Stated before training (best_metric).
