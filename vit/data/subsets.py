"""Parts of a split: a fixed held-out validation set, a class subset, a class-balanced fraction.

The study's protocol (docs/study/protocol.md) needs three views of one training split:
- a held-out validation set, the split's last `holdout` records (fixed, never shuffled in), on
  which every hyper-parameter is chosen, so the test split steers nothing;
- a subset of classes, relabelled 0..k-1 in the order given (pretraining on 5 Fashion-MNIST
  classes, fine-tuning on the other 5: the paper's transfer setting inside one dataset);
- a class-balanced fraction of the labels (1% of Fashion-MNIST = 60 images of each class), drawn
  with a seed so every variant of a seed fine-tunes on the same images.

They are index computations on the label array, composed by `select` into a `Subset` view.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np

from vit.errors import ConfigError

HOLDOUT_SPLIT = 'holdout'  # The split name of the held-out part of data.train_split.

logger = logging.getLogger(__name__)


def holdout_indices(n: int, holdout: int) -> tuple[np.ndarray, np.ndarray]:
  """(kept, held out) int64 indices of a split of `n` records: the last `holdout` are held out.

  Raises ConfigError (data.holdout) unless 0 <= holdout < n.
  """
  if not isinstance(holdout, int) or not 0 <= holdout < n:
    raise ConfigError('data.holdout', holdout, f'must be an integer in [0, {n}) for a split of '
                      f'{n} records')
  return np.arange(n - holdout), np.arange(n - holdout, n)


def class_indices(labels: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """(indices, new labels int32) of the records whose label is in `classes`, relabelled to each
  label's position in `classes` (classes=(5, 0) maps 5 -> 0 and 0 -> 1).

  Raises ConfigError (data.classes) for repeated classes or a class no record has.
  """
  classes = [int(c) for c in classes]
  if len(set(classes)) != len(classes):
    raise ConfigError('data.classes', tuple(classes), 'lists a class twice')
  present = set(np.unique(labels).tolist())
  missing = [c for c in classes if c not in present]
  if missing:
    raise ConfigError('data.classes', tuple(classes), f'class {missing[0]} has no records '
                      f'(labels present: {sorted(present)})')
  lookup = np.full(max(max(classes), int(labels.max())) + 1, -1, np.int32)
  lookup[classes] = np.arange(len(classes), dtype=np.int32)
  indices = np.flatnonzero(lookup[labels] >= 0)
  return indices, lookup[labels[indices]]


def balanced_fraction(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
  """Sorted indices of `per_class` records of every class, drawn by a seeded permutation.

  The draw depends only on (labels, per_class, seed): the same seed picks the same images for
  every variant. Raises ConfigError (data.train_fraction) when a class has too few records.
  """
  order = np.random.default_rng(seed).permutation(len(labels))
  picked = []
  for c in np.unique(labels):
    members = order[labels[order] == c]
    if len(members) < per_class:
      raise ConfigError('data.train_fraction', per_class, f'asks {per_class} records of class '
                        f'{c}, which has {len(members)}')
    picked.append(members[:per_class])
  return np.sort(np.concatenate(picked))


class Subset:
  """A random-access view of some records of a source, with their (maybe relabelled) labels.

  `labels` int32 [len(indices)] replaces each record's 'label'; `class_names` follow the new
  label order.
  """

  def __init__(self, source, indices: np.ndarray, labels: np.ndarray, description: str,
               class_names: Optional[tuple[str, ...]] = None):
    self.source, self.indices, self.labels = source, np.asarray(indices), np.asarray(labels)
    self.description, self.class_names = description, class_names

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict:
    return {**self.source[int(self.indices[index])], 'label': self.labels[index]}


def labels_of(source) -> np.ndarray:
  """int64 labels of every record (read from `source.labels` when the source keeps them)."""
  labels = getattr(source, 'labels', None)
  if isinstance(labels, np.ndarray):
    return labels.astype(np.int64)
  return np.asarray([int(source[i]['label']) for i in range(len(source))], np.int64)


def select(source, data, *, train: bool, held_out: bool = False, seed: int = 0):
  """The view of `source` that config.data asks for; `source` itself when it asks for none.

  `train`: the source is data.train_split (it loses its last data.holdout records, the same
  ones whatever the classes; data.train_fraction applies). `held_out`: return that tail instead
  (the 'holdout' split). data.classes applies to every split. A fraction f keeps
  round(f * R / k) records of each of the k classes, R the records of those classes in the
  whole split (held-out ones included): 1% of Fashion-MNIST is 600 images whatever
  data.holdout is.
  """
  holdout, classes = data.get('holdout', 0), data.get('classes')
  fraction = data.get('train_fraction', 1.0)
  if not (holdout or classes or (train and fraction < 1.0) or held_out):
    return source
  labels = labels_of(source)
  indices, parts = np.arange(len(labels)), []
  if train or held_out:
    if held_out and not holdout:
      raise ConfigError('data.holdout', holdout, f"must be > 0 to read the '{HOLDOUT_SPLIT}' "
                        'split')
    kept, tail = holdout_indices(len(labels), holdout)
    indices = tail if held_out else kept
    if holdout:
      parts.append(f'held-out last {holdout}' if held_out else f'without the last {holdout}')
  reference = len(labels)
  if classes:
    picked, relabelled = class_indices(labels[indices], classes)
    reference = int(np.isin(labels, classes).sum())
    indices, parts = indices[picked], parts + [f'classes {tuple(classes)}']
  labels = relabelled if classes else labels[indices]
  if train and not held_out and fraction < 1.0:
    k = len(np.unique(labels))
    asked = fraction * reference / k
    per_class = max(1, round(asked))
    if round(asked) < 1:  # Not the fraction asked for: say so rather than train on more.
      logger.warning('data.train_fraction=%g asks %.2g records of each class; keeping 1 of each '
                     '(a fraction of %.2g)', fraction, asked, per_class * k / reference)
    try:
      pick = balanced_fraction(labels, per_class, seed)
    except ConfigError as e:  # It names the count per class; the user set the fraction.
      left = (f' left by data.holdout={holdout} (the fraction counts the whole split, held-out '
              'records included)' if holdout else '')
      raise ConfigError('data.train_fraction', fraction, e.problem + left) from None
    indices, labels = indices[pick], labels[pick]
    parts.append(f'{fraction:g} of the labels ({per_class} per class, seed {seed})')
  names = getattr(source, 'class_names', None)
  if names and classes:
    names = tuple(names[c] for c in classes)
  return Subset(source, indices, labels.astype(np.int32),
                f'{getattr(source, "description", "source")} ({"; ".join(parts)})', names)


def check_config(data) -> None:
  """One-line errors for the subset keys, before any data is read."""
  holdout, fraction, classes = data.holdout, data.train_fraction, data.classes
  if not isinstance(holdout, int) or isinstance(holdout, bool) or holdout < 0:
    raise ConfigError('data.holdout', holdout, 'must be an integer >= 0 (0: none held out)')
  if not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
    raise ConfigError('data.train_fraction', fraction, 'must be in (0, 1]')
  if classes is not None:
    if (not isinstance(classes, (tuple, list)) or not classes
        or any(not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in classes)):
      raise ConfigError('data.classes', classes, 'must be a non-empty tuple of class ids >= 0 '
                        '(None: all classes)')
    if len(set(classes)) != len(classes):
      raise ConfigError('data.classes', tuple(classes), 'lists a class twice')
