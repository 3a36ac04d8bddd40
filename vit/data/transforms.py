"""grain transforms on records {'image': uint8 [H, W, C], 'label': int}.

Images stay uint8 through the pipeline: a quarter of the bytes of float32 to move to the
device; the train step scales them (to [0, 1] for MPP targets, [-1, 1] for the model).
"""
from __future__ import annotations

import dataclasses

import grain
import numpy as np
from PIL import Image


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  if image.shape[:2] == tuple(size):
    return image
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  out = np.asarray(pil.resize((size[1], size[0]), Image.BILINEAR))
  return out[..., None] if channels == 1 else out


@dataclasses.dataclass(frozen=True)
class ToChannels(grain.transforms.Map):
  """Grayscale -> RGB by repeating the channel, when the model wants 3 channels."""
  channels: int

  def map(self, record):
    image = record['image']
    if image.shape[-1] == 1 and self.channels == 3:
      image = np.repeat(image, 3, axis=-1)
    return {**record, 'image': image}


@dataclasses.dataclass(frozen=True)
class Resize(grain.transforms.Map):
  size: int

  def map(self, record):
    return {**record, 'image': _resize(record['image'], (self.size, self.size))}


@dataclasses.dataclass(frozen=True)
class CentralCrop(grain.transforms.Map):
  """Resize the short side then crop the centre: the evaluation view."""
  size: int
  crop_fraction: float = 0.875

  def map(self, record):
    image = record['image']
    h, w = image.shape[:2]
    if (h, w) != (self.size, self.size):
      scale = self.size / self.crop_fraction / min(h, w)
      image = _resize(image, (max(self.size, round(h * scale)), max(self.size, round(w * scale))))
      h, w = image.shape[:2]
      top, left = (h - self.size) // 2, (w - self.size) // 2
      image = image[top:top + self.size, left:left + self.size]
    return {**record, 'image': image}


@dataclasses.dataclass(frozen=True)
class InceptionCrop(grain.transforms.RandomMap):
  """Random resized crop (Szegedy et al. 2015): area 5%-100%, aspect 3/4-4/3, to `size`."""
  size: int
  min_area: float = 0.05

  def random_map(self, record, rng: np.random.Generator):
    image = record['image']
    h, w = image.shape[:2]
    for _ in range(10):
      area = rng.uniform(self.min_area, 1.0) * h * w
      aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
      ch, cw = int(round(np.sqrt(area / aspect))), int(round(np.sqrt(area * aspect)))
      if 0 < ch <= h and 0 < cw <= w:
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        image = image[top:top + ch, left:left + cw]
        break
    return {**record, 'image': _resize(image, (self.size, self.size))}


@dataclasses.dataclass(frozen=True)
class RandomFlip(grain.transforms.RandomMap):
  def random_map(self, record, rng: np.random.Generator):
    if rng.random() < 0.5:
      return {**record, 'image': record['image'][:, ::-1]}
    return record
