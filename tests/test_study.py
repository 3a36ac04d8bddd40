"""The study in miniature: every kind of run, the table and plot, and resuming skips work."""
import json
import os

import numpy as np
import pytest

from configs.study import demo, fashion_mnist
from mpp import report, study
from vit.errors import UserError


def _tiny_study(tmp_path):
  config = fashion_mnist.get_config()
  config.quick = True
  config.quick_settings.update(seeds=(0,), pretrain_steps=8, length_sweep=(8,),
                               finetune_steps=6, fewshot_max_test=100)
  config.targets = ('mean_color',)
  config.low_rate = 0.0
  config.shots = (2,)
  for c in (config.mpp, config.finetune):
    c.batch_size, c.log_every, c.eval_batch_size = 16, 4, 1000
  config.mpp.model.hidden_size = 16
  config.mpp.model.transformer.update(mlp_dim=32, num_heads=2, num_layers=1)
  config.mpp.mpp.eval_examples = 64
  config.finetune.optimizer.warmup_steps = 2
  config.finetune.ema_decay = 0.0  # One evaluation of the 10k test images per run, not two.
  config.results_path = str(tmp_path / 'docs' / 'results.md')
  return config


def test_variants_of_the_full_study():
  names = [v.name for v in study.variants(fashion_mnist.get_config())]
  assert names == ['scratch', 'mpp_mean_color', 'mpp_downsampled_color', 'mpp_pixels',
                   'mpp_mean_color_rate15', 'mpp_mean_color_steps150',
                   'mpp_mean_color_steps300', 'mpp_mean_color_steps1200']
  quick = study.settings(_quick())
  assert quick.seeds == (0,) and quick.finetune.total_steps == 100
  assert [v.name for v in study.variants(demo.get_config())] == ['scratch', 'mpp_mean_color']


def _quick():
  config = fashion_mnist.get_config()
  config.quick = True
  return config


def test_tiny_study_writes_the_table_and_resumes(tmp_path, capsys):
  config = _tiny_study(tmp_path)
  workdir = str(tmp_path / 'runs')
  results = study.run_study(config, workdir)
  assert sorted(results) == ['mpp_mean_color', 'scratch']
  for runs in results.values():
    accuracy = report.finetuned_accuracy(runs[0])
    assert 0.0 <= accuracy <= 1.0
  pre = results['mpp_mean_color'][0]['pretrain']
  assert 0.0 < pre['fewshot/2shot'] <= 1.0 and 'eval/majority_accuracy' in pre
  text = open(config.results_path).read()
  assert '| from scratch |' in text and '| MPP mean_color, 50% corrupted, 8 steps |' in text
  assert '**Quick run**' in text and '79.9%' in text and '**Partial**' not in text
  assert os.path.exists(str(tmp_path / 'docs' / 'results_pretraining_length.png'))
  steps, means, _ = report.Table(study.settings(config), study.variants(study.settings(config)),
                                 results).length_curve()
  assert steps == [0, 8]
  np.testing.assert_allclose(means[0], 100 * report.finetuned_accuracy(results['scratch'][0]))

  capsys.readouterr()
  # Everything finished: nothing is retrained, also when the workdir is named another way
  # (the fine-tuning configs hold the pretraining path).
  os.symlink(workdir, str(tmp_path / 'link'))
  # A run saved before a config key existed is the same run at that key's default.
  saved_path = os.path.join(workdir, 'scratch', 'seed0', 'finetune', study.RUN_CONFIG_FILE)
  with open(saved_path) as f:
    saved = json.load(f)
  del saved['model']['attention_kernel']
  with open(saved_path, 'w') as f:
    json.dump(saved, f)
  again = study.run_study(config, os.path.relpath(str(tmp_path / 'link')))
  out = capsys.readouterr().out
  assert out.count('done before, skipped') == 4 and 'batch contract' not in out
  assert json.dumps(again, sort_keys=True) == json.dumps(results, sort_keys=True)

  config.quick_settings.finetune_steps = 7  # A finished run is not reused for another budget.
  with pytest.raises(UserError,
                     match=r'finetune: ran with another config \(differs in total_steps\)'):
    study.run_study(config, workdir)
