"""The runs of the cells pre-registered for later sessions (docs/study/protocol.md, "Cells",
and deviation 3): (b) transfer inside Fashion-MNIST and frozen-feature probes, (c) the other
MPP targets, (d) MAE and SimMIM beside MPP (issue 27), (e) the §4.5 figures.

They run from a later commit than cell (a) (each cell is its own table), beside the (a) worker:
`--config.cells=b,c,d,e`. Their names never start like a name of cell (a), so no choice of (a)
reads them. Every classifier follows cell (a)'s recipe family and budgets; each arm sweeps the
same grid on the tuning seed (fine-tuning seed 0's backbone) before its reported seeds.
Nothing here trains: study/execute_later.py runs the new kinds.
"""
from __future__ import annotations

import dataclasses
import math

from study import protocol
from study.protocol import Run

# Priorities after cell (a)'s (0-12), in the protocol's order of the cells: b, c, e, d.
(P_B_PROBES, P_B_PRETRAIN0, P_B_SWEEP, P_B_PRETRAIN, P_B_SEEDS, P_C_PRETRAIN, P_C_SWEEP,
 P_C_SEEDS, P_E_FIGURES, P_D_CHOICE, P_D_PRETRAIN0, P_D_SWEEP, P_D_PRETRAIN, P_D_SEEDS,
 P_D_PROBES) = range(protocol.P_LENGTH_CURVE + 1, protocol.P_LENGTH_CURVE + 16)

TRANSFER, PROBE, FIGURES = 'transfer', 'probe', 'figures'
MAE, SIMMIM = 'mae', 'simmim'
WALL = 'wall'  # The export of MAE at MPP's pretraining wall time.


def _cell(runs: list[Run], cell: str, **fields) -> list[Run]:
  return [dataclasses.replace(r, cell=cell, **fields) for r in runs]


def _fine_tunings(study, arm: str, prefix: str, backbone_of, priorities, **fields) -> list[Run]:
  """The sweep on the tuning seed and the reported seeds at 1% and 10% (cell (a)'s budgets)."""
  out = []
  for fkey in study.budgets:
    out += protocol._small_fraction(study, arm, fkey, f'{prefix}/{fkey}',  # pylint: disable=protected-access
                                    backbone_of, priorities)
  return [dataclasses.replace(r, **fields) for r in out]


def _pretraining(study, name: str, seed: int, priority: int, exports: dict, variant: str,
                 steps_per_epoch: float, eval_every: int, **fields) -> list[Run]:
  """One pretraining and its 'export' runs ({label: epochs}); rsqrt makes each export the run
  of that length, as in cell (a)."""
  steps = {label: round(e * steps_per_epoch) for label, e in exports.items()}
  pre = Run(f'{name}/pretrain', 'pretrain', priority, seed=seed, steps=max(steps.values()),
            eval_every=eval_every, warmup=study.pretrainer.optimizer.warmup_steps,
            variant=variant, **fields)
  return [pre] + [Run(f'{name}/{label}', 'export', priority, (pre.name,), seed=seed,
                      steps=steps[label], epochs=exports[label], variant=variant, **fields)
                  for label in exports]


def transfer(study) -> list[Run]:
  """(b) Pretraining on classes 0-4 (MPP without labels, supervised with them) for 30 epochs
  of their images, fine-tuned on classes 5-9; scratch on 5-9 is the floor."""
  t, out = study.transfer, []
  pre, fine = tuple(t.pretrain_classes), tuple(t.finetune_classes)
  for kind in (protocol.MPP, 'supervised'):
    for s in study.seeds:
      out += _pretraining(study, f'{TRANSFER}/{kind}/seed{s}', s,
                          P_B_PRETRAIN0 if s == study.seeds[0] else P_B_PRETRAIN,
                          {f'e{t.epochs:g}': t.epochs}, f'transfer_{kind}', t.steps_per_epoch,
                          round(t.eval_every_epochs * t.steps_per_epoch), classes=pre)
  out += _fine_tunings(study, f'{TRANSFER}/scratch', f'{TRANSFER}/scratch', None,
                       (P_B_SWEEP, P_B_SEEDS), classes=fine)
  for kind in (protocol.MPP, 'supervised'):
    arm = f'{TRANSFER}/{kind}_e{t.epochs:g}'
    out += _fine_tunings(study, arm, arm,
                         lambda s, k=kind: f'{TRANSFER}/{k}/seed{s}/e{t.epochs:g}',
                         (P_B_SWEEP, P_B_SEEDS), classes=fine)
  return _cell(out, 'b')


def probes(study) -> list[Run]:
  """(b) Frozen-feature probes on all ten classes: raw pixels once, a random initialisation
  and every MPP length of every seed (60 epochs too, since deviation 9); (d) adds its own
  backbones (see `mim`)."""
  out = [Run(f'{PROBE}/pixels', PROBE, P_B_PROBES, variant='pixels')]
  for s in study.seeds:
    out.append(Run(f'{PROBE}/init/seed{s}', PROBE, P_B_PROBES, seed=s, variant='init'))
    out += [Run(f'{PROBE}/mpp_e{e:g}/seed{s}', PROBE, P_B_PROBES, seed=s,
                source=f'{protocol.MPP}/seed{s}/e{e:g}') for e in protocol.mpp_lengths(study)]
  return _cell(out, 'b')


def _pairs(d: dict, prefix: str = '') -> tuple:
  """{'mpp': {'grid': 2}} -> (('mpp.grid', 2),): a variant's trainer config changes."""
  out = ()
  for k, v in d.items():
    out += _pairs(v, f'{prefix}{k}.') if isinstance(v, dict) else ((f'{prefix}{k}', v),)
  return out


def targets(study) -> list[Run]:
  """(c) Other MPP targets and the 15% rate: one 30-epoch pretraining (seed 0, as cell (a)'s
  seed 0) each; every fine-tuning seed starts from it, at its own learning-rate choice."""
  head, out = study.later_epochs, []
  first = study.seeds[0]
  every = math.gcd(*(round(e * study.steps_per_epoch) for e in study.pretrain_epochs))
  for name, change in study.targets.items():
    changes = _pairs(change.to_dict())
    channels = dict(changes).get('data.channels')
    out += _pretraining(study, f'mpp_{name}/seed{first}', first, P_C_PRETRAIN,
                        {f'e{head:g}': head}, 'mpp', study.steps_per_epoch, every,
                        overrides=changes)
    out += _fine_tunings(study, f'mpp_{name}_e{head:g}', f'mpp_{name}_e{head:g}',
                         lambda s, n=name: f'mpp_{n}/seed{first}/e{head:g}',
                         (P_C_SWEEP, P_C_SEEDS), channels=channels)
  return _cell(out, 'c')


def figures(study) -> list[Run]:
  """(e) The §4.5 analyses of the final weights of each run in config.figures.runs."""
  return [Run(f'{FIGURES}/{name.replace("/", "_")}', FIGURES, P_E_FIGURES, source=name,
              cell='e') for name in study.figures.runs]


def _grid_points(study, objective: str) -> list[tuple[str, tuple]]:
  """(label, trainer config changes) of every point of an objective's choice grid."""
  g, points = study.mim, []
  for lr in g.learning_rates:
    if objective == MAE:
      for width, depth in g.mae_decoders:
        points.append((f'dec{width}x{depth}_lr{lr:g}', (
            ('mae.decoder.hidden_size', width), ('mae.decoder.num_layers', depth),
            ('mae.decoder.num_heads', width // g.decoder_head_width),
            ('mae.decoder.mlp_dim', 4 * width), ('optimizer.learning_rate', lr))))
    else:
      points += [(f'mask{size}_lr{lr:g}', (('simmim.mask_patch_size', size),
                                           ('optimizer.learning_rate', lr)))
                 for size in g.simmim_mask_patch_sizes]
  return points


def _choice(study, objective: str) -> list[Run]:
  """The choice grid: a short pretraining on the tuning seed per point, each fine-tuned once
  at 1% (fixed learning rate and padding, on the tuning seed); the best held-out accuracy of
  those fine-tunings picks the point (study/choices.py, ties to the first point)."""
  g, spe, out = study.mim, study.steps_per_epoch, []
  tune = study.tune_seed
  for label, changes in _grid_points(study, objective):
    grid = f'{objective}/grid/{label}'
    out += _pretraining(study, grid, tune, P_D_CHOICE, {f'e{g.choice_epochs:g}': g.choice_epochs},
                        objective, spe, round(g.choice_epochs * spe), overrides=changes)
    b = study.budgets[g.choice_fkey]
    out.append(Run(f'{objective}/choice/{label}', 'train', P_D_CHOICE, arm=f'{objective}_choice',
                   fkey=g.choice_fkey, seed=tune, steps=b.steps, eval_every=b.eval_every,
                   warmup=b.warmup, lr=g.choice_learning_rate, pad=g.choice_padding,
                   backbone=f'{grid}/e{g.choice_epochs:g}'))
  return out


def mim(study) -> list[Run]:
  """(d) MAE and SimMIM: the choice grids, one pretraining per seed at the chosen point for
  as many images as MPP's 30 epochs (`later_epochs`), MAE on to MPP's pretraining wall time (the
  step count a 'walltime' run measures, rounded to whole epochs), their fine-tunings and
  frozen-feature probes."""
  head, spe, out = study.later_epochs, study.steps_per_epoch, []
  every = math.gcd(*(round(e * spe) for e in study.pretrain_epochs))
  out.append(Run(f'{MAE}/walltime', 'walltime', P_D_PRETRAIN0, settings_from=f'{MAE}/choice',
                 steps=round(head * spe)))
  for objective in (MAE, SIMMIM):
    out += _choice(study, objective)
    walled = {'steps_from': f'{MAE}/walltime'} if objective == MAE else {}
    for s in study.seeds:
      p = P_D_PRETRAIN0 if s == study.seeds[0] else P_D_PRETRAIN
      runs = _pretraining(study, f'{objective}/seed{s}', s, p, {f'e{head:g}': head},
                          objective, spe, every, settings_from=f'{objective}/choice')
      if objective == MAE:  # The wall-time export; the pretraining runs on to it if longer.
        runs = [dataclasses.replace(runs[0], **walled)] + runs[1:] + [
            Run(f'{objective}/seed{s}/{WALL}', 'export', p, (runs[0].name,), seed=s,
                steps=0, variant=objective, **walled)]
      out += runs
    lengths = [f'e{head:g}'] + ([WALL] if objective == MAE else [])
    for length in lengths:
      arm = f'{objective}_{length}'
      out += _fine_tunings(study, arm, arm, lambda s, o=objective, n=length: f'{o}/seed{s}/{n}',
                           (P_D_SWEEP, P_D_SEEDS))
      out += [Run(f'{PROBE}/{arm}/seed{s}', PROBE, P_D_PROBES, seed=s,
                  source=f'{objective}/seed{s}/{length}') for s in study.seeds]
  return _cell(out, 'd')


def runs(study) -> list[Run]:
  """Every run of cells (b)-(e); [] for a config without their sections."""
  if 'transfer' not in study:
    return []
  return (transfer(study) + probes(study) + targets(study) + figures(study) + mim(study))


def grid_changes(study, objective: str) -> dict[str, tuple]:
  """{choice fine-tuning name: the trainer config changes of its grid point}."""
  return {f'{objective}/choice/{label}': changes
          for label, changes in _grid_points(study, objective)}


def shots_names(study) -> list[str]:
  """The probe columns: k-shot for every k, then the probe on all labels."""
  return [f'{k}shot' for k in study.probes.shots] + ['linear']

