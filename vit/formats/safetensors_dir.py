"""A model directory of safetensors weights and JSON files, as `hf` and `timm` read and write.

Weights are read only from safetensors (never unpickled) and refused, naming the file, when
unreadable or non-finite; they are written as contiguous float32 with the `{'format': 'pt'}`
metadata that transformers and timm expect of torch weights.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from vit.errors import UserError
from vit.formats.tree import check_finite

WEIGHTS = 'model.safetensors'


def read_weights(path: str, fmt: str) -> dict[str, np.ndarray]:
  """Every tensor of the safetensors file `path`, as stored.

  Raises UserError '{fmt}:{path}: not a readable safetensors file (...)', or naming a
  floating-point tensor with NaN or infinite values. The formats check the dtypes of the
  tensors they use (`vit.formats.tree.check_floating`): a file may hold integer buffers that a
  plain ViT never reads."""
  try:
    weights = load_file(path)
  except (SafetensorError, OSError, ValueError) as e:
    raise UserError(f'{fmt}:{path}: not a readable safetensors file ({e})') from None
  check_finite(weights, f'{fmt}:{path}')
  return weights


def pickled_hint(directory: str) -> str:
  """' (found a.bin, ...: pickled weights are never loaded)' when the directory holds torch
  pickles (what an error about missing safetensors should say), else ''."""
  found = [f for f in os.listdir(directory) if f.endswith(('.bin', '.pt', '.pth'))]
  return f' (found {", ".join(found)}: pickled weights are never loaded)' if found else ''


def write(directory: str, tensors: dict[str, Any], files: dict[str, dict]) -> None:
  """Writes `tensors` as float32 `model.safetensors` and each of `files` (name -> JSON object,
  e.g. config.json) in `directory`, which is created if needed."""
  os.makedirs(directory, exist_ok=True)
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
            os.path.join(directory, WEIGHTS), metadata={'format': 'pt'})
  for name, content in files.items():
    with open(os.path.join(directory, name), 'w') as f:
      json.dump(content, f, indent=2)


def per_channel(values, channels: int) -> list[float]:
  """A mean or std (one value, or one per channel) as one float per channel."""
  return [float(x) for x in np.broadcast_to(np.asarray(values, float), (channels,))]
