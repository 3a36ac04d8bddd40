"""grain transforms on records {'image': uint8 [H, W, C], 'label': int}.

Images stay uint8 through the pipeline: a quarter of the bytes of float32 to move to the
device; the train step scales them (to [0, 1] for MPP targets, [-1, 1] for the model).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import grain
import numpy as np
from PIL import Image

from vit.data import decoding
from vit.errors import BadRecordError, counted


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  if image.shape[:2] == tuple(size):
    return image
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  out = np.asarray(pil.resize((size[1], size[0]), Image.BILINEAR))
  return out[..., None] if channels == 1 else out


class BadRecord(ValueError):
  """A record that cannot be used: an undecodable image or a label out of range."""


def decode_image(data) -> np.ndarray:
  """Encoded bytes (JPEG, PNG, ...; see `decoding` for the modes) or an array -> uint8
  [H, W, 1 or 3]. Raises BadRecord."""
  if isinstance(data, np.ndarray):
    if data.dtype != np.uint8 or data.ndim not in (2, 3) or 0 in data.shape:
      raise BadRecord(f'image array of {data.dtype} {data.shape} is not uint8 [H, W, C]')
    return data[..., None] if data.ndim == 2 else data
  try:
    return decoding.decode(data)
  except decoding.DecodeError as e:
    raise BadRecord(f"key 'image': cannot decode the image ({e})") from None


def check_label(label, num_classes: Optional[int]) -> np.int32:
  """The label as np.int32; BadRecord when it is not an integer scalar or, given `num_classes`,
  lies outside [0, num_classes)."""
  if np.ndim(label) != 0 or not np.issubdtype(np.asarray(label).dtype, np.integer):
    raise BadRecord(f"key 'label': {label!r} is not an integer class index")
  if num_classes is not None and not 0 <= label < num_classes:
    raise BadRecord(f"key 'label': {label} is outside [0, {num_classes}) "
                    f'(config.model.num_classes={num_classes})')
  return np.int32(label)


def check_record(record, num_classes: Optional[int]) -> dict:
  """{'image': uint8 [H, W, C], 'label': int32} of a stored record; raises BadRecord."""
  return {'image': decode_image(record['image']),
          'label': check_label(record['label'], num_classes)}


@dataclasses.dataclass(frozen=True)
class AddIndex(grain.transforms.MapWithIndex):
  """Keeps each record's position in its split, so an error can name the record. `size`: the
  number of records it is applied to; a repeated dataset hands it indices past the first epoch
  (epoch * size + position), which name the same records. `positions` maps the positions of a
  view of the split (a class subset, the few-shot draw) to the split's own: 'record 3' of a
  view was another record of the split."""
  size: int
  positions: Optional[np.ndarray] = dataclasses.field(default=None, compare=False)

  def map_with_index(self, index, record):
    index %= self.size
    return {**record, 'index': index if self.positions is None else int(self.positions[index])}


@dataclasses.dataclass(frozen=True)
class Preprocess(grain.transforms.RandomMap):
  """Decode, check and transform one record; the composition of the config's transforms.

  Returns {'image': uint8 [H, W, C], 'label': int32}. A bad record raises a BadRecordError naming
  `where` and the record index, or, with `skip_bad`, becomes {'skipped': reason}: the marker
  travels to the main process, which drops and counts it (see pipeline.SkipBadRecords), so one
  input still gives one output in the workers and the batches do not depend on the worker count.
  """
  ops: tuple
  where: str
  num_classes: Optional[int] = None
  skip_bad: bool = False

  def random_map(self, record, rng: np.random.Generator):
    index = record.get('index', '?')
    try:
      out = check_record(record, self.num_classes)
    except BadRecord as e:
      if self.skip_bad:
        return {'skipped': f'{self.where}: record {index}: {e}'}
      raise BadRecordError(self.where, f'record {index}: {e}') from None
    for op in self.ops:
      out = op.random_map(out, rng) if isinstance(op, grain.transforms.RandomMap) else op.map(out)
    return out


@dataclasses.dataclass(frozen=True)
class ToChannels(grain.transforms.Map):
  """Grayscale <-> RGB, to the number of channels the model takes."""
  channels: int

  def map(self, record):
    image = record['image']
    if image.shape[-1] == 1 and self.channels == 3:
      image = np.repeat(image, 3, axis=-1)
    elif image.shape[-1] == 3 and self.channels == 1:
      image = np.asarray(Image.fromarray(image).convert('L'))[..., None]
    return {**record, 'image': image}


@dataclasses.dataclass(frozen=True)
class Resize(grain.transforms.Map):
  """Bilinear resize to `size` x `size` pixels, the aspect ratio not kept; an image of that size
  is left as it is."""
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
class RandomPadCrop(grain.transforms.RandomMap):
  """Zero-pad `padding` pixels on every side, then crop the image's own size at a random
  offset: a random translation by up to `padding` pixels, the usual augmentation of small
  images (e.g. CIFAR's pad-4 crop in the ResNet paper, He et al. 2016, §4.2), where an
  Inception crop would leave little of the object."""
  padding: int

  def random_map(self, record, rng: np.random.Generator):
    image, p = record['image'], self.padding
    h, w = image.shape[:2]
    padded = np.pad(image, ((p, p), (p, p), (0, 0)))
    top, left = rng.integers(0, 2 * p + 1), rng.integers(0, 2 * p + 1)
    return {**record, 'image': padded[top:top + h, left:left + w]}


@dataclasses.dataclass(frozen=True)
class RandomFlip(grain.transforms.RandomMap):
  """Left-right flip of the image with probability 1/2."""

  def random_map(self, record, rng: np.random.Generator):
    if rng.random() < 0.5:
      return {**record, 'image': record['image'][:, ::-1]}
    return record


# PIL filters by the names timm's pretrained_cfg uses (timm.data.transforms.str_to_pil_interp).
PIL_FILTERS = {'nearest': Image.NEAREST, 'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC,
               'box': Image.BOX, 'hamming': Image.HAMMING, 'lanczos': Image.LANCZOS}
CROP_MODES = ('center', 'squash')


@dataclasses.dataclass(frozen=True)
class EvalView(grain.transforms.Map):
  """A checkpoint's stated evaluation view, computed as timm's eval transform computes it on a
  PIL image (timm.data.transforms_imagenet_eval with torchvision's Resize and CenterCrop):
  resize to floor(size / crop_pct), the short side keeping the aspect ratio (crop_mode
  'center', the long side truncated to an int) or both sides ('squash'), with the named PIL
  filter, then crop size x size at the centre (offsets rounded as Python rounds, zero padding
  when the image is smaller). crop_pct 1.0, 'squash', 'bilinear' is a plain resize.

  crop_offsets 'floor' centres the crop as transformers' PIL image processors do
  (`image_transforms.center_crop`: offsets (H - size) // 2, the larger half of any padding
  before the image), where a margin of 2k + 1 pixels with k odd puts the crop one pixel
  before torchvision's."""
  size: int
  crop_pct: float = 1.0
  interpolation: str = 'bilinear'
  crop_mode: str = 'squash'
  crop_offsets: str = 'round'

  def map(self, record):
    image = record['image']
    h, w = image.shape[:2]
    scale = math.floor(self.size / self.crop_pct)
    if self.crop_mode == 'squash':
      shape = (scale, scale)
    else:
      shape = (int(scale * h / w), scale) if w <= h else (scale, int(scale * w / h))
    if shape != (h, w):  # torchvision returns the image itself when it has the size already.
      pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
      resized = np.asarray(pil.resize((shape[1], shape[0]), PIL_FILTERS[self.interpolation]))
      image = resized[..., None] if image.shape[-1] == 1 else resized
    return {**record, 'image': _center_crop(image, self.size, self.crop_offsets == 'floor')}


def crops(view: dict, size: int) -> bool:
  """Whether EvalView(size, **view) crops: a short-side resize (margins on any image that is
  not square) or a resize to other than `size`."""
  return view['crop_mode'] == 'center' or math.floor(size / view['crop_pct']) != size


def offsets_differ(view: dict, size: int) -> bool:
  """Whether EvalView(size, **view) with crop_offsets 'round' (torchvision) and 'floor'
  (transformers) can give different crops: a margin of 4k + 3 pixels (round(2k + 1.5) is
  2k + 2, floor 2k + 1; Python rounds 2k + 0.5 to 2k), or an odd padding. With crop_mode
  'center' the long side's margin depends on the image, so some image always differs."""
  if view['crop_mode'] == 'center':
    return True
  margin = math.floor(size / view['crop_pct']) - size
  return margin % 2 == 1 if margin < 0 else margin % 4 == 3


def offsets_note(view: dict, size: int) -> str:
  """Where the crop of EvalView(size, **view) differs by one pixel between crop_offsets
  'round' and 'floor' (`offsets_differ` is True), in words for a warning: the margin or
  padding of this view, or, with crop_mode 'center', the margins of 4k + 3 pixels that some
  images have."""
  if view['crop_mode'] == 'center':
    return ('on an image whose margin is 4k + 3 pixels (3, 7, 11, ...), or whose padding is '
            'odd, its input is one pixel off')
  margin = math.floor(size / view['crop_pct']) - size
  what = 'margin' if margin >= 0 else 'padding'
  return f'its {what} of {counted(abs(margin), "pixel", "pixels")} puts the input one pixel off'


def crop_pct_for(size: int, scale: int) -> float:
  """The crop_pct with which EvalView resizes to `scale` before a `size` crop: size / scale,
  nudged down where float rounding would make floor(size / crop_pct) fall short of `scale`."""
  pct = size / scale
  while math.floor(size / pct) < scale:
    pct = float(np.nextafter(pct, 0.0))
  return pct


def _center_crop(image: np.ndarray, size: int, floor: bool = False) -> np.ndarray:
  """torchvision's F.center_crop on an [H, W, C] array; with `floor`, transformers'
  `image_transforms.center_crop` instead."""
  h, w = image.shape[:2]
  if h < size or w < size:
    pad_h, pad_w = max(size - h, 0), max(size - w, 0)
    top, left = ((pad_h + 1) // 2, (pad_w + 1) // 2) if floor else (pad_h // 2, pad_w // 2)
    image = np.pad(image, ((top, pad_h - top), (left, pad_w - left), (0, 0)))
    h, w = image.shape[:2]
  if floor:
    top, left = (h - size) // 2, (w - size) // 2
  else:
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return image[top:top + size, left:left + size]
