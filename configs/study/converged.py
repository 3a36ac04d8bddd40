"""The pre-registered study of docs/study/protocol.md: does MPP help, and when?

Plain data read by `python -m study.run` (study/protocol.py turns it into runs). Change nothing
here once results exist without listing it under "Deviations" in docs/study/protocol.md.
"""
import ml_collections

from configs.mpp import fashion_mnist as mpp_config
from configs.supervised import fashion_mnist as supervised_config

STEPS_PER_EPOCH = 430  # 55,000 non-held-out images / batch 128 = 429.7, rounded.


def _classifier():
  """Every classification run, from scratch or from a backbone: one recipe family (Adam,
  decoupled weight decay on kernels, warmup + cosine, clip 1, flip), so that only the
  initialisation and the tuned values differ between arms."""
  c = supervised_config.get_config()
  c.data.flip = True
  c.optimizer.update(name='adam', weight_decay=0.05, decay='cosine', grad_clip_norm=1.0)
  c.ema_decay = 0.0
  c.log_every = 100
  c.keep_checkpoints = 1
  c.eval_batch_size = 500
  return c


def _pretrainer():
  """MPP, mean colour, 50% corrupted (the paper's headline variant, §4.6)."""
  c = mpp_config.get_config()
  c.optimizer.update(learning_rate=1e-3, weight_decay=0.1, warmup_steps=500, decay='rsqrt')
  c.mpp.update(image_every=0, eval_examples=5000)  # Every held-out image.
  c.log_every = 200
  c.keep_checkpoints = 1
  c.eval_batch_size = 500
  return c


def get_config():
  config = ml_collections.ConfigDict()
  config.classifier = _classifier()
  config.pretrainer = _pretrainer()
  config.holdout = 5000  # The last 5k training images: every choice is made on them.
  config.seeds = (0, 1, 2, 3, 4)  # 1% and 10% of the labels.
  config.full_seeds = (0, 1, 2)  # All labels.
  # Sweeps run on a seed of their own (its own labelled subset, init and order), so reported
  # seeds are not the lucky best of a grid. MPP sweeps fine-tune the first seed's backbone.
  config.tune_seed = 100
  config.steps_per_epoch = STEPS_PER_EPOCH
  # Classifier budgets per label fraction (steps of 128; early stopping on held-out within).
  config.budgets = ml_collections.ConfigDict({
      'pct1': dict(fraction=0.01, steps=1200, eval_every=100, warmup=100),
      'pct10': dict(fraction=0.1, steps=3000, eval_every=250, warmup=200),
  })
  # All labels: the LR sweep at a short length, then the length on seed 0, then the seeds.
  config.full = dict(sweep_epochs=10, lengths_epochs=(30, 60), eval_every_epochs=2,
                     warmup=500)
  # Every classifier arm sweeps the same grid (the compute-matched arm and all labels take
  # their padding from the scratch arm / each arm's 10% choice).
  # `extensions`: points beyond a grid's edge, added by the grid-edge rule (protocol.md,
  # "Converged"; deviation 4 lists each with the result that called for it).
  config.sweep = dict(learning_rates=(1e-4, 3e-4, 1e-3, 3e-3), crop_padding=(0, 2),
                      extensions=(('scratch/pct1', 1e-2, 2), ('scratch/pct1', 3e-3, 4),
                                  # Deviation 5.
                                  ('scratch/pct10', 1e-2, 2), ('scratch/pct10', 3e-3, 4),
                                  ('mpp_e30/pct1', 3e-4, 4),
                                  # Deviation 6.
                                  ('mpp_e30/pct10', 1e-2, 2), ('mpp_e30/pct10', 3e-3, 4),
                                  # Deviation 8.
                                  ('mpp_e12/pct1', 1e-3, 4), ('mpp_e12/pct1', 1e-3, 6),
                                  # Deviation 9: the headline MPP arm, now at 60 epochs,
                                  # starts with the points its 30-epoch sweeps needed.
                                  ('mpp_e60/pct1', 3e-4, 4), ('mpp_e60/pct10', 1e-2, 2),
                                  ('mpp_e60/pct10', 3e-3, 4),
                                  # Deviation 10.
                                  ('mpp_e60/pct1', 1e-3, 4),
                                  # Deviation 12.
                                  ('mpp_e60/pct10', 1e-3, 4),
                                  # Deviation 13.
                                  ('mpp_e60/pct10', 1e-3, 6), ('mpp_e60/pct10', 3e-4, 4),
                                  # Deviation 14.
                                  ('scratch/all', 1e-2, None)))
  # One long MPP pretraining per seed; backbones exported at these lengths (10x range).
  config.pretrain_epochs = (3, 6, 12, 30)
  # The MPP row of the headline table; compute-matched to it. 30 until MPP's convergence rule
  # read 30 epochs +0.88 held-out points above 12 (not converged): the pre-registered
  # extension makes it 60 (docs/study/protocol.md, deviation 9).
  config.headline_epochs = 60
  config.convergence_epochs = 12  # MPP converged: 30 epochs < 0.3 points above this (1%).
  # The extension's pretrainings (study/protocol.py `extension`): each seed again to 60 epochs.
  config.extension = dict(epochs=60)
  config.workers = 1  # Processes side by side (single-threaded each when > 1).
  config.results = 'docs/study/results'  # One JSON per finished run: committed.
  config.backbones = 'docs/study/backbones'  # Exported MPP backbones (.npz): committed.
  config.inflight = 'docs/study/inflight'  # `study.snapshot`: long runs still going.
  config.report = 'docs/study/results.md'
  config.only_priority = 99  # Run only runs of this priority or better (0 is first).
  return config
