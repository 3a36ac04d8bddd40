"""The study at a budget a 2-core CPU can give (about 32 CPU-minutes): real numbers, not
converged ones (docs/results.md says so above its tables).

One seed; scratch against MPP with the mean-colour target pretrained for 2 epochs; fine-tuning
on 1% and 10% of the labels, the learning rate chosen on the held-out split among three;
frozen-feature probes and the raw-pixel baseline. Its runs are the demo's (configs/study/demo.py)
plus more: with the same --workdir, the demo's runs are reused.
"""
from configs.study import demo


def get_config():
  config = demo.get_config()
  config.label_fractions = (0.01, 0.1)
  config.finetune_steps = ((0.01, 200), (0.1, 400))
  config.sweep.learning_rates = (0.01, 0.03, 0.1)
  config.probe.enabled = True
  config.results_path = 'docs/results.md'
  config.reduced = ('one seed; MPP pretraining of 2 epochs (859 steps of 128); fine-tuning of '
                    '200 steps (1% of the labels) and 400 steps (10%); no pretraining-length '
                    'sweep, no other target or rate, no transfer setting, no from-scratch '
                    'ViT trained to convergence')
  return config
