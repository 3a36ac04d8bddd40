"""The runs of the pre-registered study (docs/study/protocol.md), made from its config.

A run is one training (or least-squares fit) with a name, the names of the runs it needs and a
priority: workers take the runnable run of best (lowest) priority first, so the compute goes to
the headline cells before the length curve (issue 24, item 5). Nothing here trains; see
study/execute.py. Names are paths: `scratch/pct1/sweep/lr0.001_pad2`, `mpp/seed3/pretrain`,
`mpp/seed3/e30` (a backbone exported by that pretraining), `mpp_e30/pct10/seed2`.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Optional

import ml_collections

from vit.errors import ConfigError

SCRATCH, MPP, MATCHED, PIXELS = 'scratch', 'mpp', 'matched', 'pixels'
ALL = 'all'  # The label-fraction key of all labels.
# The protocol's cells: (a) the headline and the length curve (priorities 0-12, the runs of
# the study's commit 8115426), then the cells pre-registered for later sessions
# (study/later_cells.py): (b) transfer and probes, (c) other targets, (d) MAE and SimMIM,
# (e) the §4.5 figures.
CELLS = ('a', 'b', 'c', 'd', 'e')

# Priorities: the headline (a) first, in the order of the protocol; then the length curve (b).
# The 12-epoch fine-tuning at 1% comes before the 100% cells: MPP's convergence rule reads it.
(P_PIXELS, P_PRETRAIN0, P_SWEEP, P_FT_SWEEP, P_PRETRAIN, P_SEEDS, P_FT_SEEDS, P_CONVERGENCE,
 P_FULL_SWEEP, P_FULL_LENGTH, P_FULL_SEEDS, P_MATCHED, P_LENGTH_CURVE) = range(13)


@dataclasses.dataclass(frozen=True)
class Run:
  """One unit of work. `kind`: 'train' (a classifier, from scratch or from `backbone`),
  'pretrain' (one long MPP pretraining, which also finishes its 'export' runs), 'export' (done
  by its pretraining, never run on its own), 'pixels' (raw-pixel least squares).
  Cells (b)-(e) add 'probe' (frozen-feature probes), 'walltime' (images/s of two
  pretrainings) and 'figures' (the §4.5 analyses); see study/later_cells.py.
  Choices made on held-out results of other runs (study/execute.py applies them):
  `choose`, a sweep whose best fixes the learning rate (and crop padding, if it swept it);
  `pad_from`, a sweep that fixes only the crop padding (the scratch arm's own choice);
  `length_from`, a set of `/length/` runs whose best adds its steps to `steps`."""
  name: str
  kind: str
  priority: int
  deps: tuple[str, ...] = ()
  arm: str = ''
  fkey: str = ''
  seed: int = 0
  steps: int = 0
  eval_every: int = 0
  warmup: int = 0
  lr: Optional[float] = None
  pad: Optional[int] = None
  backbone: Optional[str] = None
  choose: Optional[str] = None
  pad_from: Optional[str] = None
  length_from: Optional[str] = None
  epochs: float = 0.0
  # Cells (b)-(e) (study/later_cells.py); none of these enters a trainer config of cell (a).
  cell: str = 'a'
  classes: Optional[tuple[int, ...]] = None  # data.classes (a class subset, relabelled)
  channels: Optional[int] = None  # data.channels of a fine-tuning (a 1-channel backbone)
  variant: Optional[str] = None  # The pretraining's objective: study/configs.py
  overrides: tuple = ()  # (dotted trainer config key, value) pairs of a pretraining variant
  settings_from: Optional[str] = None  # A choice grid whose best gives `overrides`
  steps_from: Optional[str] = None  # A wall-time run whose step count this run takes
  source: Optional[str] = None  # The run whose weights a probe or figure reads


def fraction_of(study, fkey: str) -> float:
  return 1.0 if fkey == ALL else study.budgets[fkey].fraction


def _grid(study, pads: bool):
  pads = tuple(study.sweep.crop_padding) if pads else (None,)
  return list(itertools.product(tuple(study.sweep.learning_rates), pads))


def _sweep_name(prefix: str, lr: float, pad: Optional[int]) -> str:
  return f'{prefix}/sweep/lr{lr:g}' + ('' if pad is None else f'_pad{pad}')


def _pretrain(study, seed: int, name: str, epochs: float, exports: dict[str, float]
              ) -> list[Run]:
  """Seed `seed`'s MPP pretraining `name` for `epochs`, evaluated at every first-run length's
  common step (so a rerun's evaluations fall where the first run's did), and a backbone
  'export' run for each {name: epochs} of `exports`."""
  spe = study.steps_per_epoch
  pre = Run(name, 'pretrain', P_PRETRAIN0 if seed == study.seeds[0] else P_PRETRAIN,
            seed=seed, steps=round(epochs * spe),
            eval_every=math.gcd(*(round(e * spe) for e in study.pretrain_epochs)),
            warmup=study.pretrainer.optimizer.warmup_steps)
  return [pre, *(Run(export, 'export', P_PRETRAIN, (name,), seed=seed, steps=round(e * spe),
                     epochs=e) for export, e in exports.items())]


def pretraining(study) -> list[Run]:
  """One long pretraining per seed, and a backbone 'export' run at each length."""
  runs = []
  for s in study.seeds:
    runs += _pretrain(study, s, f'{MPP}/seed{s}/pretrain', max(study.pretrain_epochs),
                      {f'{MPP}/seed{s}/e{e:g}': e for e in study.pretrain_epochs})
  return runs + extension(study)


def extension_epochs(study) -> Optional[float]:
  """The length MPP's convergence rule extended the pretrainings to (deviation 9); None
  without an extension (the demo, the tests)."""
  return (study.get('extension') or {}).get('epochs') or None


def mpp_lengths(study) -> tuple:
  """Every length an MPP backbone is exported at: the first pretrainings' and the
  extension's (deviation 9)."""
  ext = extension_epochs(study)
  return (*study.pretrain_epochs, *([ext] if ext else []))


def extension(study) -> list[Run]:
  """MPP's convergence rule, applied (docs/study/protocol.md, "Converged", and deviation 9):
  each seed's pretraining again, to `study.extension.epochs`, exporting at that length and at
  the first runs' last (`{MPP}/seed{s}/e{e}_rerun`, to compare with their export). The first
  runs kept no optimiser state to continue from; on the same schedule (rsqrt: no length in
  it), seed, data order and evaluations, a rerun is that continuation."""
  ext = extension_epochs(study)
  if not ext:
    return []
  first, runs = max(study.pretrain_epochs), []
  for s in study.seeds:
    runs += _pretrain(study, s, f'{MPP}/seed{s}/pretrain_e{ext:g}', ext,
                      {f'{MPP}/seed{s}/e{first:g}_rerun': first, f'{MPP}/seed{s}/e{ext:g}': ext})
  return runs


def _reported(study, seeds) -> tuple:
  """The seeds that run at the sweep's choice: all but the tuning seed (when it is one of
  them, as in the demo, its sweep's chosen run is its result)."""
  return tuple(s for s in seeds if s != study.tune_seed)


def _small_fraction(study, arm: str, fkey: str, prefix: str, backbone_of=None,
                    priorities=(P_SWEEP, P_SEEDS), pad_from=None, budget=None) -> list[Run]:
  """The sweep on the tuning seed (every grid point), then every reported seed at its choice.

  Tuning on a seed that is not reported keeps the reported runs free of the selection's
  optimism (the best of a grid on held-out is also lucky on test). An MPP sweep fine-tunes the
  first seed's backbone (a pretraining of its own would cost as much as a seed)."""
  b = budget or study.budgets[fkey]
  common = dict(arm=arm, fkey=fkey, steps=b.steps, eval_every=b.eval_every, warmup=b.warmup,
                pad_from=pad_from)
  bb = backbone_of or (lambda s: None)
  runs = [Run(_sweep_name(prefix, lr, pad), 'train', priorities[0], seed=study.tune_seed,
              lr=lr, pad=pad, backbone=bb(study.seeds[0]), **common)
          for lr, pad in _grid(study, pads=pad_from is None)]
  return runs + [Run(f'{prefix}/seed{s}', 'train', priorities[1], seed=s, backbone=bb(s),
                     choose=prefix + '/sweep', **common)
                 for s in _reported(study, study.seeds)]


def _all_labels(study, arm: str, prefix: str, pad_from: str, backbone_of=None) -> list[Run]:
  """All labels: LR sweep at a short length and the length, both on the tuning seed; then
  every reported seed at both choices."""
  f, spe, tune = study.full, study.steps_per_epoch, study.tune_seed
  bb = backbone_of or (lambda s: None)
  common = dict(arm=arm, fkey=ALL, warmup=f.warmup, pad_from=pad_from,
                eval_every=round(f.eval_every_epochs * spe))
  runs = [Run(_sweep_name(prefix, lr, None), 'train', P_FULL_SWEEP, seed=tune,
              steps=round(f.sweep_epochs * spe), lr=lr, backbone=bb(study.full_seeds[0]),
              **common) for lr in study.sweep.learning_rates]
  runs += [Run(f'{prefix}/length/e{e:g}', 'train', P_FULL_LENGTH, seed=tune,
               steps=round(e * spe), backbone=bb(study.full_seeds[0]),
               choose=prefix + '/sweep', epochs=e, **common) for e in f.lengths_epochs]
  return runs + [Run(f'{prefix}/seed{s}', 'train', P_FULL_SEEDS, seed=s, backbone=bb(s),
                     choose=prefix + '/sweep', length_from=prefix, **common)
                 for s in _reported(study, study.full_seeds)]


def matched(study, head: float) -> list[Run]:
  """Scratch for as many steps (and images) as the MPP row, its pretraining plus its
  fine-tuning budget, with its own learning-rate sweep (a rate tuned for 1,200 steps need not
  suit 14,100) and the scratch arm's padding; at all labels, the scratch arm's rate and the
  MPP row's chosen length."""
  pre, out = round(head * study.steps_per_epoch), []
  for fkey, b in study.budgets.items():
    budget = ml_collections.ConfigDict(dict(steps=pre + b.steps, eval_every=2 * b.eval_every,
                                            warmup=b.warmup))
    out += _small_fraction(study, MATCHED, fkey, f'{MATCHED}/{fkey}',
                           priorities=(P_MATCHED, P_MATCHED),
                           pad_from=f'{SCRATCH}/{fkey}/sweep', budget=budget)
  if not study.full_seeds:
    return out
  out += [Run(f'{MATCHED}/{ALL}/seed{s}', 'train', P_MATCHED, arm=MATCHED, fkey=ALL, seed=s,
              steps=pre, eval_every=round(study.full.eval_every_epochs * study.steps_per_epoch),
              warmup=study.full.warmup, choose=f'{SCRATCH}/{ALL}/sweep',
              pad_from=f'{SCRATCH}/{list(study.budgets)[-1]}/sweep',
              length_from=f'mpp_e{head:g}/{ALL}') for s in study.full_seeds]
  return out


def _with_choice_deps(runs: list[Run]) -> list[Run]:
  """Each run also waits for every run its choices read."""
  names = [r.name for r in runs]

  def under(prefix: Optional[str], part: str = '/') -> tuple[str, ...]:
    return tuple(n for n in names if prefix and n.startswith(prefix + part))
  out = []
  for r in runs:
    extra = under(r.choose) + under(r.pad_from) + under(r.length_from, '/length/') + \
        under(r.settings_from)
    own = tuple(n for n in (r.backbone, r.steps_from, r.source) if n)
    out.append(dataclasses.replace(r, deps=tuple(dict.fromkeys(r.deps + own + extra))))
  return out


def grid_extensions(study, runs: list[Run]) -> list[Run]:
  """The points `study.sweep.extensions` adds beyond a grid's edge: (sweep prefix, learning
  rate, crop padding or None), each a copy of that sweep's first point at the new values.

  The protocol's grid-edge rule ("Converged"): a choice at the edge of its grid gets one point
  beyond that edge before the seeds run; the seeds wait for it (`_with_choice_deps`) and it
  enters the choice like any grid point (after them: ties keep the grid's point).
  Raises ConfigError naming `config.sweep.extensions` for a prefix with no sweep or a point
  that already exists."""
  out, names = [], {r.name for r in runs}
  for prefix, lr, pad in study.sweep.get('extensions', ()):
    grid = [r for r in runs if r.name.startswith(f'{prefix}/sweep/')]
    name = _sweep_name(prefix, lr, pad)
    if not grid or name in names:
      raise ConfigError('sweep.extensions', (prefix, lr, pad),
                        f'{prefix}/sweep has no points' if not grid else f'{name} exists')
    out.append(dataclasses.replace(grid[0], name=name, lr=lr, pad=pad))
    names.add(name)
  return out


def runs(study: ml_collections.ConfigDict) -> list[Run]:
  """Every run of the protocol, in no particular order (workers order them by priority)."""
  from study import later_cells  # It builds on the helpers above.
  out = headline(study) + later_cells.runs(study)
  out = _with_choice_deps(out + grid_extensions(study, out))
  names = [r.name for r in out]
  assert len(names) == len(set(names)), 'run names must be unique'
  return out


def cells_of(study) -> tuple[str, ...]:
  """The cells `config.cells` names ('a,b,c,d,e', 'b,c,d,e', ...); ConfigError otherwise."""
  text = study.get('cells', ','.join(CELLS))
  picked = tuple(c.strip() for c in str(text).split(',') if c.strip())
  bad = [c for c in picked if c not in CELLS]
  if bad or not picked:
    raise ConfigError('cells', text, f'must list cells among {",".join(CELLS)} (comma-separated)')
  return picked


def headline(study: ml_collections.ConfigDict) -> list[Run]:
  """Cell (a): the headline cells and the length curve, exactly as at commit 8115426."""
  out: list[Run] = []
  full = bool(study.full_seeds)  # () turns the all-labels cells off (the demo).
  for fkey in list(study.budgets) + ([ALL] if full else []):
    seeds = study.full_seeds[:1] if fkey == ALL else study.seeds
    out += [Run(f'{PIXELS}/{fkey}/seed{s}', 'pixels', P_PIXELS, fkey=fkey, seed=s)
            for s in seeds]
  out += pretraining(study)
  head, first = study.headline_epochs, list(study.budgets)[0]
  backbone = lambda e: (lambda s: f'{MPP}/seed{s}/e{e:g}')
  for fkey in study.budgets:
    out += _small_fraction(study, SCRATCH, fkey, f'{SCRATCH}/{fkey}')
    out += _small_fraction(study, f'mpp_e{head:g}', fkey, f'mpp_e{head:g}/{fkey}',
                           backbone(head), (P_FT_SWEEP, P_FT_SEEDS))
    for e in study.pretrain_epochs:
      if e != head:
        p = P_CONVERGENCE if (e == study.convergence_epochs and fkey == first) \
            else P_LENGTH_CURVE
        out += _small_fraction(study, f'mpp_e{e:g}', fkey, f'mpp_e{e:g}/{fkey}', backbone(e),
                               (p, p))
  if full:  # Padding at all labels: each arm's own choice at the largest fraction.
    last = list(study.budgets)[-1]
    out += _all_labels(study, SCRATCH, f'{SCRATCH}/{ALL}', f'{SCRATCH}/{last}/sweep')
    out += _all_labels(study, f'mpp_e{head:g}', f'mpp_e{head:g}/{ALL}',
                       f'mpp_e{head:g}/{last}/sweep', backbone(head))
  out += matched(study, head)
  return out
