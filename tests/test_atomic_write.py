"""vit.atomic_write: an output is replaced only by a complete one."""
import os
import stat

import numpy as np
import pytest

from vit import atomic_write


def test_file_is_replaced_on_success_and_kept_on_failure(tmp_path):
  path = str(tmp_path / 'logits.npy')
  with atomic_write.file(path) as partial:
    assert partial.endswith('.npy') and os.path.dirname(partial) == str(tmp_path)
    np.save(partial, np.arange(3))  # np.save keeps a name that ends in .npy.
  np.testing.assert_array_equal(np.load(path), [0, 1, 2])
  mask = os.umask(0o022)
  try:
    with atomic_write.file(path) as partial:
      np.save(partial, np.arange(4))
  finally:
    os.umask(mask)
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # Not mkstemp's private 0600.
  with pytest.raises(RuntimeError):
    with atomic_write.file(path) as partial:
      with open(partial, 'wb') as f:
        f.write(b'half')
      raise RuntimeError('disk full')
  np.testing.assert_array_equal(np.load(path), [0, 1, 2, 3])
  assert os.listdir(tmp_path) == ['logits.npy']


def test_replace_dir_and_move_files(tmp_path):
  old = tmp_path / 'data'
  old.mkdir()
  (old / 'a').write_text('old')
  with atomic_write.staging_dir(str(old)) as staging:
    (tmp_path / os.path.basename(staging) / 'a').write_text('new')
    atomic_write.replace_dir(staging, str(old))
  assert (old / 'a').read_text() == 'new' and os.listdir(tmp_path) == ['data']
  (old / 'keep').write_text('mine')
  with atomic_write.staging_dir(str(old)) as staging:
    (tmp_path / os.path.basename(staging) / 'a').write_text('newer')
    assert atomic_write.move_files(staging, str(old)) == ['a']
  assert sorted(os.listdir(old)) == ['a', 'keep'] and (old / 'a').read_text() == 'newer'
  assert os.listdir(tmp_path) == ['data']
