"""The report's sections for cells (b)-(e) (study/later_cells.py): one table per cell, from the
result files only. A cell that has not run says "pending" with the CPU-hours its runs still
need at the speed the report measured (or the machine's 553 images/s before any run is timed).
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from study import later_cells, protocol, stats
from study.later_cells import FIGURES, MAE, PROBE, SIMMIM, TRANSFER

IMAGES_PER_S = 553  # Two single-threaded workers on the idle 2-core machine (issue 24).


def timing(st) -> tuple[Optional[float], int]:
  """(wall seconds per step of one worker, evaluations included; records left out).

  A record with a list of `segments` times its whole run. One without (cell (a)'s runner code of
  0faec29 or before, which the later study commits keep) times a resumed run's last segment only: it
  is left out when its rate is under half the step-weighted median rate of all timed records (less
  than half its run timed), as the total would otherwise count those steps as nearly free. None
  before any run is timed.
  """
  timed = [(rec['wall_s'] / rec['result']['steps'], rec['result']['steps'], 'segments' in rec)
           for rec in st.results.values() if rec.get('wall_s') and rec['result'].get('steps')]
  if not timed:
    return None, 0
  half_median = _weighted_median([(rate, steps) for rate, steps, _ in timed]) / 2
  kept = [(rate, steps) for rate, steps, whole in timed if whole or rate >= half_median]
  rate = sum(r * n for r, n in kept) / sum(n for _, n in kept)
  return rate, len(timed) - len(kept)


def _weighted_median(pairs: list[tuple[float, int]]) -> float:
  """The value at which half the weight lies below, of (value, weight) pairs."""
  pairs, total, seen = sorted(pairs), sum(w for _, w in pairs), 0
  for value, weight in pairs:
    seen += weight
    if 2 * seen >= total:
      return value
  return pairs[-1][0]


def hours_left(st, cell: str) -> tuple[int, float, int]:
  """(training steps left, CPU-hours they take, probe and figure runs left) of a cell. A
  single-threaded worker's hours are its CPU-hours; a pretraining whose length a wall-time run
  has not fixed yet is counted at its images-matched length."""
  runs = [r for r in st.runs if r.cell == cell and r.name not in st.results]
  steps = sum(r.steps for r in runs if r.kind in ('train', 'pretrain'))
  per_step = timing(st)[0] or 128 / (IMAGES_PER_S / 2)
  others = sum(r.kind in (PROBE, FIGURES, 'walltime') for r in runs)
  return steps, steps * per_step / 3600, others


def _left(st, cell: str) -> str:
  steps, hours, others = hours_left(st, cell)
  done = sum(r.name in st.results for r in st.runs if r.cell == cell and r.kind != 'export')
  total = sum(r.kind != 'export' for r in st.runs if r.cell == cell)
  if done == total:
    return f'- Cell ({cell}): all {total} runs finished.'
  return (f'- Cell ({cell}): {done} of {total} runs finished; left about {steps:,} training '
          f'steps, about {hours:.0f} CPU-hours' + (f', and {others} probe, wall-time or figure '
                                                   'runs (minutes each)' if others else '') + '.')


def _cell(st, arm: str, fkey: str) -> str:
  values = st.accuracies(arm, fkey)
  if not values:
    return f'pending (0/{len(st.seeds(fkey))})'
  iv = stats.interval(list(values.values()))
  text = f'{iv.mean:.2f}' + (f' +- {iv.half_width:.2f}' if iv.half_width is not None else '')
  return text + (f' ({iv.n}/{len(st.seeds(fkey))} seeds)' if iv.n < len(st.seeds(fkey)) else '')


def _table(st, arms: list[tuple[str, str]], labels: dict) -> list[str]:
  fkeys = list(st.config.budgets)
  lines = ['| test accuracy (%), mean +- 95% interval | ' +
           ' | '.join(labels[f] for f in fkeys) + ' |', '|---' * (len(fkeys) + 1) + '|']
  return lines + [f'| {label} | ' + ' | '.join(_cell(st, arm, f) for f in fkeys) + ' |'
                  for arm, label in arms]


def _differences(st, pairs: list[tuple[str, str, str]], labels: dict) -> list[str]:
  lines = ['| paired difference (points, secondary, unadjusted) | labels | mean [95% interval] '
           '| verdict |', '|---|---|---|---|']
  for a, b, label in pairs:
    for f in st.config.budgets:
      iv = stats.paired(st.accuracies(a, f), st.accuracies(b, f))
      if iv is None:
        lines.append(f'| {label} | {labels[f]} | pending | - |')
        continue
      who = label.split(' - ')[0]
      mean = (f'{iv.mean:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}] (n={iv.n})'
              if iv.half_width is not None else f'{iv.mean:+.2f} (1 seed)')
      lines.append(f'| {label} | {labels[f]} | {mean} | '
                   f'{stats.verdict(iv, f"{who} better", f"{who} worse")} |')
  return lines


def transfer(st) -> list[str]:
  t, head = st.config.transfer, f'e{st.config.transfer.epochs:g}'
  pre = ','.join(str(c) for c in t.pretrain_classes)
  fine = ','.join(str(c) for c in t.finetune_classes)
  per_class = 6000  # Fashion-MNIST's training images of a class.
  labels = {f: f'{round(100 * b.fraction):g}% of classes {fine} '
               f'({round(b.fraction * per_class) * len(t.finetune_classes):,})'
            for f, b in st.config.budgets.items()}
  arms = [(f'{TRANSFER}/scratch', f'ViT from scratch on classes {fine} (the floor)'),
          (f'{TRANSFER}/mpp_{head}', f'MPP {t.epochs:g} epochs on classes {pre}, fine-tuned'),
          (f'{TRANSFER}/supervised_{head}',
           f'supervised {t.epochs:g} epochs on classes {pre} (labels), fine-tuned')]
  pairs = [(arms[1][0], arms[0][0], 'MPP - scratch'),
           (arms[2][0], arms[0][0], 'supervised - scratch'),
           (arms[1][0], arms[2][0], 'MPP - supervised')]
  return [_left(st, 'b'), '', *_table(st, arms, labels), '', *_differences(st, pairs, labels)]


def _probe_value(st, names: list[str], key: str) -> str:
  values = [100 * st.results[n]['result'][key] for n in names
            if n in st.results and key in st.results[n]['result']]
  if not values:
    return 'pending'
  iv = stats.interval(values)
  return f'{iv.mean:.2f}' + (f' +- {iv.half_width:.2f}' if iv.half_width else '') + (
      f' ({len(values)}/{len(names)})' if len(values) < len(names) else '')


def probes(st, sources: list[tuple[str, str]]) -> list[str]:
  """Rows: raw pixels, then each (probe arm, label) by representation; columns: the k-shot
  probes and the probe on all labels (test accuracy at the held-out L2, mean over seeds)."""
  cols = later_cells.shots_names(st.config)
  block = f'block{st.config.probes.block}_mean_patch'
  lines = ['| frozen features (test %, mean +- 95% interval over seeds) | representation | ' +
           ' | '.join(c.replace('shot', '-shot').replace('linear', 'all labels') for c in cols)
           + ' |', '|---' * (len(cols) + 2) + '|']
  for arm, label in sources:
    if arm == 'pixels':
      names, reps = [f'{PROBE}/pixels'], [('pixels', 'raw pixels')]
    else:
      names = [f'{PROBE}/{arm}/seed{s}' for s in st.config.seeds]
      reps = [('class_token', 'class token'), ('mean_patch', 'mean patch'),
              (block, f'block {st.config.probes.block + 1} mean patch')]
    for rep, rep_label in reps:
      lines.append(f'| {label} | {rep_label} | ' + ' | '.join(
          _probe_value(st, names, f'{rep}/{c}') for c in cols) + ' |')
  return lines


def targets(st) -> list[str]:
  head = st.config.later_epochs
  labels = {f: f'{round(100 * b.fraction):g}%' for f, b in st.config.budgets.items()}
  described = {'pixels': 'pixel regression (L2, raw 4x4 patches)',
               'down4': 'downsampled colour, 4x4 grid (1 px per cell)',
               'down2': 'downsampled colour, 2x2 grid (2x2 px per cell)',
               'grey5': '5-bit greyscale (1 channel, 32 levels)',
               'rate15': 'mean colour, 15% corrupted'}
  arms = [(f'mpp_e{head:g}', 'mean colour, 50% (cell (a): a pretraining per seed)')] + [
      (f'mpp_{n}_e{head:g}', described.get(n, n) + ' (seed 0\'s pretraining)')
      for n in st.config.targets]
  pairs = [(a, arms[0][0], f'{label.split(" (")[0]} - mean colour 50%')
           for a, label in arms[1:]]
  return [_left(st, 'c'), '', *_table(st, arms, labels), '', *_differences(st, pairs, labels)]


MIM_ARMS = (('scratch', 'ViT from scratch'), ('mpp_e{h}', 'MPP, {h} epochs'),
            ('simmim_e{h}', 'SimMIM, {h} epochs'), ('mae_e{h}', 'MAE, {h} epochs'),
            ('mae_wall', 'MAE at MPP\'s pretraining wall time'))


def mim_arms(st) -> list[tuple[str, str]]:
  h = f'{st.config.later_epochs:g}'
  return [(a.format(h=h), label.format(h=h)) for a, label in MIM_ARMS]


def choice_grid(st) -> list[str]:
  lines = ['| choice grid (tuning seed, fine-tuned at 1%) | held-out accuracy of each point (%) '
           '| chosen |', '|---|---|---|']
  for objective in (MAE, SIMMIM):
    names = [n for n in st.order if n.startswith(f'{objective}/choice/')]
    done = [n for n in names if n in st.results]
    points = ', '.join(f'{n.rsplit("/", 1)[1]} {100 * st.results[n]["result"]["holdout_best"]:.2f}'
                       for n in done) or 'pending'
    best = max(done, key=lambda n: st.results[n]['result']['holdout_best'], default=None)
    chosen = best.rsplit('/', 1)[1] if best and len(done) == len(names) else (
        f'({len(done)}/{len(names)} done)')
    lines.append(f'| {objective} | {points} | {chosen} |')
  wall = st.results.get(f'{MAE}/walltime')
  if wall:
    w = wall['result']
    lines += ['', f'MAE at MPP\'s wall time: MAE {w["mae_img_s"]:.0f} images/s, MPP '
              f'{w["mpp_img_s"]:.0f} (ratio {w["ratio"]:.2f}, measured on '
              f'{wall["machine"]["cpu"]}, backend {wall["machine"]["backend"]}): '
              f'{w["wall_steps"]:,} steps instead of {w["mpp_steps"]:,}.']
  else:
    lines += ['', 'MAE at MPP\'s wall time: pending (the ratio of images/s is measured after '
              'the choice grid).']
  return lines


def mim(st) -> list[str]:
  labels = {f: f'{round(100 * b.fraction):g}%' for f, b in st.config.budgets.items()}
  arms = mim_arms(st)
  pairs = [(a, arms[1][0], f'{label} - MPP') for a, label in arms[2:]] + [
      (a, arms[0][0], f'{label} - scratch') for a, label in arms[2:]]
  return [_left(st, 'd'), '', *_table(st, arms, labels), '', *_differences(st, pairs, labels),
          '', *choice_grid(st)]


def uniform_distance(grid, pixels_per_patch) -> float:
  """The mean attention distance (px) of a head that attends to every patch alike: the mean
  distance between patch centres of the grid, the level of a head with no locality at all."""
  rows, cols = (np.arange(g) * p for g, p in zip(grid, pixels_per_patch))
  centres = np.stack(np.meshgrid(rows, cols, indexing='ij'), -1).reshape(-1, 2)
  return float(np.linalg.norm(centres[:, None] - centres[None], axis=-1).mean())


def pattern(summary: dict) -> str:
  """The pre-registered reading of §4.5's pattern from the mean attention distances (px)
  [blocks][heads]: a head of the lower half of the blocks is local when its distance is below
  half of the last block's mean; the distance grows when each block's mean is above the one
  before. The uniform level (`uniform_distance`) is given beside it, for scale only."""
  per_head = summary['attention_distance_px_per_head']
  means = [sum(h) / len(h) for h in per_head]
  lower = per_head[:max(1, len(per_head) // 2)]
  local = sum(d < means[-1] / 2 for heads in lower for d in heads)
  grows = all(b > a for a, b in zip(means, means[1:]))
  uniform = uniform_distance(summary['grid'], summary['pixels_per_patch'])
  return (f'{local} head(s) of the lower {len(lower)} block(s) local; the mean distance '
          f'{"grows" if grows else "does not grow"} with depth '
          f'({", ".join(f"{m:.1f}" for m in means)} px; {uniform:.1f} px for attention spread '
          f'evenly over the patches): the paper\'s pattern '
          f'{"appears" if local and grows else "does not appear"}.')


def figures(st, report_dir: str) -> list[str]:
  """Cell (e)'s lines: each model's reading of the pattern, its attention-distance plot and
  links to its other figures, as paths relative to `report_dir` (the report's folder) under
  `config.figures.out` (a record's own `out` is the path its run was given, maybe absolute)."""
  lines = [_left(st, 'e'), '']
  for r in st.runs:
    if r.kind != FIGURES:
      continue
    rec = st.results.get(r.name)
    if not rec:
      what = ('its committed backbone' if r.source.startswith(f'{protocol.MPP}/') else
              'its final weights (docs/study/README.md, cell (e))')
      lines.append(f'- {r.source}: pending (reads {what}).')
      continue
    out = rec['result']
    rel = os.path.relpath(os.path.join(st.config.figures.out, r.name.split('/', 1)[1]),
                          report_dir).replace(os.sep, '/')
    links = ', '.join(f'[{f[:-4].replace("_", " ")}]({rel}/{f})' for f in out['figures'])
    lines += [f'- {r.source}: {pattern(out)} Figures: {links}.', '',
              f'  ![mean attention distance by depth, {r.source}]({rel}/attention_distance.png)',
              '']
  return lines


def sections(st, plot: Optional[str], report_dir: str) -> list[str]:
  """The markdown of cells (b)-(e), with the (d) plot's file name when one was drawn; links
  are relative to `report_dir`, the report's folder."""
  if not any(r.cell != 'a' for r in st.runs):
    return []
  spe = protocol.mpp_lengths(st.config)
  sources = ([('pixels', 'raw pixels'), ('init', 'random initialisation')]
             + [(f'mpp_e{e:g}', f'MPP {e:g} epochs') for e in spe])
  mim_sources = [(a, label) for a, label in mim_arms(st)[2:]]
  parts = ['## Cell (b): transfer inside Fashion-MNIST', '', *transfer(st), '',
           '## Cell (b): frozen-feature probes (all ten classes)', '',
           *probes(st, sources), '', '## Cell (c): other MPP targets', '', *targets(st), '',
           '## Cell (e): the §4.5 figures', '', *figures(st, report_dir), '',
           '## Cell (d): MAE and SimMIM beside MPP (issue 27)', '', *mim(st), '',
           *probes(st, mim_sources), '']
  if plot:
    parts += [f'![MPP, SimMIM, MAE and scratch at 1% and 10%]({plot})', '']
  return parts


def plot_mim(st, plt):
  """Test accuracy of every (d) arm at each label fraction, with 95% intervals: the figure,
  or None before any (d) seed has finished."""
  fkeys = list(st.config.budgets)
  arms = [(a, label, {f: st.accuracies(a, f) for f in fkeys}) for a, label in mim_arms(st)]
  if not any(v for _, _, acc in arms for v in acc.values()):
    return None
  fig, ax = plt.subplots(figsize=(7, 4))
  for i, (_, label, acc) in enumerate(arms):
    pts = [(k + (i - 2) * 0.08, stats.interval(list(acc[f].values())))
           for k, f in enumerate(fkeys) if acc[f]]
    if pts:
      ax.errorbar([x for x, _ in pts], [iv.mean for _, iv in pts],
                  yerr=[iv.half_width or 0 for _, iv in pts], marker='o', capsize=3,
                  linestyle='none', label=label)
  ax.set_xticks(range(len(fkeys)), [f'{100 * protocol.fraction_of(st.config, f):g}% labels'
                                    for f in fkeys])
  ax.set(ylabel='test accuracy (%)', title='Cell (d): 95% intervals over seeds')
  ax.legend(fontsize=8)
  return fig
