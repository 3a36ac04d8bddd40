"""`make demo`: the study's headline at a reduced budget, about 10 minutes on 2 CPU cores.

Fine-tuning on 1% of the labels (600 images), from scratch and from a short MPP pretraining
(mean-colour target), each at the learning rate of best held-out accuracy among two; one seed.
Prints a table of test accuracies. The protocol is the study's (mpp/study.py), the budget is not:
these models are far from converged, and one seed gives no error bars.
"""
from configs.study import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.seeds = (0,)
  config.targets = ('mean_color',)
  config.rates = (0.5,)
  config.pretrain_epochs = 2.0
  config.length_epochs = ()
  config.label_fractions = (0.01,)
  config.finetune_steps = ((0.01, 200),)
  config.sweep.learning_rates = (0.01, 0.03)
  config.probe.enabled = False
  config.transfer.enabled = False
  config.results_path = ''
  return config
