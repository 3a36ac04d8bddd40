"""The study's tables, verdicts and plots, as Markdown (docs/results.md) and PNG."""
from __future__ import annotations

import json
import os
import platform
from typing import Optional

import numpy as np

from vit import atomic_write

PAPER = ('For context, the paper (§4.6, ViT-B/16 pretrained on JFT and fine-tuned on ImageNet) '
         'reports 79.9% top-1 with MPP: about 2% above training from scratch and about 4% below '
         'supervised pretraining. A 15% corruption rate was slightly worse than 50%, and returns '
         'diminished after about 100k pretraining steps. Our scale (a 4-layer ViT of width 64 on '
         '28-pixel Fashion-MNIST) is four orders of magnitude smaller, so only the direction of '
         'the effects is comparable, not the figures.')

PROTOCOL = (
    'Protocol, fixed before any test number was seen: the last {holdout} training images are '
    'held out, and every choice is made on them — the fine-tuning learning rate and weight '
    'decay of every variant at every label fraction (swept on seed {first}, then used for every '
    'seed) and the L2 strength of every linear probe. Label fractions are class-balanced and '
    'drawn per seed, the same images for every variant of a seed (1% = 600 images). Test '
    'accuracy is of the final weights on the 10k test images (the 5k of the 5 transfer '
    'classes in the transfer table). A difference counts only beyond 2 standard errors of '
    'the difference of the means over seeds.')

REPRESENTATIONS = ('class_token', 'mean_patch')


def _stats(values: list) -> tuple[float, float, int]:
  v = np.asarray([x for x in values if x is not None], np.float64)
  if v.size == 0:
    return float('nan'), float('nan'), 0
  return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float('nan'), int(v.size)


def _cell(values: list, scale: float = 100.0) -> str:
  mean, std, n = _stats(values)
  if n == 0:
    return '-'
  return f'{mean * scale:.2f}' + (f' ± {std * scale:.2f}' if n > 1 else '')


def fraction_key(fraction: float) -> str:
  return f'{fraction * 100:g}%'


def finetuned(result: dict, key: str, metric: str = 'eval/accuracy') -> Optional[float]:
  return ((result.get('finetune') or {}).get(key) or {}).get(metric)


def verdict(values: list, floor: list) -> Optional[str]:
  """'+d points (better than / worse than / not distinguishable from ...; 2 SE = s)'."""
  (mean, std, n), (b_mean, b_std, b_n) = _stats(values), _stats(floor)
  if n == 0 or b_n == 0:
    return None
  delta = (mean - b_mean) * 100
  if n < 2 or b_n < 2:
    return f'{delta:+.2f} points (one seed: no error bars, indicative only)'
  se = 100 * np.sqrt(std ** 2 / n + b_std ** 2 / b_n)
  word = ('better than' if delta > 2 * se else 'worse than' if delta < -2 * se
          else 'not distinguishable from')
  return f'{delta:+.2f} points ({word} the floor; 2 standard errors = {2 * se:.2f})'


def _table(head: list, rows: list) -> str:
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  return '\n'.join(lines + ['| ' + ' | '.join(r) + ' |' for r in rows])


class Table:
  """Means and stds over seeds of every variant's numbers, table by table."""

  def __init__(self, study, variants, results: dict, session_s: float = 0.0,
               planned: int = 0):
    self.study, self.variants, self.session_s, self.planned = study, variants, session_s, planned
    self.pixels = results.get('pixels')
    self.results = results.get('variants', {})

  @property
  def done(self) -> int:
    return sum(r.get('complete', True) for results in self.results.values() for r in results)

  def group(self, name: str) -> list:
    return [v for v in self.variants if v.group == name]

  def column(self, name: str, getter) -> list:
    return [getter(r) for r in self.results.get(name, [])]

  def accuracies(self, name: str, fraction: float) -> list:
    return self.column(name, lambda r: finetuned(r, fraction_key(fraction)))

  def _fraction_table(self, variants: list, fractions) -> str:
    head = ['variant', *(f'{fraction_key(f)} of the labels' for f in fractions),
            'seeds complete']
    rows = [[v.label, *(_cell(self.accuracies(v.name, f)) for f in fractions),
             str(sum(r.get('complete', True) for r in self.results.get(v.name, [])))]
            for v in variants]
    return _table(head, rows)

  def markdown(self) -> str:
    """The headline: fine-tuned test accuracy (%) per variant and label fraction."""
    return self._fraction_table(self.group('labels'), self.study.label_fractions)

  def length_variants(self) -> list:
    """Scratch, then the first target and rate at every pretraining length, shortest first."""
    if not self.study.targets:
      return []
    target, rate = self.study.targets[0], self.study.rates[0]
    return [v for v in self.variants if v.name == 'scratch'] + sorted(
        (v for v in self.variants if v.group in ('labels', 'length') and v.kind == 'mpp'
         and v.target == target and v.rate == rate), key=lambda v: v.epochs)

  def verdicts(self, group: str = 'labels') -> list[str]:
    floor = 'transfer_scratch' if group == 'transfer' else 'scratch'
    variants = (self.length_variants() if group == 'length' else self.group(group))
    fractions = {'labels': self.study.label_fractions, 'length': self.study.length_fractions,
                 'transfer': self.study.transfer.fractions}[group]
    out = []
    for v in variants:
      if v.kind == 'scratch':
        continue
      for f in fractions:
        line = verdict(self.accuracies(v.name, f), self.accuracies(floor, f))
        if line:
          out.append(f'{v.label}, {fraction_key(f)} of the labels: {line} vs scratch')
    return out

  def chosen(self) -> str:
    """The hyper-parameters the held-out split chose, and the held-out accuracies behind them."""
    rows = []
    for v in self.variants:
      for key, r in (self.results.get(v.name, [{}])[0].get('finetune') or {}).items():
        if r:
          sweep = ', '.join(f'{k}: {a * 100:.1f}' for k, a in r['sweep_holdout'].items())
          rows.append([v.label, key, f'{r["learning_rate"]:g}' + self._edge(r['learning_rate']),
                       f'{r["weight_decay"]:g}', sweep])
    return _table(['variant', 'labels', 'learning rate', 'weight decay',
                   'held-out accuracy (%) of each setting tried'], rows)

  def _edge(self, lr: float) -> str:
    """A choice at the end of a grid of several values: the best may lie beyond it."""
    grid = tuple(self.study.sweep.learning_rates)
    return ' (edge of the grid)' if len(grid) > 1 and lr in (min(grid), max(grid)) else ''

  def probes(self) -> str:
    """Frozen-feature probes: k-shot and full linear test accuracy (%)."""
    p = self.study.probe
    cols = [f'{k}shot' for k in p.shots] + ['linear']
    head = ['features', 'representation', *(f'{k}-shot' for k in p.shots), 'all labels']
    rows = []
    if self.pixels:
      rows.append(['raw pixels', '-', *(self._pixel_cell(c) for c in cols)])
    reps = (*REPRESENTATIONS, f'block{p.block}_mean_patch')
    for v in self.variants:
      if not v.probe:
        continue
      name = 'random initialisation' if v.kind == 'scratch' else v.label
      for rep in reps:
        rows.append([name, rep, *(_cell(self.column(
            v.name, lambda r: (r.get('probe') or {}).get(f'{rep}/{c}'))) for c in cols)])
    return _table(head, rows)

  def pixel_reference(self) -> list[str]:
    """The floor any of these models should clear: least squares on the raw pixels."""
    if not self.pixels or not self.study.probe.shots:
      return []
    k = max(self.study.probe.shots)
    return ['', f'For reference, least squares on the raw pixels (no network) reaches '
            f'{self.pixels["pixels/linear"] * 100:.2f}% with every training label and '
            f'{self.pixels[f"pixels/{k}shot"] * 100:.2f}% with {k} per class '
            '(see Frozen features).']

  def _pixel_cell(self, col: str) -> str:
    value, std = self.pixels.get(f'pixels/{col}'), self.pixels.get(f'pixels/{col}_std')
    l2 = self.pixels.get(f'pixels/{col}_l2')
    return (f'{value * 100:.2f}' + (f' ± {std * 100:.2f}' if std else '')
            + (f' (l2 {l2:g})' if l2 is not None else ''))

  def pretraining(self) -> str:
    rows = []
    for v in self.variants:
      if v.kind == 'scratch':
        continue
      get = lambda key: self.column(v.name, lambda r: (r.get('pretrain') or {}).get(key))
      rows.append([v.label, _cell(get('eval/accuracy')), _cell(get('eval/majority_accuracy'))])
    return _table(['pretraining', 'held-out accuracy of its objective (%)',
                   'majority colour (%)'], rows)

  def seconds(self, key: str = 'wall_s') -> float:
    """Summed over every run (`wall_s` or `cpu_s`), whichever invocation ran it."""
    runs = [run for results in self.results.values() for r in results for run in r['runs']]
    return sum(run.get(key, 0.0) for run in runs + [self.pixels or {}])

  def fraction_curves(self) -> dict:
    """{variant label: (fractions in %, mean, std)} of the headline table."""
    out = {}
    for v in self.group('labels'):
      pts = [(f * 100, *_stats(self.accuracies(v.name, f))[:2])
             for f in self.study.label_fractions]
      pts = [(x, m * 100, 0.0 if np.isnan(s) else s * 100) for x, m, s in pts if not np.isnan(m)]
      if pts:
        out[v.label] = tuple(map(list, zip(*pts)))
    return out

  def length_curve(self, fraction: float) -> tuple[list, list, list]:
    """(pretraining epochs, mean, std) of fine-tuned accuracy; scratch at 0 epochs."""
    epochs, means, stds = [], [], []
    for v in self.length_variants():
      mean, std, n = _stats(self.accuracies(v.name, fraction))
      if n:
        epochs.append(v.epochs), means.append(mean * 100)
        stds.append(0.0 if np.isnan(std) else std * 100)
    return epochs, means, stds


def _figure():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt, *plt.subplots(figsize=(5.5, 3.6), dpi=120)


def _save(plt, fig, path: str) -> str:
  fig.tight_layout()
  with atomic_write.file(path) as partial:
    fig.savefig(partial)
  plt.close(fig)
  return path


def plot_fractions(table: Table, path: str) -> str:
  plt, fig, ax = _figure()
  for label, (x, mean, std) in table.fraction_curves().items():
    ax.errorbar(x, mean, yerr=std, marker='o', capsize=3, label=label)
  ax.set_xscale('log')
  ax.set_xlabel('labelled training images (% of 60k, class-balanced)')
  ax.set_ylabel('fine-tuned test accuracy (%)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6)
  return _save(plt, fig, path)


def plot_length(table: Table, path: str) -> str:
  plt, fig, ax = _figure()
  for f in table.study.length_fractions:
    epochs, mean, std = table.length_curve(f)
    ax.errorbar(epochs, mean, yerr=std, marker='o', capsize=3,
                label=f'{fraction_key(f)} of the labels')
  ax.set_xscale('symlog', linthresh=1.0)
  ax.set_xlabel(f'MPP pretraining epochs ({table.study.targets[0]}; 0 = from scratch)'
                if table.study.targets else 'MPP pretraining epochs')
  ax.set_ylabel('fine-tuned test accuracy (%)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  return _save(plt, fig, path)


def hardware() -> str:
  import jax
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    pass
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  devices = jax.devices()
  load = os.getloadavg()[1] if hasattr(os, 'getloadavg') else float('nan')
  # Wall times mean little on a shared machine: the load says how shared it was.
  return (f'{cores} CPU cores available to the process ({cpu}); JAX {jax.__version__} on '
          f'{len(devices)} {devices[0].platform} device(s); 5-minute load average when this '
          f'file was written: {load:.1f}')


def _caveats(table: Table) -> str:
  study, out = table.study, ''
  if study.quick:
    out += ('\n> **Quick run** (`--config.quick=True`): short schedules that check the '
            'pipeline; the figures below are not the study.\n')
  if study.get('reduced'):
    out += (f'\n> **Reduced budget**: {study.reduced}. These models are not converged; the '
            'figures show the protocol at work, not the answer of the full study.\n')
  if table.planned and table.done < table.planned:
    out += (f'\n> **Partial**: {table.done} of {table.planned} variant x seed runs finished '
            'so far; cells without numbers have not run yet.\n')
  if len(study.seeds) < 2:
    out += '\n> **One seed**: no error bars; the verdicts are indicative only.\n'
  return out


def write(table: Table, path: str, command: str) -> str:
  directory = os.path.dirname(path) or '.'
  os.makedirs(directory, exist_ok=True)
  stem = os.path.splitext(os.path.basename(path))[0]
  study = table.study
  fractions_png = plot_fractions(table, os.path.join(directory, f'{stem}_label_fraction.png'))
  lines = ['# Masked patch prediction at small scale: results', _caveats(table),
           'Does MPP pretraining (§4.6) help a small ViT on Fashion-MNIST when labels are '
           'scarce, and which target? ' + PROTOCOL.format(holdout=study.holdout,
                                                           first=study.seeds[0]), '',
           '## Fine-tuned test accuracy (%) against the label fraction', '', table.markdown(),
           '', f'![test accuracy against the label fraction]({os.path.basename(fractions_png)})',
           '', '### Verdicts against scratch', '',
           *(f'- {v}' for v in table.verdicts('labels') or ['(no pair of runs yet)']),
           *table.pixel_reference()]
  if study.length_epochs and study.targets:
    png = plot_length(table, os.path.join(directory, f'{stem}_pretraining_length.png'))
    lines += ['', '## Accuracy against pretraining length', '',
              table._fraction_table(table.length_variants(), study.length_fractions), '',
              f'![fine-tuned accuracy against MPP pretraining epochs]({os.path.basename(png)})',
              '', *(f'- {v}' for v in table.verdicts('length'))]
  if study.transfer.enabled:
    lines += ['', '## Transfer inside Fashion-MNIST', '',
              f'Pretrained on classes {tuple(study.transfer.pretrain_classes)} (supervised with '
              f'their labels, or MPP without), fine-tuned on classes '
              f'{tuple(study.transfer.finetune_classes)} (a 5-way head); scratch is the floor.',
              '', table._fraction_table(table.group('transfer'), study.transfer.fractions), '',
              *(f'- {v}' for v in table.verdicts('transfer'))]
  if study.probe.enabled:
    lines += ['', '## Frozen features', '',
              f'Least squares on frozen features (vit/evaluators/linear_probe.py): '
              f'{"/".join(map(str, study.probe.shots))}-shot (mean ± std over '
              f'{study.probe.draws} draws of the shots for raw pixels, over seeds for '
              f'backbones) and all {55000 if study.holdout == 5000 else "non-held-out"} '
              'training labels; every L2 strength chosen on the held-out split (shown for '
              'raw pixels). Block indices count from 0.', '', table.probes()]
  lines += ['', '## Hyper-parameters chosen on the held-out split', '', table.chosen(), '',
            '## Pretraining', '', table.pretraining(), '', '## Context', '', PAPER, '',
            '## How this was produced', '', f'- Command: `{command}`',
            f'- Hardware: {hardware()}',
            f'- Wall time: {table.seconds() / 60:.1f} minutes of runs in total, '
            f'{table.seconds("cpu_s") / 60:.1f} minutes of process CPU time (all threads) '
            f'(this invocation: {table.session_s / 60:.1f} minutes; finished runs are skipped '
            'on a rerun)', *([f'- Notes: {study.notes}'] if study.get('notes') else []), '',
            '<details><summary>Study config</summary>', '', '```json',
            json.dumps(study.to_dict(), indent=1, default=str), '```', '</details>', '']
  with atomic_write.file(path) as partial, open(partial, 'w') as f:
    f.write('\n'.join(lines))
  return path
