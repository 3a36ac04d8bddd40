"""The images to inspect a model on, as the model's evaluation view: uint8 [N, S, S, C]."""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from vit.data import decoding, fashion_mnist, transforms
from vit.errors import UserError


def _from_dir(path: str, limit: int) -> list[np.ndarray]:
  names, _ = decoding.images_in(path)
  if not names:
    raise UserError(f'--images {path}: no image files ({", ".join(decoding.IMAGE_SUFFIXES)})')
  return [decoding.read_file(os.path.join(path, name)) for name in names[:limit]]


def load(path: Optional[str], size: int, channels: int, limit: int,
         view: Optional[dict] = None) -> tuple[np.ndarray, str]:
  """Up to `limit` images from a .npy file, a directory, or (None) the Fashion-MNIST test set.

  Each goes through the evaluation transforms (channels, then resize and central crop, or the
  checkpoint's stated `view`, e.g. timm's crop_pct), so the model sees what it saw in
  evaluation. Returns the images and a description of their source.
  """
  if path is None:
    raw, source = fashion_mnist.load('test')[0][:limit], 'Fashion-MNIST test split'
  elif os.path.isdir(path):
    raw, source = _from_dir(path, limit), path
  else:
    raw, source = decoding.read_npy(path, f'--images {path}')[:limit], path
  to_channels = transforms.ToChannels(channels)
  crop = transforms.EvalView(size, **view) if view else transforms.CentralCrop(size)
  views = [crop.map(to_channels.map({'image': image}))['image'] for image in raw]
  return np.stack(views).astype(np.uint8), source
