"""The §4.6 study at small scale on Fashion-MNIST, 3 seeds: the protocol of mpp/study.py.

`mpp`, `supervised` and `finetune` are complete trainer configs (overridable, e.g.
--config.mpp.optimizer.learning_rate=...); the study sets their data subsets (held-out split,
classes, label fraction), lengths and swept hyper-parameters. The full study is 231 trainings
and 30 probe runs, many CPU-hours; `quick` checks the pipeline in minutes;
configs/study/reduced.py gives real but unconverged numbers in about 32 CPU-minutes;
configs/study/demo.py is `make demo`.
"""
import ml_collections

from configs.finetune import fashion_mnist as finetune_config
from configs.mpp import fashion_mnist as mpp_config
from configs.supervised import fashion_mnist as supervised_config


def get_config():
  config = ml_collections.ConfigDict()
  config.mpp = mpp_config.get_config()
  config.mpp.checkpoint_every = 500  # An interrupted pretraining resumes from here.
  config.supervised = supervised_config.get_config()  # Transfer: pretraining with labels.
  config.supervised.checkpoint_every = 500
  config.finetune = finetune_config.get_config()
  # The pretraining resolution: no position-embedding interpolation to confound the
  # comparison with scratch, and 49 tokens instead of 64 on a CPU. One number per run, the
  # final weights, so no Polyak average.
  config.finetune.image_size = 28
  config.finetune.ema_decay = 0.0
  config.seeds = (0, 1, 2)
  config.holdout = 5000  # The last 5k training images: every choice is made on them.
  config.targets = ('mean_color', 'downsampled_color', 'pixels')  # The first: length sweep.
  config.rates = (0.5, 0.15)  # Corruption rates; the first is the length sweep's.
  config.pretrain_epochs = 10.0  # Over the 55k non-held-out images.
  config.length_epochs = (1.0, 3.0, 10.0, 30.0)
  config.length_fractions = (0.01, 0.1)  # Label fractions the length sweep is fine-tuned at.
  config.label_fractions = (0.01, 0.1, 1.0)  # 1% = 600 images, 60 per class.
  config.finetune_steps = ((0.01, 500), (0.1, 1500), (1.0, 6000))  # (label fraction, steps).
  # Fine-tuning hyper-parameters tried on the first seed of every variant and label fraction;
  # the best held-out accuracy is used for every seed. SGD as the paper's fine-tuning
  # (Appendix B.1.1), whose grid this is.
  config.sweep = dict(learning_rates=(0.003, 0.01, 0.03, 0.1), weight_decays=(0.0,))
  # Frozen features (vit/evaluators/linear_probe.py): k-shot least squares over `draws`
  # seeded draws and a probe on all labels, of the class token, the mean patch token and
  # block `block`'s mean patch token (0-based; 1 is the middle of the 4-block model).
  config.probe = dict(enabled=True, shots=(5, 10, 25), draws=3, block=1)
  config.transfer = dict(enabled=True, pretrain_classes=(0, 1, 2, 3, 4),
                         finetune_classes=(5, 6, 7, 8, 9), fractions=(0.01, 0.1),
                         supervised_epochs=10.0, mpp_epochs=10.0)
  config.results_path = 'docs/results.md'  # '' prints the table only.
  config.reduced = ''  # Set by reduced budgets: the report says how, above the tables.
  config.notes = ''  # A line for the report, e.g. how the runs were shared out.
  config.only = ()  # Variant names ('pixels' included) this process runs: split a study.
  config.quick = False  # True: `quick_settings`, a check of the pipeline in minutes.
  config.quick_settings = dict(
      seeds=(0,), targets=('mean_color',), rates=(0.5,), pretrain_epochs=0.25,
      length_epochs=(), label_fractions=(0.01, 0.1),
      finetune_steps=((0.01, 100), (0.1, 100), (1.0, 100)),
      sweep=dict(learning_rates=(0.03,)), probe=dict(draws=1), transfer=dict(enabled=False))
  return config
