"""vit/data/fashion_mnist.py: the IDX reader's refusals, and a second load of unchanged files
returning the arrays of the first (read-only) while a rewritten file is read again."""
import gzip
import struct

import numpy as np
import pytest

from vit.data import fashion_mnist
from vit.errors import UserError


def _write_idx(path, array, ndim=None):
  array = np.asarray(array, np.uint8)
  ndim = array.ndim if ndim is None else ndim
  header = bytes([0, 0, 0x08, ndim]) + struct.pack(f'>{array.ndim}i', *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.tobytes())


def _split(tmp_path, images, labels, split='t10k'):
  _write_idx(tmp_path / f'{split}-images-idx3-ubyte.gz', images)
  _write_idx(tmp_path / f'{split}-labels-idx1-ubyte.gz', labels)


def test_a_second_load_returns_the_same_read_only_arrays_until_a_file_changes(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
  _split(tmp_path, images, [0, 1, 2, 3, 9])
  first = fashion_mnist.load('test', str(tmp_path))
  assert first[0].shape == (5, 28, 28, 1) and first[0].dtype == np.uint8
  assert first[1].dtype == np.int32 and first[1].tolist() == [0, 1, 2, 3, 9]
  np.testing.assert_array_equal(first[0][..., 0], images)
  again = fashion_mnist.load('test', str(tmp_path))
  assert again[0] is first[0] and again[1] is first[1]
  for array in first:  # Shared between callers: none may change it for the others.
    with pytest.raises(ValueError, match='read-only'):
      array[0] = 1
  # Rewritten in place (a re-download, another copy): read again, not served from memory.
  _write_idx(tmp_path / 't10k-labels-idx1-ubyte.gz', [4, 4, 4, 4, 4])
  assert fashion_mnist.load('test', str(tmp_path))[1].tolist() == [4] * 5
  # Another folder is other files.
  other = tmp_path / 'other'
  other.mkdir()
  _split(other, images[:2], [7, 8])
  assert fashion_mnist.load('test', str(other))[1].tolist() == [7, 8]


def test_bad_files_are_named_in_one_line(tmp_path):
  images = np.zeros((3, 28, 28), np.uint8)
  labels_path = tmp_path / 't10k-labels-idx1-ubyte.gz'
  images_path = tmp_path / 't10k-images-idx3-ubyte.gz'
  with pytest.raises(UserError, match=rf'^{images_path}: not found; install it with '
                                      r'`apt-get install dataset-fashion-mnist`'):
    fashion_mnist.load('test', str(tmp_path))
  _split(tmp_path, images, [1, 2])
  with pytest.raises(UserError, match=rf'^{tmp_path}/t10k-\*: 3 images but 2 labels$'):
    fashion_mnist.load('test', str(tmp_path))
  labels_path.write_bytes(b'not gzip')
  with pytest.raises(UserError, match=rf'^{labels_path}: not a readable gzip IDX file'):
    fashion_mnist.load('test', str(tmp_path))
  _write_idx(labels_path, np.zeros((3, 2)))  # Two dimensions where labels have one.
  with pytest.raises(UserError, match=rf'^{labels_path}: not an IDX file of uint8 with 1 '):
    fashion_mnist.load('test', str(tmp_path))
  with gzip.open(labels_path, 'wb') as f:  # The header says 3 labels; 2 follow.
    f.write(bytes([0, 0, 0x08, 1]) + struct.pack('>i', 3) + b'\1\2')
  with pytest.raises(UserError, match=rf'^{labels_path}: truncated \(2 bytes of data'):
    fashion_mnist.load('test', str(tmp_path))
  with pytest.raises(UserError, match=r"split 'val': must be one of train, test"):
    fashion_mnist.load('val', str(tmp_path))
