"""vit/step_checksums.py on a folder laid out as a checkpoint step (no JAX): what it writes,
and each way a file can differ from what was saved, said in one line naming the file. The
same check in the readers and the resume of real checkpoints: tests/test_checkpoints.py."""
import json
import os
import re

import pytest

from vit import step_checksums


@pytest.fixture
def step(tmp_path):
  """A step's layout: nested files, an empty one, one larger than the read chunk."""
  root = tmp_path / '8'
  (root / 'state' / 'ocdbt.process_0' / 'd').mkdir(parents=True)
  (root / 'config').mkdir()
  (root / '_CHECKPOINT_METADATA').write_text('{"metrics": {}}')
  (root / 'config' / 'metadata').write_text('{"image_size": 28}')
  (root / 'state' / 'commit_success.txt').write_text('')
  data = os.urandom(step_checksums._CHUNK + 12345)
  (root / 'state' / 'ocdbt.process_0' / 'd' / 'ab12').write_bytes(data)
  step_checksums.write(str(root))
  return root


def test_writes_size_and_crc32_of_every_file(step):
  import zlib
  saved = json.loads((step / 'checksums.json').read_text())
  assert saved['version'] == 1 and saved['step'] == 8
  assert sorted(saved['files']) == ['_CHECKPOINT_METADATA', 'config/metadata',
                                    'state/commit_success.txt', 'state/ocdbt.process_0/d/ab12']
  data = (step / 'state' / 'ocdbt.process_0' / 'd' / 'ab12').read_bytes()
  assert saved['files']['state/ocdbt.process_0/d/ab12'] == {'bytes': len(data),
                                                            'crc32': zlib.crc32(data)}
  assert saved['files']['state/commit_success.txt'] == {'bytes': 0, 'crc32': 0}
  assert step_checksums.saved(str(step))
  step_checksums.check(str(step))  # Unchanged: no error.
  step_checksums.write(str(step))  # Again: its own file is not listed.
  assert sorted(json.loads((step / 'checksums.json').read_text())['files']) == sorted(
      saved['files'])
  assert not [n for n in os.listdir(step) if n.startswith('.')]  # No temporary left.


def test_bytes_changed_in_place_are_named(step):
  """The case orbax reads silently: same size, 8 bytes inverted past the first chunk."""
  path = step / 'state' / 'ocdbt.process_0' / 'd' / 'ab12'
  data = bytearray(path.read_bytes())
  middle = step_checksums._CHUNK + 100
  data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
  path.write_bytes(bytes(data))
  with pytest.raises(step_checksums.Mismatch, match=(
      r'^state/ocdbt\.process_0/d/ab12 is damaged: its CRC-32 differs from the one saved with '
      r'it in checksums\.json$')):
    step_checksums.check(str(step))


def test_a_changed_size_and_a_missing_file_are_named(step):
  path = step / 'state' / 'ocdbt.process_0' / 'd' / 'ab12'
  size = path.stat().st_size
  os.truncate(path, 100)
  with pytest.raises(step_checksums.Mismatch, match=(
      rf'^state/ocdbt\.process_0/d/ab12 has 100 bytes, {size:,} when saved$')):
    step_checksums.check(str(step))
  (step / 'config' / 'metadata').unlink()  # The first in path order is named.
  with pytest.raises(step_checksums.Mismatch,
                     match=r'^config/metadata is missing \(listed in checksums\.json\)$'):
    step_checksums.check(str(step))


def test_a_step_copied_or_renamed_to_another_number_is_named(step):
  """`cp -a 8 12`: every file matches, but the arrays' own step counter says 8; resumed or
  exported as step 12, the run's steps and the state's would disagree. A folder not named by
  a number records no step and is checked by its files only."""
  import shutil
  copy = step.parent / '12'
  shutil.copytree(step, copy)
  with pytest.raises(step_checksums.Mismatch, match=(
      r'^checksums\.json was saved with step 8, not 12: the folder was copied or renamed from '
      r'another step$')):
    step_checksums.check(str(copy))
  step_checksums.check(str(step) + os.sep)  # A trailing separator is the same folder.
  other = step.parent / 'export'
  shutil.copytree(step, other)
  os.remove(other / 'checksums.json')
  step_checksums.write(str(other))
  assert 'step' not in json.loads((other / 'checksums.json').read_text())
  step_checksums.check(str(other))


def test_a_file_added_later_is_not_checked(step):
  (step / 'state' / 'extra').write_text('x')
  step_checksums.check(str(step))


def test_a_step_without_checksums_reads_unchecked(step):
  (step / 'checksums.json').unlink()
  (step / 'config' / 'metadata').write_text('changed')
  assert not step_checksums.saved(str(step))
  step_checksums.check(str(step))


@pytest.mark.parametrize('text, said', [
    ('', 'empty'),
    ('{"version": 1, "files": {"a": {"bytes": 1', 'not valid (cut short or overwritten)'),
    ('{"version": 2, "files": {}}', 'not valid (cut short or overwritten)'),
    ('{"version": 1, "files": {"a": {"bytes": "1", "crc32": 0}}}',
     'not valid (cut short or overwritten)'),
    ('[1, 2]', 'not valid (cut short or overwritten)'),
    ('{"version": 1, "step": "8", "files": {}}', 'not valid (cut short or overwritten)'),
    ('\udcff', 'not valid (cut short or overwritten)'),
])
def test_a_damaged_checksums_file_is_named(step, text, said):
  (step / 'checksums.json').write_bytes(text.encode('utf-8', 'surrogateescape'))
  with pytest.raises(step_checksums.Mismatch, match=rf'^checksums\.json is {re.escape(said)}$'):
    step_checksums.check(str(step))


def test_a_checksums_file_that_cannot_be_read_is_named(step):
  """A folder in its place (a bad copy) was IsADirectoryError's own line in the readers'
  warning; it is named in plain words, as the other damage of the file is."""
  (step / 'checksums.json').unlink()
  (step / 'checksums.json').mkdir()
  with pytest.raises(step_checksums.Mismatch,
                     match=r'^checksums\.json could not be read \(Is a directory\)$'):
    step_checksums.check(str(step))


def test_under_checks_only_that_folder(step):
  (step / 'state' / 'commit_success.txt').write_text('x')
  step_checksums.check(str(step), under='config')  # The damage is elsewhere.
  with pytest.raises(step_checksums.Mismatch, match=r'^state/commit_success\.txt has 1 bytes'):
    step_checksums.check(str(step), under='state')


def test_an_unwritable_checksums_file_is_one_error_naming_it(step):
  """atomic_write's NotWritten (a UserError naming the file) when the file cannot be put in
  place (a folder of that name, which stops root too); no temporary is left beside it."""
  from vit import atomic_write
  (step / 'checksums.json').unlink()
  (step / 'checksums.json').mkdir()
  with pytest.raises(atomic_write.NotWritten, match=re.escape(str(step / 'checksums.json'))):
    step_checksums.write(str(step))
  assert sorted(os.listdir(step)) == ['_CHECKPOINT_METADATA', 'checksums.json', 'config',
                                      'state']
