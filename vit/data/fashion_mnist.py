"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package: the embedded default data."""
from __future__ import annotations

import functools
import gzip
import os

import numpy as np

from vit.errors import UserError

DEFAULT_DIR = '/usr/share/datasets/fashion-mnist'
CLASS_NAMES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
               'Sneaker', 'Bag', 'Ankle boot')
_FILES = {'train': 'train', 'test': 't10k'}
SPLITS = tuple(_FILES)


def _read_idx(path: str, expected_ndim: int) -> np.ndarray:
  """Reads an IDX file (LeCun's MNIST format): magic, dims as big-endian int32, then uint8."""
  try:
    with gzip.open(path, 'rb') as f:
      data = f.read()
  except FileNotFoundError:
    raise UserError(f'{path}: not found; install it with `apt-get install dataset-fashion-mnist`'
                    f' or set config.data.data_dir') from None
  except (OSError, EOFError) as e:
    raise UserError(f'{path}: not a readable gzip IDX file ({e})') from None
  if len(data) < 4 or data[:2] != b'\0\0' or data[2] != 0x08 or data[3] != expected_ndim:
    raise UserError(f'{path}: not an IDX file of uint8 with {expected_ndim} dimensions')
  dims = np.frombuffer(data, '>i4', count=expected_ndim, offset=4)
  body = np.frombuffer(data, np.uint8, offset=4 + 4 * expected_ndim)
  if body.size != int(np.prod(dims)):
    raise UserError(f'{path}: truncated ({body.size} bytes of data, header says {dims})')
  return body.reshape(dims)


def _identity(path: str) -> tuple:
  try:
    st = os.stat(path)
  except OSError:
    return (path, None)  # Read (and refused) as before: _read_idx names the problem.
  return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def load(split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Images uint8 [N, 28, 28, 1] and labels int32 [N] of 'train' (60k) or 'test' (10k).

  Both arrays are read-only: a second load of unchanged files returns the same arrays without
  reading them again. Raises UserError naming a missing, damaged or mismatched file."""
  if split not in _FILES:
    raise UserError(f'Fashion-MNIST split {split!r}: must be one of {", ".join(_FILES)}')
  prefix = os.path.join(data_dir or DEFAULT_DIR, _FILES[split])
  paths = f'{prefix}-images-idx3-ubyte.gz', f'{prefix}-labels-idx1-ubyte.gz'
  return _read_split(prefix, paths, tuple(_identity(p) for p in paths))


# Keyed by the files' identity: the trainer, its evaluators and the probes each load the same
# split, and each load gunzips 26 MB (about 0.3 s of a core). Two entries: 'train' and 'test'.
@functools.lru_cache(maxsize=2)
def _read_split(prefix: str, paths: tuple[str, str], identity: tuple
                ) -> tuple[np.ndarray, np.ndarray]:
  del identity  # Only part of the cache key: a file rewritten in place is read again.
  images = _read_idx(paths[0], 3)[..., None]
  labels = _read_idx(paths[1], 1).astype(np.int32)
  if len(images) != len(labels):
    raise UserError(f'{prefix}-*: {len(images)} images but {len(labels)} labels')
  labels.flags.writeable = False  # Like the images (a view of the file's bytes): shared.
  return images, labels


class ArraySource:
  """A grain random-access source over in-memory arrays: records {'image', 'label'}."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, description: str = 'arrays',
               class_names: tuple[str, ...] | None = CLASS_NAMES):
    if len(images) != len(labels):
      raise UserError(f'{description}: {len(images)} images but {len(labels)} labels')
    self.images, self.labels = images, labels
    self.description, self.class_names = description, class_names

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict:
    return {'image': self.images[index], 'label': self.labels[index]}
