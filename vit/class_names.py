"""A classifier's label names, kept beside its checkpoints in the workdir (`class_names.json`)
for prediction and export, which name classes rather than number them."""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import jax

from vit import atomic_write

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
  """The names `write_class_names` stored, or None without them or when their count is not
  `num_classes` (the head was changed since)."""
  path = os.path.join(workdir, CLASS_NAMES_FILE)
  if not num_classes or not os.path.isfile(path):
    return None
  with open(path) as f:
    names = json.load(f)
  return names if isinstance(names, list) and len(names) == num_classes else None
