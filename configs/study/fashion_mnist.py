"""The §4.6 reproduction at small scale: Fashion-MNIST, a small ViT, 3 seeds (about 2 h, 2 CPUs).

`mpp` is the pretraining config and `finetune` the fine-tuning one (both complete trainer
configs, overridable as --config.mpp.optimizer.learning_rate=...); the study varies the MPP
target, the corruption rate and the pretraining length, with the fine-tuning budget fixed.
"""
import ml_collections

from configs.finetune import fashion_mnist as finetune_config
from configs.mpp import fashion_mnist as mpp_config


def get_config():
  config = ml_collections.ConfigDict()
  config.mpp = mpp_config.get_config()
  config.mpp.checkpoint_every = 200  # An interrupted pretraining resumes from here.
  config.finetune = finetune_config.get_config()
  config.seeds = (0, 1, 2)
  config.targets = ('mean_color', 'downsampled_color', 'pixels')  # The first is swept below.
  config.rate = 0.5
  config.low_rate = 0.15  # The paper's ablation; 0 skips it.
  config.pretrain_steps = 600
  config.length_sweep = (150, 300, 600, 1200)  # Steps of pretraining with the first target.
  config.shots = (5, 10)  # Few-shot linear evaluation of each pretrained backbone.
  config.fewshot_max_test = 10000
  config.results_path = 'docs/results.md'  # '' prints the table only.
  config.notes = ''  # A line for the report, e.g. how the runs were shared out.
  config.only = ()  # Variant names this process runs (others are only read): split a study.
  config.quick = False  # True: `quick_settings`, under 10 minutes on 2 cores.
  config.quick_settings = dict(seeds=(0,), pretrain_steps=150, length_sweep=(50, 150),
                               finetune_steps=100, fewshot_max_test=2000)
  return config
