"""The study's table, verdicts and plot, as Markdown (docs/results.md) and PNG."""
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
         '28-pixel Fashion-MNIST, hundreds of steps on a CPU) is four orders of magnitude smaller, '
         'so only the direction of the effects is comparable, not the figures.')


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


def finetuned_accuracy(result: dict) -> Optional[float]:
  return result.get('finetune', {}).get('eval/accuracy')


def finetuned_ema_accuracy(result: dict) -> Optional[float]:
  """The Polyak average: over a short schedule it still weighs the starting point heavily
  (0.99**100 = 37% after 100 steps), so it is shown beside the raw weights, not instead."""
  return result.get('finetune', {}).get('eval_ema/accuracy')


class Table:
  """Mean and std over seeds of each variant's numbers."""

  def __init__(self, study, variants, results: dict, session_s: float = 0.0,
               planned: int = 0):
    self.study, self.variants, self.results, self.session_s = study, variants, results, session_s
    self.planned = planned  # Variant x seed runs in the plan (0: unknown).

  @property
  def done(self) -> int:
    return sum(len(r) for r in self.results.values())

  def column(self, name: str, getter) -> list:
    return [getter(r) for r in self.results.get(name, [])]

  def markdown(self) -> str:
    shots = tuple(self.study.shots)
    head = ['variant', 'fine-tuned test accuracy (%)', 'same, Polyak-averaged (%)',
            *(f'{k}-shot linear (%)' for k in shots),
            'MPP held-out colour accuracy (%)', 'majority colour (%)', 'seeds']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for v in self.variants:
      get = lambda key: self.column(v.name, lambda r: r.get('pretrain', {}).get(key))
      row = [v.label, _cell(self.column(v.name, finetuned_accuracy)),
             _cell(self.column(v.name, finetuned_ema_accuracy)),
             *(_cell(get(f'fewshot/{k}shot')) for k in shots),
             _cell(get('eval/accuracy')), _cell(get('eval/majority_accuracy')),
             str(len(self.results.get(v.name, [])))]
      lines.append('| ' + ' | '.join(row) + ' |')
    return '\n'.join(lines)

  def verdicts(self) -> list[str]:
    """Each MPP variant against scratch: a difference counts only beyond 2 standard errors."""
    base = self.column('scratch', finetuned_accuracy)
    b_mean, b_std, b_n = _stats(base)
    out = []
    for v in self.variants:
      if v.target is None:
        continue
      mean, std, n = _stats(self.column(v.name, finetuned_accuracy))
      if n == 0 or b_n == 0:
        continue
      delta = (mean - b_mean) * 100
      if n > 1 and b_n > 1:
        se = 100 * np.sqrt(std ** 2 / n + b_std ** 2 / b_n)
        word = ('better than' if delta > 2 * se else 'worse than' if delta < -2 * se
                else 'not distinguishable from')
        line = (f'{v.label}: {delta:+.2f} points vs scratch ({word} scratch; '
                f'2 standard errors = {2 * se:.2f})')
      else:
        line = (f'{v.label}: {delta:+.2f} points vs scratch (one seed: no error bars, '
                f'indicative only)')
      out.append(line + self._context_note(v.name))
    return out

  def _context_note(self, name: str) -> str:
    """Whether pretraining got past predicting the most frequent colour (i.e. used context)."""
    get = lambda key: _stats(self.column(name, lambda r: r.get('pretrain', {}).get(key)))[0]
    accuracy, majority = get('eval/accuracy'), get('eval/majority_accuracy')
    if np.isnan(accuracy) or np.isnan(majority):
      return '.'
    above = accuracy > majority + 1e-3
    return (f'; MPP colour accuracy {accuracy * 100:.1f}% vs {majority * 100:.1f}% for the '
            f'majority colour: pretraining had {"" if above else "not yet "}learnt to use '
            'context.')

  def seconds(self, key: str = 'wall_s') -> float:
    """Summed over every run (`wall_s` or `cpu_s`), whichever invocation ran it."""
    return sum(part.get(key, 0.0) for runs in self.results.values() for r in runs
               for part in r.values())

  def length_curve(self) -> tuple[list, list, list]:
    """(steps, mean, std) of fine-tuned accuracy for scratch (0) and the length sweep."""
    target, rate = self.study.targets[0], self.study.rate
    points = [(0, 'scratch')] + sorted(
        (v.steps, v.name) for v in self.variants
        if v.target == target and v.rate == rate)
    steps, means, stds = [], [], []
    for n, name in points:
      mean, std, count = _stats(self.column(name, finetuned_accuracy))
      if count:
        steps.append(n), means.append(mean * 100), stds.append(0.0 if np.isnan(std) else std * 100)
    return steps, means, stds


def plot(table: Table, path: str) -> str:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  steps, means, stds = table.length_curve()
  fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
  ax.errorbar(steps, means, yerr=stds, marker='o', capsize=3)
  ax.set_xlabel(f'MPP pretraining steps ({table.study.targets[0]}; 0 = from scratch)')
  ax.set_ylabel('fine-tuned test accuracy (%)')
  ax.grid(alpha=0.3)
  fig.tight_layout()
  with atomic_write.file(path) as partial:
    fig.savefig(partial)
  plt.close(fig)
  return path


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


def write(table: Table, path: str, command: str) -> str:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  stem = os.path.splitext(os.path.basename(path))[0]
  png = plot(table, os.path.join(os.path.dirname(path) or '.', f'{stem}_pretraining_length.png'))
  study = table.study
  quick = ('\n> **Quick run** (`--config.quick=True`): one seed and short schedules '
           f'({study.pretrain_steps} MPP steps, {study.finetune.total_steps} fine-tuning '
           'steps); the figures below check the pipeline and are not the study. Run without '
           '`--config.quick` for the 3-seed study.\n' if study.quick else '')
  partial = (f'\n> **Partial**: {table.done} of {table.planned} variant x seed runs finished '
             'so far; rows without numbers have not run yet.\n'
             if table.planned and table.done < table.planned else '')
  lines = [
      '# Masked patch prediction at small scale: results', quick + partial,
      'Does MPP pretraining (§4.6) help a small ViT on Fashion-MNIST, and which target? '
      'Each MPP variant is pretrained, then fine-tuned with the same budget as the '
      '"from scratch" row (same steps, optimiser and schedule; test accuracy on the 10k test '
      'images of the final weights, and of their Polyak average when the fine-tuning config '
      'keeps one). Few-shot '
      'columns: a linear least-squares classifier on the frozen mean patch-token '
      'representation of the pretrained backbone (the scratch row: a random initialisation).',
      '', table.markdown(), '', '## Verdicts', '',
      *(f'- {v}' for v in table.verdicts()), '', '## Accuracy against pretraining length', '',
      f'![fine-tuned accuracy against MPP pretraining steps]({os.path.basename(png)})', '',
      '## Context', '', PAPER, '', '## How this was produced', '',
      f'- Command: `{command}`',
      f'- Hardware: {hardware()}',
      f'- Wall time: {table.seconds() / 60:.1f} minutes of runs in total, '
      f'{table.seconds("cpu_s") / 60:.1f} minutes of process CPU time (all threads) '
      f'(this invocation: {table.session_s / 60:.1f} minutes; finished runs are skipped on a '
      'rerun)', *([f'- Notes: {study.notes}'] if study.get('notes') else []), '',
      '<details><summary>Study config</summary>', '', '```json',
      json.dumps(study.to_dict(), indent=1, default=str), '```', '</details>', '']
  with atomic_write.file(path) as partial, open(partial, 'w') as f:
    f.write('\n'.join(lines))
  return path
