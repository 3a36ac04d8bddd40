"""CRC-32s of a checkpoint step's files, saved beside them and checked after a read.

orbax writes a step's arrays as zarr chunks in TensorStore's OCDBT files with no checksum of
their data (zstd frames carry none; orbax's zarr3 layout checks only its shard index), so bytes
changed in place on disk (a failing disk, a bad copy) were restored, fine-tuned from and
exported without a word in 12 of 13 files tried. After a step is complete, process 0 writes
`checksums.json` at the step's root (orbax reads only its items' folders): the size and the
CRC-32 (zlib's) of every other file of the step. A reader checks them after orbax's own read
succeeded, so that a file orbax finds cut short or missing is still named in orbax's terms
(vit/checkpoints.py: `unreadable_reason`) and this check adds only what orbax reads silently.
A step saved without the file (before this module, or cut by a kill between the step's
completion and the file's write) is read as before, unchecked.

The file's layout: {"version": 1, "step": 8, "files": {"state/d/0a1b...": {"bytes": 123,
"crc32": 456}}}, paths relative to the step with '/' separators; "step" is the step folder's
name when saved (absent in a folder not named by a number), so a step copied or renamed to
another number is told, not resumed or exported as that step.
"""
from __future__ import annotations

import json
import os
import zlib
from typing import Optional

from vit import atomic_write

FILE = 'checksums.json'
_VERSION = 1
_CHUNK = 1 << 20  # Bytes read at a time: a step's files can be larger than memory allows.


class Mismatch(Exception):
  """A step's file that differs from what was saved; its text is the reason, in plain words,
  naming the file relative to the step ('state/d/0a1b is damaged: ...')."""


def _crc32(path: str) -> int:
  crc = 0
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      crc = zlib.crc32(chunk, crc)
  return crc


def _files(step_dir: str) -> list[str]:
  """Every file below `step_dir` but this module's own, relative, '/'-separated, sorted."""
  out = []
  for folder, dirs, names in os.walk(step_dir):
    dirs.sort()
    for name in names:
      relative = os.path.relpath(os.path.join(folder, name), step_dir).replace(os.sep, '/')
      if relative != FILE:
        out.append(relative)
  return sorted(out)


def write(step_dir: str) -> None:
  """Writes `step_dir/checksums.json` (atomically: the file is whole or absent) for the files
  now in the complete step `step_dir`. Raises atomic_write.NotWritten (a UserError naming the
  file) when it cannot be written, OSError when a file of the step cannot be read."""
  files = {}
  for relative in _files(step_dir):
    path = os.path.join(step_dir, relative)
    files[relative] = {'bytes': os.path.getsize(path), 'crc32': _crc32(path)}
  saved_files = {'version': _VERSION, 'files': files}
  name = os.path.basename(os.path.normpath(step_dir))
  if name.isdigit():  # The step it was saved as: a copy under another number is not that step.
    saved_files['step'] = int(name)
  with atomic_write.file(os.path.join(step_dir, FILE)) as temporary:
    with open(temporary, 'w') as f:
      json.dump(saved_files, f, indent=1, sort_keys=True)


def saved(step_dir: str) -> bool:
  """Whether `step_dir` has checksums to check."""
  return os.path.isfile(os.path.join(step_dir, FILE))


def check(step_dir: str, under: Optional[str] = None) -> None:
  """Checks the files of `step_dir` against its `checksums.json`; nothing when the step has
  none. Files added since (none are, by orbax) are not checked. `under` (an item, 'config'):
  only the files of that folder of the step.

  Raises Mismatch naming the first file (in path order) that is missing, has another size or
  another CRC-32, or `checksums.json` itself when it does not parse, is not this layout or
  cannot be read (a folder of that name).
  """
  saved_files = _saved(step_dir)
  if saved_files is None:
    return
  name, step = os.path.basename(os.path.normpath(step_dir)), saved_files.get('step')
  if step is not None and name != str(step):
    # The arrays' own step counter still says `step`: resumed or exported as `name`, the run's
    # steps and its schedule would disagree.
    raise Mismatch(f'{FILE} was saved with step {step}, not {name}: the folder was copied or '
                   'renamed from another step')
  for relative, want in sorted(saved_files['files'].items()):
    if under is not None and not relative.startswith(under + '/'):
      continue
    path = os.path.join(step_dir, *relative.split('/'))
    if not os.path.isfile(path):
      raise Mismatch(f'{relative} is missing (listed in {FILE})')
    size = os.path.getsize(path)
    if size != want['bytes']:
      raise Mismatch(f'{relative} has {size:,} bytes, {want["bytes"]:,} when saved')
    if _crc32(path) != want['crc32']:
      raise Mismatch(f'{relative} is damaged: its CRC-32 differs from the one saved with it '
                     f'in {FILE}')


def _saved(step_dir: str) -> Optional[dict]:
  path = os.path.join(step_dir, FILE)
  try:
    with open(path, 'rb') as f:
      text = f.read()
  except FileNotFoundError:
    return None
  except OSError as e:  # A folder of that name, no permission: the step cannot be checked.
    raise Mismatch(f'{FILE} could not be read ({e.strerror or type(e).__name__})') from None
  try:
    saved_files = json.loads(text)
    files = saved_files['files']
    if saved_files['version'] != _VERSION or not all(
        isinstance(v['bytes'], int) and isinstance(v['crc32'], int) for v in files.values()):
      raise ValueError
    if not isinstance(saved_files.get('step', 0), int):
      raise ValueError
  except (ValueError, KeyError, TypeError, AttributeError):
    what = 'empty' if not text else 'not valid (cut short or overwritten)'
    raise Mismatch(f'{FILE} is {what}') from None
  return saved_files
