"""Intervals over seeds: a cell's mean and a paired difference's, t distribution (95%)."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

from scipy import stats


@dataclasses.dataclass(frozen=True)
class Interval:
  """mean +- half_width over n values; half_width is None for n < 2 (no interval)."""
  mean: float
  half_width: Optional[float]
  n: int

  @property
  def low(self) -> Optional[float]:
    return None if self.half_width is None else self.mean - self.half_width

  @property
  def high(self) -> Optional[float]:
    return None if self.half_width is None else self.mean + self.half_width

  def excludes_zero(self) -> bool:
    return self.half_width is not None and (self.low > 0 or self.high < 0)


def interval(values: Sequence[float], level: float = 0.95) -> Interval:
  """Mean and the t interval of the mean (n - 1 degrees of freedom)."""
  n = len(values)
  if n == 0:
    raise ValueError('no values')
  mean = sum(values) / n
  if n < 2:
    return Interval(mean, None, n)
  sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
  return Interval(mean, stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n), n)


def paired(a: dict, b: dict) -> Optional[Interval]:
  """The interval of a - b over the seeds both have ({seed: value}); None if none shared."""
  seeds = sorted(set(a) & set(b))
  return interval([a[s] - b[s] for s in seeds]) if seeds else None


def verdict(diff: Optional[Interval], better: str, worse: str) -> str:
  if diff is None or diff.half_width is None:
    return 'too few seeds'
  if not diff.excludes_zero():
    return 'no difference shown'
  return better if diff.mean > 0 else worse


def p_value(diff: Interval) -> Optional[float]:
  """Two-sided p of the paired t test of mean 0 behind `diff` (its mean and half width)."""
  if diff.half_width is None or diff.half_width == 0:
    return None
  se = diff.half_width / stats.t.ppf(0.975, diff.n - 1)
  return float(2 * stats.t.sf(abs(diff.mean) / se, diff.n - 1))


def holm(diffs: dict, m: Optional[int] = None) -> dict:
  """Holm-Bonferroni adjusted p values {key: p} of the paired tests in `diffs` (the primary
  endpoints, one per label fraction); keys without an interval are left out. `m` is the
  number of pre-registered endpoints: those not yet available count as p = 1 (ranked last),
  so an early p is never adjusted over fewer tests than the protocol names."""
  ps = {k: p for k, iv in diffs.items() if iv is not None and (p := p_value(iv)) is not None}
  m = len(ps) if m is None else m
  if m < len(ps):
    raise ValueError(f'{len(ps)} p values but m = {m} endpoints')
  adjusted, running = {}, 0.0
  for i, (k, p) in enumerate(sorted(ps.items(), key=lambda kv: kv[1])):
    running = max(running, min(1.0, (m - i) * p))
    adjusted[k] = running
  return adjusted


def format_p(p: float) -> str:
  """'p < 0.001' below a thousandth (a p of 0.000 reads as impossible), else 'p = 0.123'."""
  return 'p < 0.001' if p < 0.001 else f'p = {p:.3f}'
