"""A classifier's label names, kept beside its checkpoints in the workdir (`class_names.json`)
for prediction and export, which name classes rather than number them."""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import jax

from vit import atomic_write
from vit.errors import UserError

CLASS_NAMES_FILE = 'class_names.json'


def write_class_names(workdir: str, names: Optional[Sequence[str]]) -> None:
  """Stores a classifier's label names beside its checkpoints (for prediction and export).

  Process 0 writes, atomically; nothing is written without names. Raises UserError naming the
  file when it cannot be written (vit.atomic_write)."""
  if names and jax.process_index() == 0:
    path = os.path.join(workdir, CLASS_NAMES_FILE)
    with atomic_write.file(path) as partial, open(partial, 'w') as f:
      json.dump(list(names), f)


def read_class_names(workdir: str, num_classes: Optional[int]) -> Optional[list[str]]:
  """The names `write_class_names` stored, or None without them or when there are fewer than
  `num_classes` (a head wider than the data's named classes, whose outputs stay numbered).

  Raises UserError '{workdir}/class_names.json: ...' (one line) when the file is unreadable,
  not valid JSON, not a list of strings, or names more classes than the head has outputs (a
  file from another run: its names cannot say which output is which): a damaged file is named,
  not silently dropped."""
  path = os.path.join(workdir, CLASS_NAMES_FILE)
  if not num_classes or not os.path.isfile(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      names = json.load(f)
  except OSError as e:
    raise UserError(f'{path}: cannot be read ({e.strerror or e})') from None
  except ValueError as e:  # JSONDecodeError and UnicodeDecodeError both are ValueErrors.
    raise UserError(f'{path}: not valid JSON ({e}); delete it to number the classes, or '
                    'rewrite it as a JSON list of label names') from None
  if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
    raise UserError(f'{path}: not a JSON list of strings (label names); delete it to number '
                    'the classes') from None
  if len(names) > num_classes:
    raise UserError(f'{path}: names {len(names)} classes but the head has {num_classes} '
                    'outputs; delete it to number the classes, or write one name per output')
  return names if len(names) == num_classes else None
