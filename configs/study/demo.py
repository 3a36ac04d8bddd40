"""`make demo`: MPP pretraining on Fashion-MNIST, then fine-tuning from it and from scratch.

The study reduced to one seed, the mean-colour target and no sweeps: it prints the two
fine-tuned test accuracies (same budget) in a table. Under 10 minutes on 2 CPU cores.
"""
from configs.study import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.seeds = (0,)
  config.targets = ('mean_color',)
  config.low_rate = 0.0
  config.length_sweep = ()
  config.shots = ()
  config.results_path = ''
  return config
