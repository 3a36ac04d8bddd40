"""The study in miniature: every kind of run, the tables and plots, and resuming skips work."""
import gzip
import json
import os

import numpy as np
import pytest

from configs.study import demo, fashion_mnist
from mpp import report, study
from vit import init_spec
from vit.data import fashion_mnist as fmnist_data
from vit.errors import ConfigError, UserError

TRAIN, TEST, HOLDOUT = 2000, 500, 400


def _write_idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, '>i4').tobytes()
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def _small_fashion_mnist(directory):
  """The first 2000 training and 500 test images of Fashion-MNIST, in its own IDX format."""
  os.makedirs(directory, exist_ok=True)
  for split, prefix, n in (('train', 'train', TRAIN), ('test', 't10k', TEST)):
    images, labels = fmnist_data.load(split)
    _write_idx(os.path.join(directory, f'{prefix}-images-idx3-ubyte.gz'), images[:n, ..., 0])
    _write_idx(os.path.join(directory, f'{prefix}-labels-idx1-ubyte.gz'), labels[:n])
  return str(directory)


def _tiny_study(tmp_path):
  config = fashion_mnist.get_config()
  config.holdout = HOLDOUT
  config.quick = True
  config.quick_settings.update(
      pretrain_epochs=0.05, length_epochs=(0.05,), label_fractions=(0.05,),
      length_fractions=(0.05,), finetune_steps=((0.05, 4), (0.1, 4)),
      sweep=dict(learning_rates=(0.01, 0.1)), probe=dict(shots=(2,), draws=2))
  data_dir = _small_fashion_mnist(tmp_path / 'fashion_mnist')
  for c in (config.mpp, config.finetune, config.supervised):
    c.batch_size, c.log_every, c.eval_batch_size = 16, 4, 1000
    c.data.data_dir = data_dir
  for c in (config.mpp, config.supervised):
    c.model.hidden_size = 16
    c.model.transformer.update(mlp_dim=32, num_heads=2, num_layers=2)
  config.mpp.mpp.eval_examples = 64
  config.finetune.optimizer.warmup_steps = 2
  config.results_path = str(tmp_path / 'docs' / 'results.md')
  return config


def test_variants_of_the_full_study():
  config = fashion_mnist.get_config()
  names = [v.name for v in study.variants(config)]
  assert names == ['scratch', 'mpp_mean_color', 'mpp_mean_color_rate15',
                   'mpp_downsampled_color', 'mpp_downsampled_color_rate15', 'mpp_pixels',
                   'mpp_pixels_rate15', 'mpp_mean_color_epochs1', 'mpp_mean_color_epochs3',
                   'mpp_mean_color_epochs30', 'transfer_scratch', 'transfer_supervised',
                   'transfer_mpp_mean_color']
  study.check(config)
  quick = study.settings(dict_config(quick=True))
  assert quick.seeds == (0,) and quick.sweep.learning_rates == (0.03,)
  assert quick.sweep.weight_decays == (0.0,) and not quick.transfer.enabled
  assert [v.name for v in study.variants(demo.get_config())] == ['scratch', 'mpp_mean_color']
  study.check(demo.get_config())


def dict_config(**kw):
  config = fashion_mnist.get_config()
  config.update(kw)
  return config


def test_a_fraction_without_a_step_count_is_a_config_error():
  config = dict_config(label_fractions=(0.01, 0.5))
  with pytest.raises(ConfigError, match=r'config.finetune_steps=.*no step count for label '
                     r'fraction 0.5 \(scratch\)'):
    study.check(config)


def test_epochs_become_steps_over_the_non_held_out_images():
  config = study._with_data(fashion_mnist.get_config().mpp, dict_config(), None, 0)
  assert study.steps_for(config, 1.0) == round(55000 / 128)
  config.data.classes = (0, 1, 2, 3, 4)
  assert study.steps_for(config, 2.0) == round(2 * 27500 / 128) or \
      abs(study.steps_for(config, 2.0) - 2 * 27500 / 128) < 20


def test_tiny_study_writes_the_report_and_resumes(tmp_path, capsys):
  config = _tiny_study(tmp_path)
  workdir = str(tmp_path / 'runs')
  results = study.run_study(config, workdir)
  runs = results['variants']
  assert sorted(runs) == ['mpp_mean_color', 'scratch']
  # The held-out split chose the learning rate; the chosen run's numbers are reported.
  ft = runs['scratch'][0]['finetune']['5%']
  best = max(ft['sweep_holdout'], key=ft['sweep_holdout'].get)
  assert best == f'lr={ft["learning_rate"]:g},wd=0'
  assert ft['holdout/accuracy'] == ft['sweep_holdout'][best]
  assert ft['holdout/examples'] == HOLDOUT and ft['eval/examples'] == TEST
  probe = runs['scratch'][0]['probe']
  assert {'class_token/2shot', 'mean_patch/linear', 'block1_mean_patch/linear'} <= set(probe)
  assert 0.1 < probe['mean_patch/linear'] <= 1.0  # Above chance even for a random init.
  pixels = results['pixels']
  assert pixels['pixels/linear'] > 0.7 and pixels['pixels/2shot'] < pixels['pixels/linear']
  text = open(config.results_path).read()
  assert '| from scratch |' in text and '| raw pixels | - |' in text
  assert '**Quick run**' in text and '**One seed**' in text and '**Partial**' not in text
  assert 'lr=0.01,wd=0: ' in text and '## Transfer' not in text
  for png in ('results_label_fraction.png', 'results_pretraining_length.png'):
    assert os.path.exists(str(tmp_path / 'docs' / png))
  table = report.Table(study.settings(config), study.variants(study.settings(config)), results)
  epochs, means, _ = table.length_curve(0.05)
  assert epochs == [0.0, 0.05]
  np.testing.assert_allclose(means[0], 100 * ft['eval/accuracy'])

  capsys.readouterr()
  # Everything finished: nothing is retrained, also when the workdir is named another way
  # (the fine-tuning configs hold the pretraining path).
  os.symlink(workdir, str(tmp_path / 'link'))
  # A run saved before a config key existed is the same run at that key's default.
  saved_path = os.path.join(workdir, 'scratch', 'seed0', 'finetune_5%', 'lr0.1_wd0',
                            study.RUN_CONFIG_FILE)
  with open(saved_path) as f:
    saved = json.load(f)
  del saved['model']['attention_kernel']
  with open(saved_path, 'w') as f:
    json.dump(saved, f)
  probe_path = os.path.join(workdir, 'scratch', 'seed0', 'probe', study.RUN_CONFIG_FILE)
  with open(probe_path) as f:
    saved = json.load(f)
  del saved['backbone']['model']['pixels']  # Nested in the probe's config.
  with open(probe_path, 'w') as f:
    json.dump(saved, f)
  again = study.run_study(config, os.path.relpath(str(tmp_path / 'link')))
  out = capsys.readouterr().out
  assert 'running in' not in out and 'batch contract' not in out
  assert json.dumps(again, sort_keys=True) == json.dumps(results, sort_keys=True)

  config.quick_settings.finetune_steps = ((0.05, 5), (0.1, 4))  # Another budget: not reused.
  with pytest.raises(UserError, match=r'ran with another config \(differs in total_steps\)'):
    study.run_study(config, workdir)


def test_transfer_pretrains_on_some_classes_and_fine_tunes_on_the_others(tmp_path):
  config = _tiny_study(tmp_path)
  config.quick_settings.update(
      label_fractions=(), sweep=dict(learning_rates=(0.1,)), probe=dict(enabled=False),
      transfer=dict(enabled=True, pretrain_classes=(0, 1), finetune_classes=(2, 3),
                    fractions=(0.1,), supervised_epochs=0.1, mpp_epochs=0.05))
  runs = study.run_study(config, str(tmp_path / 'runs'))['variants']
  assert sorted(runs) == ['transfer_mpp_mean_color', 'transfer_scratch', 'transfer_supervised']
  test_labels = fmnist_data.load('test')[1][:TEST]
  for name, results in runs.items():
    ft = results[0]['finetune']['10%']
    assert ft['eval/examples'] == np.isin(test_labels, (2, 3)).sum(), name  # A 2-way test.
  # Supervised pretraining saw only classes 0 and 1: a 2-way head, tested on their images.
  pre = runs['transfer_supervised'][0]['pretrain']
  assert pre['eval/examples'] == np.isin(test_labels, (0, 1)).sum()
  pre_dir = tmp_path / 'runs' / 'transfer_supervised' / 'seed0' / 'pretrain'
  assert init_spec.load(f'supervised:{pre_dir}').model['num_classes'] == 2
  tuned = init_spec.load(f'supervised:{pre_dir.parent}/finetune_10%/lr0.1_wd0')
  assert tuned.model['num_classes'] == 2 and tuned.class_names == ['Pullover', 'Dress']
  text = open(config.results_path).read()
  assert '## Transfer inside Fashion-MNIST' in text
  assert 'supervised, 0.1 epochs on classes (0, 1)' in text
