"""The study's report, made from its result files only: `python -m study.report`.

Writes docs/study/results.md (tables with 95% intervals, paired differences and verdicts, the
held-out choices, every run with its commit and time, what is left) and its plots. A cell
shows what has finished; a missing seed is counted, never filled in.
"""
from __future__ import annotations

import collections
import os
import sys
from typing import Optional

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from study import check, choices, protocol, report_later, stats, store  # noqa: E402
from vit import atomic_write, cli  # noqa: E402
from vit.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FKEYS_LABEL = {'pct1': '1% (600)', 'pct10': '10% (6,000)', protocol.ALL: '100% (55,000)'}
PRETRAIN_IMAGES = 'pretraining'
MIM_PLOT = 'cell (d)'
# Keys that decide how runs are executed, not which results a report reads or how it reads them.
EXECUTION_KEYS = ('report', 'workers', 'backbones', 'inflight', 'only_priority')


class Study:
  """The results of one study config, read as its arms' per-seed test accuracies."""

  def __init__(self, config, results: dict):
    self.config, self.results = config, results
    every = protocol.runs(config)
    cells = protocol.cells_of(config)
    self.runs = [r for r in every if r.cell in cells]  # The cells this report is about.
    self.order = [r.name for r in every]  # The protocol's order (choices read it).
    self.kinds = {r.name: r.kind for r in every}
    self.fkeys = list(config.budgets) + ([protocol.ALL] if config.full_seeds else [])
    self.head = f'mpp_e{config.headline_epochs:g}'

  def seeds(self, fkey: str) -> tuple:
    return tuple(self.config.full_seeds if fkey == protocol.ALL else self.config.seeds)

  def _chosen(self, prefix: str) -> Optional[str]:
    return choices.chosen_name(prefix, self.results, self.order)

  def run_of(self, arm: str, fkey: str, seed: int) -> Optional[str]:
    """The run whose test accuracy is `arm`'s at (fkey, seed), if it has finished. Seeds run
    at the sweep's choice; only a tuning seed that is also reported (the demo) is its sweep's
    chosen run."""
    if arm == protocol.PIXELS and fkey == protocol.ALL:
      name = f'{arm}/{fkey}/seed{self.seeds(fkey)[0]}'  # One fit, the same for every seed.
    elif seed != self.config.tune_seed or arm == protocol.PIXELS:
      name = f'{arm}/{fkey}/seed{seed}'
    elif fkey == protocol.ALL:
      name = self._chosen(f'{arm}/{fkey}/length/')
    else:
      name = self._chosen(f'{arm}/{fkey}/sweep/')
    return name if name in self.results else None

  def accuracies(self, arm: str, fkey: str) -> dict[int, float]:
    out = {}
    for s in self.seeds(fkey):
      name = self.run_of(arm, fkey, s)
      if name:
        out[s] = 100 * self.results[name]['result']['test_at_best']
    return out

  def images(self, arm: str, fkey: str) -> str:
    """Images the arm's runs may see (steps x batch; plus pretraining for MPP rows), and the
    median at their held-out-best evaluation (the model reported)."""
    names = [n for n in (self.run_of(arm, fkey, s) for s in self.seeds(fkey)) if n]
    if not names:
      return ''
    r = self.results[names[0]]['result']
    if arm == protocol.PIXELS:
      return f'{r["labels"]:,} labelled'
    best = sorted(self.results[n]['result']['images_to_best'] for n in names)[len(names) // 2]
    pre = ''
    if arm.startswith('mpp_e'):
      epochs = float(arm[len('mpp_e'):])
      pre = f' + {round(epochs * self.config.steps_per_epoch) * 128 / 1e6:.2f}M {PRETRAIN_IMAGES}'
    return f'{r["budget_images"] / 1e6:.2f}M (median best at {best / 1e6:.2f}M){pre}'


def _cell(values: dict, planned: int) -> str:
  if not values:
    return f'- (0/{planned})'
  iv = stats.interval(list(values.values()))
  text = f'{iv.mean:.2f}' + (f' +- {iv.half_width:.2f}' if iv.half_width is not None else '')
  return text + (f' ({iv.n}/{planned} seeds)' if iv.n < planned else '')


def _diff(iv: Optional[stats.Interval]) -> str:
  if iv is None:
    return '-'
  if iv.half_width is None:
    return f'{iv.mean:+.2f} (1 seed)'
  return f'{iv.mean:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}] (n={iv.n})'


def _first_length(st: Study) -> Optional[str]:
  """The arm of the first pretrainings' length (30 epochs) where the convergence rule's
  extension made a longer one the headline (deviation 9); else None."""
  first = max(st.config.pretrain_epochs)
  return f'mpp_e{first:g}' if first != st.config.headline_epochs else None


def _arms(st: Study) -> list[tuple[str, str]]:
  arms = [(protocol.PIXELS, 'raw pixels, least squares'), (protocol.SCRATCH, 'ViT from scratch'),
          (protocol.MATCHED, 'ViT from scratch, compute-matched'),
          (st.head, f'ViT, MPP {st.config.headline_epochs:g} epochs, fine-tuned')]
  if _first_length(st):
    arms.append((_first_length(st), f'ViT, MPP {max(st.config.pretrain_epochs):g} epochs, '
                                    f'fine-tuned (the headline before deviation 9)'))
  return arms


def headline_runs(st: Study) -> list[str]:
  """The result records behind the headline and its paired differences: every seed's run of
  each arm, and for MPP rows the pretraining and export the fine-tuning started from."""
  names = [st.run_of(arm, f, s) for arm, _ in _arms(st) for f in st.fkeys for s in st.seeds(f)]
  head = st.config.headline_epochs
  pre = [f'{protocol.MPP}/seed{s}/{k}' for s in st.config.seeds
         for k in ('pretrain', f'pretrain_e{head:g}', f'e{head:g}',
                   f'e{max(st.config.pretrain_epochs):g}')]
  return [n for n in dict.fromkeys(names + pre) if n and n in st.results]


def commits_note(st: Study, names: list[str]) -> str:
  """One line under a table: the commits its records were made at (protocol: a table mixing
  commits says so)."""
  count = collections.Counter((st.results[n].get('commit') or '?')[:7] for n in names)
  if not count:
    return 'Commits: no run yet.'
  listed = ', '.join(f'{c} ({k} record{"s" if k > 1 else ""})' for c, k in sorted(count.items()))
  if len(count) == 1:
    return f'Commit of every record in this table: {listed}.'
  return (f'This table mixes commits: {listed}. What differs between them (the run list only): '
          '[README.md](README.md#the-studys-commit). A resumed run is recorded at the commit of '
          'its last segment.')


def headline(st: Study) -> list[str]:
  lines = ['| test accuracy (%), mean +- 95% interval | ' +
           ' | '.join(FKEYS_LABEL[f] for f in st.fkeys) + ' | images seen (' +
           ' / '.join(FKEYS_LABEL[f].split()[0] for f in st.fkeys) + ') |',
           '|---' * (len(st.fkeys) + 2) + '|']
  for arm, label in _arms(st):
    if arm == protocol.MATCHED and st.config.only_priority < protocol.P_MATCHED:
      continue  # Not part of this (reduced) study: the demo.
    cells = [_cell(st.accuracies(arm, f), len(st.seeds(f))) for f in st.fkeys]
    if arm == _first_length(st) and protocol.ALL in st.fkeys:
      cells[-1] = 'not run (deviation 9)'  # Its all-labels runs left the run list.
    if arm == protocol.PIXELS and protocol.ALL in st.fkeys and st.accuracies(arm, protocol.ALL):
      # One fit of all labels, the same for every seed: not a mean over seeds.
      cells[-1] = f'{next(iter(st.accuracies(arm, protocol.ALL).values())):.2f} (one fit)'
    seen = ' / '.join(st.images(arm, f) or '-' for f in st.fkeys)
    lines.append(f'| {label} | ' + ' | '.join(cells) + f' | {seen} |')
  return lines


PRIMARY = 'MPP - scratch'
EXPLORATORY = ('scratch - raw pixels',)  # Not among the protocol's comparisons.


def comparisons(st: Study) -> list[str]:
  """Paired differences. The primary endpoints (MPP - scratch at each fraction) are
  Holm-adjusted over the fractions; the others are secondary and unadjusted."""
  pairs = [(st.head, protocol.SCRATCH, PRIMARY),
           (st.head, protocol.MATCHED, 'MPP - compute-matched scratch'),
           (st.head, protocol.PIXELS, 'MPP - raw pixels'),
           (protocol.SCRATCH, protocol.PIXELS, 'scratch - raw pixels')]
  if _first_length(st):
    first = f'MPP {max(st.config.pretrain_epochs):g} epochs'
    pairs += [(_first_length(st), protocol.SCRATCH, f'{first} - scratch'),
              (_first_length(st), protocol.PIXELS, f'{first} - raw pixels')]
  primary = {f: stats.paired(st.accuracies(st.head, f), st.accuracies(protocol.SCRATCH, f))
             for f in st.fkeys}
  adjusted = stats.holm(primary, m=len(st.fkeys))  # Over every pre-registered endpoint.
  lines = ['| paired difference (points) | label fraction | mean [95% interval] | verdict |',
           '|---|---|---|---|']
  for a, b, label in pairs:
    for f in st.fkeys:
      iv = stats.paired(st.accuracies(a, f), st.accuracies(b, f))
      if iv is None:
        continue
      who = label.split(' - ')[0]
      word = stats.verdict(iv, f'{who} better', f'{who} worse')
      if iv.n < len(st.seeds(f)):  # A verdict before every planned seed is in is interim.
        word += f' (interim: {iv.n} of {len(st.seeds(f))} seeds)'
      if label == PRIMARY and f in adjusted:
        # The verdict is the interval's (as registered); whether it survives the family-wise
        # correction is said beside it, as the three intervals alone do not control that error.
        holds = ('' if not iv.excludes_zero() else '; holds after adjustment'
                 if adjusted[f] < 0.05 else '; does not hold after adjustment')
        word += (f' (primary; Holm-adjusted {stats.format_p(adjusted[f])} over '
                 f'{len(st.fkeys)} endpoints{holds})')
      elif label in EXPLORATORY:
        word += ' (exploratory: not pre-registered, unadjusted)'
      elif a == _first_length(st):
        word += (' (secondary: the headline length before deviation 9, where the primary '
                 'verdicts were first read; unadjusted)')
      elif label != PRIMARY:
        word += ' (secondary, unadjusted)'
      lines.append(f'| {label} | {FKEYS_LABEL[f]} | {_diff(iv)} | {word} |')
  if len(lines) == 2:
    lines.append('| (no arm pair has a seed in common yet) | | | |')
  return lines


def length_curve(st: Study) -> list[str]:
  lines = ['| MPP pretraining | held-out MPP accuracy (seed mean) | ' +
           ' | '.join(f'fine-tuned {FKEYS_LABEL[f]}' for f in st.config.budgets) + ' |',
           '|---' * (len(st.config.budgets) + 2) + '|']
  ext = protocol.extension_epochs(st.config)
  for e in protocol.mpp_lengths(st.config):
    mpp_acc = [st.results[n]['result']['holdout_mpp_accuracy'] for n in
               (f'{protocol.MPP}/seed{s}/e{e:g}' for s in st.config.seeds)
               if n in st.results and st.results[n]['result'].get('holdout_mpp_accuracy')]
    held = (f'{100 * sum(mpp_acc) / len(mpp_acc):.2f} ({len(mpp_acc)} seed'
          f'{"s" * (len(mpp_acc) != 1)})' if mpp_acc else '-')
    cells = [_cell(st.accuracies(f'mpp_e{e:g}', f), len(st.seeds(f))) for f in st.config.budgets]
    lines.append(f'| {e:g} epochs ({round(e * st.config.steps_per_epoch * 128 / 1e6, 2)}M '
                 f'images) | {held} | ' + ' | '.join(cells) + ' |')
  return lines + ([''] + reruns(st) if ext else [])


def reruns(st: Study) -> list[str]:
  """Deviation 9's pretrainings rerun each seed from step 0; at the first runs' length their
  backbone is exported again: the same bytes, or how far apart (held-out MPP accuracy)."""
  first, same, apart = max(st.config.pretrain_epochs), [], []
  for s in st.config.seeds:
    a = st.results.get(f'{protocol.MPP}/seed{s}/e{first:g}')
    b = st.results.get(f'{protocol.MPP}/seed{s}/e{first:g}_rerun')
    if not (a and b):
      continue
    if a['result'].get('sha256') == b['result'].get('sha256'):
      same.append(f'seed {s}')
    else:
      x, y = (100 * r['result'].get('holdout_mpp_accuracy', 0) for r in (a, b))
      apart.append(f'seed {s} {x:.2f} -> {y:.2f} ({y - x:+.2f} points)')
  if not (same or apart):
    return [f'The reruns to 60 epochs (deviation 9) export at {first:g} epochs too; none has '
            f'reached it yet.']
  return [f'The reruns to 60 epochs (deviation 9), exported again at {first:g} epochs, against '
          f'the first runs\' exports: the same bytes for {", ".join(same) or "no seed"}'
          + (f'; different bytes (held-out MPP accuracy, first -> rerun) for {"; ".join(apart)}'
             if apart else '') + '.']


def _holdout(st: Study, prefix: str) -> dict[int, float]:
  """{seed: held-out best} of the reported seeds' runs under `prefix` that have finished."""
  names = {s: f'{prefix}/seed{s}' for s in st.config.seeds if s != st.config.tune_seed}
  return {s: st.results[n]['result']['holdout_best'] for s, n in names.items()
          if n in st.results}


def _paired_gain(st: Study, before: str, after: str) -> tuple[Optional[float], str]:
  """(mean held-out gain in points of `after` over `before`, over every reported seed; None
  until every seed has both) and how many have both."""
  a, b = _holdout(st, before), _holdout(st, after)
  planned = [s for s in st.config.seeds if s != st.config.tune_seed]
  both = sorted(set(a) & set(b))
  have = f'{len(both)} of {len(planned)} seeds have both'
  if not planned or both != planned:
    return None, have
  return 100 * sum(b[s] - a[s] for s in both) / len(both), f'the same {len(both)} seeds'


def convergence(st: Study) -> list[str]:
  """The protocol's two convergence rules, read from held-out accuracies only. The MPP rule
  is read once every reported seed has both lengths, on the same seeds (paired): the first
  pretrainings' length (30 epochs) against `convergence_epochs`. Where it fired, the extension's
  length (60) against 30 is shown beside it, as information: the protocol has no further rule."""
  first, c = list(st.config.budgets)[0], st.config.convergence_epochs
  h = max(st.config.pretrain_epochs)
  ext = protocol.extension_epochs(st.config)
  gain, have = _paired_gain(st, f'mpp_e{c:g}/{first}', f'mpp_e{h:g}/{first}')
  if gain is not None:
    verdict = 'converged (< 0.3).' if gain < 0.3 else (
        f'not converged: extended to {ext:g} epochs, the headline length (protocol deviation 9).'
        if ext else 'not converged: extend to 60 epochs.')
    iv = stats.paired(*({k: 100 * v for k, v in _holdout(st, f'mpp_e{e:g}/{first}').items()}
                        for e in (h, c)))
    spread = (f'; paired 95% interval [{iv.low:+.2f}, {iv.high:+.2f}], the rule reads the mean'
              if iv is not None and iv.half_width is not None else '')
    out = [f'- MPP pretraining: {h:g} epochs is {gain:+.2f} held-out points from {c:g} epochs '
           f'({FKEYS_LABEL[first]}, mean over {have}{spread}): {verdict}']
    if ext:
      more, have_more = _paired_gain(st, f'mpp_e{h:g}/{first}', f'mpp_e{ext:g}/{first}')
      out.append(f'- MPP pretraining, for information: {ext:g} epochs is {more:+.2f} held-out '
                 f'points from {h:g} ({FKEYS_LABEL[first]}, mean over {have_more}).'
                 if more is not None
                 else f'- MPP pretraining, for information: {ext:g} against {h:g} epochs when '
                      f'every seed has both ({have_more}).')
  else:
    out = [f'- MPP pretraining: not decided yet (needs the fine-tunings from {c:g} and {h:g} '
           f'epochs on every seed: {have}).']
  lengths = sorted((r.epochs, r.name) for r in st.runs
                   if r.name.startswith(f'{protocol.SCRATCH}/{protocol.ALL}/length/'))
  if len(lengths) >= 2 and all(n in st.results for _, n in lengths[-2:]):
    (e1, n1), (e2, n2) = lengths[-2:]
    gain = 100 * (st.results[n2]['result']['holdout_best']
                  - st.results[n1]['result']['holdout_best'])
    out.append(f'- Scratch, all labels: {e2:g} epochs is {gain:+.2f} held-out points from '
               f'{e1:g}: ' + ('converged (< 0.2).' if gain < 0.2 else
                              f'not converged: add {2 * e2:g} epochs.'))
  else:
    out.append('- Scratch, all labels: not decided yet.')
  return out


def grid_edges(st: Study, chosen: str) -> list[str]:
  """The edges of its sweep that the chosen point sits on ('largest learning rate', ...): the
  grid-edge rule's input. Along each axis only the points that share the chosen point's other
  values count (its extensions included), so a point beyond the edge elsewhere in the grid
  (at another learning rate) does not hide this one's edge."""
  prefix = chosen.rsplit('/', 1)[0] + '/'
  points = [r for r in st.runs if r.name.startswith(prefix)]
  run = next(r for r in points if r.name == chosen)
  edges = []
  for key, label in (('lr', 'learning rate'), ('pad', 'padding')):
    other = 'pad' if key == 'lr' else 'lr'
    values = {getattr(r, key) for r in points
              if getattr(r, other) == getattr(run, other)} - {None}
    if len(values) > 1 and getattr(run, key) in (min(values), max(values)):
      edges.append(f'{"largest" if getattr(run, key) == max(values) else "smallest"} {label}')
  return edges


def sweeps(st: Study) -> list[str]:
  lines = [f'| sweep (tuning seed {st.config.tune_seed}) | held-out accuracy of each point (%) '
           '| chosen |', '|---|---|---|']
  prefixes = sorted({r.name.split('/sweep/')[0] for r in st.runs if '/sweep/' in r.name}
                    | {r.name.split('/length/')[0] + '/length' for r in st.runs
                       if '/length/' in r.name})
  for prefix in prefixes:
    part = '/' if prefix.endswith('/length') else '/sweep/'
    names = [n for n in st.order if n.startswith(prefix + part)]
    done = [n for n in names if n in st.results]
    if not done:
      continue
    points = ', '.join(f'{n.rsplit("/", 1)[1]} {100 * st.results[n]["result"]["holdout_best"]:.2f}'
                       + _at_end(st.results[n]) for n in done)
    chosen = choices.chosen_name(prefix + part, st.results, st.order)
    edges = grid_edges(st, chosen) if chosen and part == '/sweep/' else []
    mark = f' (at the grid\'s edge: {", ".join(edges)})' if edges else ''
    shown = chosen.rsplit('/', 1)[1] + mark if chosen else f'({len(done)}/{len(names)} done)'
    lines.append(f'| {prefix} | {points} | {shown} |')
  return lines


def _at_end(record: dict) -> str:
  """A mark on runs whose held-out best was their last evaluation (maybe not converged)."""
  r = record['result']
  if 'best_step' not in r:
    return ''
  return '*' if r.get('curve') and r['best_step'] == r['curve'][-1][0] else ''


def every_run(st: Study) -> list[str]:
  lines = ['| run | held-out best | test at it | best step / steps | wall (min) | commit |',
           '|---|---|---|---|---|---|']
  for name in sorted(st.results):
    rec = st.results[name]
    r = rec['result']
    if 'file' in r:
      continue  # An export: its pretraining's row stands for it.
    held = (f'{100 * r["holdout_best"]:.2f}{_at_end(rec)}' if 'holdout_best' in r
            else 'pretraining' if 'curve' in r else st.kinds.get(name, '-'))
    test = f'{100 * r["test_at_best"]:.2f}' if 'test_at_best' in r else '-'
    best = f'{r.get("best_step", "-")} / {r.get("steps", "-")}'
    wall = f'{rec["wall_s"] / 60:.1f}' if rec.get('wall_s') else '-'
    lines.append(f'| {name} | {held} | {test} | {best} | {wall} | '
                 f'{(rec.get("commit") or "?")[:7]}{" (dirty)" if rec.get("dirty") else ""} |')
  return lines


def progress(st: Study) -> list[str]:
  """Runs done per priority, CPU time spent, and the time left at the measured speed."""
  by_priority = collections.defaultdict(lambda: [0, 0])
  headline_runs = [r for r in st.runs if r.cell == 'a']  # Cells (b)-(e): their own sections.
  for r in headline_runs:
    if r.kind == 'export':
      continue
    by_priority[r.priority][1] += 1
    by_priority[r.priority][0] += r.name in st.results
  s_per_step, untimed = report_later.timing(st)
  left_steps = sum(_steps_left(st, r) for r in headline_runs if r.kind in ('train', 'pretrain')
                   and r.name not in st.results)
  cpu_h = sum(rec.get('cpu_s', 0) for rec in st.results.values()) / 3600
  unsegmented = sum('cpu_s' in rec and 'segments' not in rec for rec in st.results.values())
  lines = [f'- Runs finished: {sum(d for d, _ in by_priority.values())} of '
           f'{sum(t for _, t in by_priority.values())} (by priority: ' +
           ', '.join(f'{p}: {d}/{t}' for p, (d, t) in sorted(by_priority.items())) + ')' +
           ('; cell (a) only, the later cells count theirs in their sections.'
            if len(headline_runs) < len(st.runs) else '.'),
           f'- CPU time of the finished runs: {cpu_h:.1f} CPU-hours' +
           (f' ({unsegmented} records have no list of segments: made by cell (a)\'s runner '
            'code of 0faec29 or before (the study commits after it change only the run '
            'list), they give a resumed run\'s last segment only, so this and '
            'their wall times undercount).' if unsegmented else '.')]
  if s_per_step:
    lines.append(f'- Left: about {left_steps:,} training steps; at the measured '
                 f'{s_per_step:.2f} s of wall time per step of one worker (evaluations '
                 f'included, on the machine as loaded as it was' +
                 (f'; {untimed} records that timed under half the median rate, resumed runs '
                  'timed from their last segment only, left out' if untimed else '') +
                 '), about '
                 f'{left_steps * s_per_step / 3600:.0f} worker-hours, i.e. '
                 f'{left_steps * s_per_step / 3600 / 2:.0f} hours of the 2-core machine with '
                 'two workers.')
  else:  # Nothing timed yet: the 2-core machine's measured rate, evaluations not counted.
    lines.append(f'- Left: about {left_steps:,} training steps of 128 images; at 553 images/s '
                 '(two single-threaded workers on the idle 2-core machine, evaluations not '
                 f'counted) about {left_steps * 128 / 553 / 3600:.0f} hours of that machine.')
  commits = sorted({(rec.get('commit') or '?')[:7] for rec in st.results.values()})
  lines.append(f'- Commits of the results: {", ".join(commits)}.')
  return lines


def _steps_left(st: Study, r: protocol.Run) -> int:
  if r.length_from:  # Not chosen yet: count the longest length.
    return r.steps + max(round(e * st.config.steps_per_epoch)
                         for e in st.config.full.lengths_epochs)
  return r.steps


def scratch_all_labels(st: Study) -> list[str]:
  """Epochs, best epoch and CPU time of every finished scratch run on all labels."""
  names = [n for n in st.order if n.startswith(f'{protocol.SCRATCH}/{protocol.ALL}/')
           and n in st.results]
  lines = ['| run | epochs | held-out best at epoch | held-out best | test there | CPU-hours |',
           '|---|---|---|---|---|---|']
  spe = st.config.steps_per_epoch
  for n in names:
    rec, r = st.results[n], st.results[n]['result']
    lines.append(f'| {n} | {r["steps"] / spe:g} | {r["best_step"] / spe:g} | '
                 f'{100 * r["holdout_best"]:.2f} | {100 * r["test_at_best"]:.2f} | '
                 f'{rec.get("cpu_s", 0) / 3600:.2f} |')
  return lines if names else ['No run has finished yet.']


def plot_fractions(st: Study, path: str) -> None:
  fig, ax = plt.subplots(figsize=(6, 4))
  xs = [100 * protocol.fraction_of(st.config, f) for f in st.fkeys]
  arms = [(protocol.PIXELS, 'raw pixels'), (protocol.SCRATCH, 'scratch'),
          (protocol.MATCHED, 'scratch, compute-matched'),
          (st.head, f'MPP {st.config.headline_epochs:g} epochs')]
  if _first_length(st):  # The headline before deviation 9.
    arms.append((_first_length(st), f'MPP {max(st.config.pretrain_epochs):g} epochs'))
  for arm, label in arms:
    pts = [(x, stats.interval(list(v.values()))) for x, f in zip(xs, st.fkeys)
           if (v := st.accuracies(arm, f))]
    if pts:
      ax.errorbar([x for x, _ in pts], [iv.mean for _, iv in pts],
                  yerr=[iv.half_width or 0 for _, iv in pts], marker='o', capsize=3,
                  label=label)
  ax.set(xscale='log', xlabel='labels used (%)', ylabel='test accuracy (%)',
         title='Fashion-MNIST, 95% intervals over seeds')
  ax.legend()
  _save(fig, path)


def plot_curve(st: Study, name: str, path: str) -> bool:
  rec = st.results.get(name)
  if not rec:
    return False
  curve = rec['result']['curve']
  fig, ax = plt.subplots(figsize=(6, 4))
  epochs = [p[0] / st.config.steps_per_epoch for p in curve]
  ax.plot(epochs, [100 * p[1] for p in curve], marker='.', label='held-out')
  ax.set(xlabel='epochs', ylabel='held-out accuracy (%)', title=name)
  _save(fig, path)
  return True


def _save(fig, path: str) -> None:
  try:  # Into write()'s staging folder, which makes the set complete or leaves it unchanged.
    fig.savefig(path, dpi=110, bbox_inches='tight', format='png')
  finally:
    plt.close(fig)


def markdown(st: Study, figures: dict[str, str], report_dir: str) -> str:
  """The report's text; `figures` maps titles to files beside it, and cell (e)'s figure links
  are made relative to `report_dir`, the folder it is written to."""
  commits = commits_note(st, headline_runs(st))  # The headline's and its differences' runs.
  # The report's own code; the results it writes beside it do not count as changes.
  code = store.commit_of(ROOT, only=('study', 'configs/study'), untracked=True)
  at = (code['commit'] or '?')[:7] + (' with local changes' if code['dirty'] else '')
  parts = ['# Does MPP help? Results of the pre-registered study', '',
           'Protocol: [protocol.md](protocol.md) (committed before these numbers existed). '
           f'Made by `python -m study.report` (the report code at {at}) from '
           '`docs/study/results/`; every '
           'cell shows what has finished and counts missing seeds.', '', '## Status', '',
           *progress(st), '', '## Headline', '', *headline(st), '',
           commits, '', '## Paired differences (same seeds: same '
           'labelled images and order)', '', *comparisons(st), '',
           commits, '', '## Length of MPP '
           'pretraining', '', *length_curve(st), '', '## Convergence rules', '',
           *convergence(st), '', '## Scratch on all labels (goal: 91% or '
           'more)', '', *scratch_all_labels(st), '', '## Held-out choices', '',
           '`*` (here and below): the held-out best was the run\'s last evaluation.', '',
           *sweeps(st), '']
  for title, rel in figures.items():
    if rel != figures.get(MIM_PLOT):
      parts += [f'![{title}]({rel})', '']
  parts += report_later.sections(st, figures.get(MIM_PLOT), report_dir)
  parts += ['## Every run', '', *every_run(st), '']
  return '\n'.join(parts)


def write(config, path: str) -> Study:
  """Writes the report to `path` and its figures beside it, all or none: they are made in a
  staging folder beside `path` and moved in once all are complete, so a failed write (a full
  disk) is one line naming `path` and leaves the previous set together, unchanged."""
  st = Study(config, store.load_all(config.results))
  with atomic_write.staging_dir(path) as staging:
    _write_files(st, staging, os.path.basename(path), os.path.dirname(os.path.abspath(path)))
    atomic_write.move_files(staging, os.path.dirname(os.path.abspath(path)))
  return st


def _write_files(st: Study, folder: str, report_name: str, report_dir: str) -> None:
  figures = {}
  plot_fractions(st, os.path.join(folder, 'label_fractions.png'))
  figures['test accuracy against labels'] = 'label_fractions.png'
  name = protocol.ALL in st.fkeys and st.run_of(protocol.SCRATCH, protocol.ALL,
                                                st.seeds(protocol.ALL)[0])
  if name and plot_curve(st, name, os.path.join(folder, 'scratch_all_curve.png')):
    figures['held-out curve of scratch on all labels'] = 'scratch_all_curve.png'
  fig = report_later.plot_mim(st, plt) if any(r.cell == 'd' for r in st.runs) else None
  if fig is not None:
    _save(fig, os.path.join(folder, 'mim_fractions.png'))
    figures[MIM_PLOT] = 'mim_fractions.png'
  with open(os.path.join(folder, report_name), 'w') as f:
    f.write(markdown(st, figures, report_dir))


def check_report_path(overrides: list[str], config_file: str, report: str) -> None:
  """Refuses overrides that change the report (its results, cells, seeds, ...) while it would
  still be written to the config file's own report path, which is committed.

  Args:
    overrides: the overridden keys, dotted (`results`, `sweep.learning_rates`).
    config_file: the --config path, for the message.
    report: the report's path (`config.report`).

  Raises:
    UserError: naming the keys, when one changes what is reported and `report` is not given.
  """
  changed = [k for k in overrides if k.split('.')[0] not in EXECUTION_KEYS]
  if changed and 'report' not in overrides:
    raise UserError(
        f'--config.{changed[0]} changes what {config_file} reports, and its report '
        f'({report}) is the committed one: write this one elsewhere with '
        '--config.report=PATH')


def main(argv):
  del argv
  # A trainer's or partial config is one line, as study.run and study.check say it.
  check.check_complete(FLAGS.config,
                       f'--config {config_flags.get_config_filename(FLAGS["config"])}')
  check_report_path(sorted(config_flags.get_override_values(FLAGS['config'])),
                    config_flags.get_config_filename(FLAGS['config']), FLAGS.config.report)
  st = write(FLAGS.config, FLAGS.config.report)
  print('\n'.join(headline(st) + [''] + comparisons(st)))
  print(f'wrote {FLAGS.config.report}', file=sys.stderr)


if __name__ == '__main__':
  cli.define_config_flags('configs/study/converged.py', workdir=False)
  cli.run(main)
