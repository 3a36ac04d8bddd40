"""vit.atomic_write: an output is replaced only by a complete one."""
import errno
import os
import stat

import numpy as np
import pytest

from vit import atomic_write
from vit.errors import UserError


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


def test_staged_outputs_get_the_modes_a_plain_open_gives(tmp_path):
  """What replace_dir and move_files put in place has mode 0666 / 0777 & ~umask, whatever the
  writer made (mkdtemp's 0700 staging folder, mkstemp's or safetensors' 0600 files)."""
  mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)
  mask = os.umask(0o027)
  try:
    out = tmp_path / 'data'
    with atomic_write.staging_dir(str(out)) as staging:
      os.mkdir(os.path.join(staging, 'sub'), 0o700)
      for name in ('a', 'sub/b'):
        os.close(os.open(os.path.join(staging, name), os.O_CREAT | os.O_WRONLY, 0o600))
      atomic_write.replace_dir(staging, str(out))
    assert [mode(out), mode(out / 'sub'), mode(out / 'a'), mode(out / 'sub' / 'b')] == [
        0o750, 0o750, 0o640, 0o640]
    with atomic_write.staging_dir(str(out)) as staging:
      os.close(os.open(os.path.join(staging, 'c'), os.O_CREAT | os.O_WRONLY, 0o600))
      atomic_write.move_files(staging, str(out))
    assert mode(out / 'c') == 0o640
  finally:
    os.umask(mask)


def test_any_failed_write_of_the_output_is_one_line_and_keeps_the_previous(tmp_path):
  """Not only a full disk: a file where the folder should be, a directory where the file
  should be, no permission, a read-only volume (simulated: the tests may run as root)."""
  blocker = tmp_path / 'blocker'
  blocker.write_text('a file')
  with pytest.raises(UserError, match=rf'^{blocker}/sub/x.npy: not written \({blocker} is a '
                                      r'file, not a directory\); nothing was written there$'):
    with atomic_write.file(str(blocker / 'sub' / 'x.npy')):
      pass
  with pytest.raises(UserError, match=rf'^{blocker}/x: not written \({blocker} is a file, not a '
                                      r'directory\); nothing was written there$'):
    with atomic_write.staging_dir(str(blocker / 'x')):
      pass
  (tmp_path / 'taken').mkdir()
  with pytest.raises(UserError, match=rf'^{tmp_path}/taken: not written \({tmp_path}/taken is a '
                                      r'directory\); the previous one is unchanged$'):
    with atomic_write.file(str(tmp_path / 'taken')) as partial:
      open(partial, 'w').close()
  path = tmp_path / 'out.json'
  path.write_text('previous')
  for error, reason in [(errno.EACCES, f'no permission to write in {tmp_path}'),
                        (errno.EROFS, 'Read-only file system')]:
    with pytest.raises(UserError, match=rf'^{path}: not written \({reason}\); the previous one '
                                        r'is unchanged$'):
      with atomic_write.file(str(path)) as partial:
        raise OSError(error, os.strerror(error), partial)
  # An input the writer could not read is no failure to write the output: raised as it was.
  with pytest.raises(FileNotFoundError):
    with atomic_write.file(str(path)):
      open(tmp_path / 'missing_input.npy')
  assert path.read_text() == 'previous' and sorted(os.listdir(tmp_path)) == [
      'blocker', 'out.json', 'taken']


@pytest.mark.parametrize('code', [errno.ENOSPC, errno.EROFS, errno.EIO])
def test_a_foreign_writers_failure_is_advised_by_its_cause(tmp_path, code):
  """A writer that only quotes the system's text (safetensors' Rust errors, TFDS) is told to
  free space for a full disk only, not for a read-only or failing volume."""
  path = tmp_path / 'out.json'
  advice = '; free space and rerun' if code == errno.ENOSPC else ''
  with pytest.raises(UserError) as e:
    with atomic_write.file(str(path)):
      raise RuntimeError(f'I/O error: {os.strerror(code)} (os error {code})')
  assert str(e.value) == f'{path}: not written ({os.strerror(code)}); nothing was written ' \
                         f'there{advice}'
  assert os.listdir(tmp_path) == []
