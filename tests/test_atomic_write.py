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


def _old_folder(tmp_path):
  """tmp_path/out with an earlier output's a and b and a file of the user's; its contents."""
  out = tmp_path / 'out'
  out.mkdir()
  before = {'a': 'old a', 'b': 'old b', 'notes.txt': 'mine'}
  for name, text in before.items():
    (out / name).write_text(text)
  return out, before


def _tree(root):
  """Every file and folder under `root`, hidden ones too, relative to it, sorted."""
  return sorted(os.path.relpath(os.path.join(folder, name), root)
                for folder, folders, files in os.walk(root) for name in folders + files)


def _no_hard_links(monkeypatch):
  """A file system without hard links (vfat, some network mounts): link(2) fails with EPERM."""
  def link(src, dst, **kwargs):
    raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), src, None, dst)
  monkeypatch.setattr(os, 'link', link)


@pytest.mark.parametrize('hard_links', [True, False])
@pytest.mark.parametrize('failing', [2, 3])
def test_move_files_that_fails_half_way_puts_every_previous_file_back(tmp_path, monkeypatch,
                                                                       failing, hard_links):
  """A rename that failed half way (here EACCES on the 2nd or 3rd of a, ab, b, c) left the
  folder mixed, new a beside old b, under a line saying the previous one was unchanged. Now
  each replaced file is put back and each new one (ab) removed, nothing kept is left behind,
  and the line names --out, not the hidden staging folder the failed rename came from."""
  out, before = _old_folder(tmp_path)
  if not hard_links:
    _no_hard_links(monkeypatch)
  replace, moves = os.replace, []

  def replace_failing(src, dst):
    if os.path.dirname(src) == staging:  # A move into out; not a file kept or put back.
      moves.append(os.path.basename(src))
      if len(moves) == failing:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), src, None, dst)
    replace(src, dst)

  monkeypatch.setattr(os, 'replace', replace_failing)
  with pytest.raises(atomic_write.NotWritten) as e:
    with atomic_write.staging_dir(str(out)) as staging:
      for name in ('a', 'ab', 'b', 'c'):
        (tmp_path / os.path.basename(staging) / name).write_text(f'new {name}')
      atomic_write.move_files(staging, str(out))
  assert str(e.value) == (f'{out}: not written (no permission to write in {out}); the previous '
                          f'one is unchanged')
  assert moves == ['a', 'ab', 'b'][:failing]
  assert {p.name: p.read_text() for p in out.iterdir()} == before
  assert _tree(tmp_path) == ['out', 'out/a', 'out/b', 'out/notes.txt']  # No staging, no backup.


def test_move_files_interrupted_half_way_puts_every_previous_file_back(tmp_path, monkeypatch):
  """Ctrl-C, or SIGTERM (vit.cli's Terminated, after which vit.export says --out is unchanged),
  between two renames: undone as a failed one, and raised as it was."""
  out, before = _old_folder(tmp_path)
  replace = os.replace

  def replace_interrupted(src, dst):
    replace(src, dst)
    if src == os.path.join(staging, 'b'):
      raise KeyboardInterrupt  # After b moved in, before c.

  monkeypatch.setattr(os, 'replace', replace_interrupted)
  with pytest.raises(KeyboardInterrupt):
    with atomic_write.staging_dir(str(out)) as staging:
      for name in ('a', 'b', 'c'):
        (tmp_path / os.path.basename(staging) / name).write_text(f'new {name}')
      atomic_write.move_files(staging, str(out))
  assert {p.name: p.read_text() for p in out.iterdir()} == before
  assert _tree(tmp_path) == ['out', 'out/a', 'out/b', 'out/notes.txt']


@pytest.mark.parametrize('hard_links', [True, False])
def test_move_files_keeps_no_copy_of_what_it_replaced(tmp_path, monkeypatch, hard_links):
  out, before = _old_folder(tmp_path)
  if not hard_links:
    _no_hard_links(monkeypatch)
  with atomic_write.staging_dir(str(out)) as staging:
    for name in ('a', 'b', 'c'):
      (tmp_path / os.path.basename(staging) / name).write_text(f'new {name}')
    assert atomic_write.move_files(staging, str(out)) == ['a', 'b', 'c']
    assert os.listdir(staging) == []  # The previous a and b were kept in it until now.
  assert {p.name: p.read_text() for p in out.iterdir()} == {
      'a': 'new a', 'b': 'new b', 'c': 'new c', 'notes.txt': 'mine'}
  assert _tree(tmp_path) == ['out', 'out/a', 'out/b', 'out/c', 'out/notes.txt']


def test_move_files_that_cannot_be_undone_says_where_the_previous_files_are(tmp_path,
                                                                           monkeypatch):
  """A volume that fails during the move fails its undoing too: then the line does not say
  'unchanged', it says which files are not the previous ones and where those are kept (beside
  the staging folder, which is deleted)."""
  out, before = _old_folder(tmp_path)
  replace = os.replace

  def replace_failing(src, dst):  # Moving b in fails, and so does putting the previous a back.
    if src == os.path.join(staging, 'b') or (os.path.basename(src) == 'a'
                                             and os.path.dirname(src) != staging):
      raise OSError(errno.EIO, os.strerror(errno.EIO), src, None, dst)
    replace(src, dst)

  monkeypatch.setattr(os, 'replace', replace_failing)
  with pytest.raises(atomic_write.NotRestored) as e:
    with atomic_write.staging_dir(str(out)) as staging:
      for name in ('a', 'b'):
        (tmp_path / os.path.basename(staging) / name).write_text(f'new {name}')
      atomic_write.move_files(staging, str(out))
  kept = [name for name in os.listdir(tmp_path) if name != 'out']
  assert len(kept) == 1 and kept[0].startswith('.out-previous-')
  assert str(e.value) == (f'{out}: not written (Input/output error); undoing it failed '
                          f'(Input/output error): a not put back, the previous ones are in '
                          f'{tmp_path / kept[0]}')
  assert os.listdir(tmp_path / kept[0]) == ['a']
  assert (tmp_path / kept[0] / 'a').read_text() == 'old a'
  assert {p.name: p.read_text() for p in out.iterdir()} == {**before, 'a': 'new a'}


def test_move_files_over_a_directory_moves_nothing(tmp_path):
  out, before = _old_folder(tmp_path)
  (out / 'b').unlink()
  (out / 'b').mkdir()  # Renamed aside, it would have been replaced by the file b.
  with pytest.raises(atomic_write.NotWritten) as e:
    with atomic_write.staging_dir(str(out)) as staging:
      for name in ('a', 'b'):
        (tmp_path / os.path.basename(staging) / name).write_text(f'new {name}')
      atomic_write.move_files(staging, str(out))
  assert str(e.value) == f'{out}: not written ({out}/b is a directory); the previous one is ' \
                         f'unchanged'
  assert (out / 'a').read_text() == 'old a' and (out / 'b').is_dir()
  assert sorted(os.listdir(tmp_path)) == ['out']


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
