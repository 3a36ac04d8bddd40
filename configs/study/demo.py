"""`make demo`: the study's headline cell at 1% of the labels, reduced to 8 to 10 minutes on
2 CPU cores after set-up (issue 24 asks for 10 or less; 9 min 23 s in the README's fresh clone),
fair in the study's sense (docs/study/protocol.md): the scratch arm and the MPP arm are trained
with the same recipe family (Adam, weight decay on kernels, warmup + cosine, flip, random 2-px
translation) for the same fine-tuning budget on the same 600 images; raw-pixel least squares
beside them.
Reduced: one seed, 2 epochs of MPP, 400 fine-tuning steps, and one learning rate, 3e-3, for
both arms. It is the held-out choice of this demo's earlier two-point sweep (1e-3, 3e-3) in 5 of
its 6 arm-and-seed cells (README); running that sweep again (`--config.sweep.learning_rates=
'(1e-3,3e-3)'`, two more fine-tunings, about 4 minutes) picks each arm's rate on the held-out
split, as the study does. Nothing here is converged; docs/study/results.md has the study.
"""
import ml_collections

from configs.study import converged


def get_config():
  config = converged.get_config()
  config.seeds, config.full_seeds = (0,), ()  # No all-labels cells.
  config.tune_seed = 0  # One seed: its sweep's chosen run is its result.
  config.budgets = ml_collections.ConfigDict(
      {'pct1': dict(fraction=0.01, steps=400, eval_every=100, warmup=40)})
  config.pretrain_epochs, config.headline_epochs, config.later_epochs = (2,), 2, 2
  config.extension = None  # The study's rerun to 60 epochs (its deviation 9) is not the demo's.
  config.pretrainer.optimizer.warmup_steps = 100
  # One rate, chosen on held-out by the earlier two-point sweep (docstring): half the fine-tuning
  # time of that sweep, which is what brings the demo under 10 minutes.
  config.sweep.update(learning_rates=(3e-3,), crop_padding=(2,))
  config.sweep.extensions = ()  # The study's grid-edge points are of its own grid.
  config.only_priority = 3  # Pixels, the pretraining, both sweeps: no 100% runs.
  config.cells = 'a'  # The headline cell only (its report shows no later cell).
  # Its own folders: nothing of the study's (results, backbones, runs in flight) is read.
  config.results, config.backbones = 'runs/demo/results', 'runs/demo/backbones'
  config.inflight = 'runs/demo/inflight'
  config.report = 'runs/demo/results.md'
  return config
