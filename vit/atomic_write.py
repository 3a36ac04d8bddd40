"""Writing outputs beside the old ones and replacing them only when the new ones are complete.

A command that writes where a good output may already stand (a prepared dataset, an exported
checkpoint, predictions) writes to a hidden temporary name in the same folder (so the final
rename is atomic, POSIX rename(2)) and renames it over the old output only after the writer
returned. A writer that raises, or a process that is interrupted, leaves the old output as it
was; the temporary is deleted (except after SIGKILL, which leaves a hidden `.NAME-partial-*`).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _partial_prefix(path: str) -> str:
  return f'.{os.path.basename(os.path.normpath(path))}-partial-'


@contextlib.contextmanager
def file(path: str) -> Iterator[str]:
  """Yields a temporary file name beside `path` (same extension, for writers such as np.save
  that append one) to write to; on success renames it over `path`, on any error deletes it."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, temporary = tempfile.mkstemp(prefix=_partial_prefix(path),
                                   suffix=os.path.splitext(path)[1], dir=folder)
  os.close(fd)
  try:
    yield temporary
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would make the output private.
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


@contextlib.contextmanager
def staging_dir(path: str) -> Iterator[str]:
  """Yields a new empty directory beside `path` (same file system); deleted on exit, whatever
  happened. Move its results into place with `replace_dir` or `move_files` inside the block."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=_partial_prefix(path), dir=folder)
  try:
    yield staging
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def replace_dir(new: str, path: str) -> None:
  """Moves directory `new` to `path`. A directory already at `path` is renamed aside first and
  deleted only once `new` is in place; if that second rename fails, it is renamed back."""
  if not os.path.lexists(path):
    os.rename(new, path)
    return
  old = tempfile.mkdtemp(prefix=f'.{os.path.basename(os.path.normpath(path))}-old-',
                         dir=os.path.dirname(os.path.abspath(path)))
  aside = os.path.join(old, 'previous')
  os.rename(path, aside)
  try:
    os.rename(new, path)
  except BaseException:
    os.rename(aside, path)
    raise
  shutil.rmtree(old, ignore_errors=True)


def move_files(source: str, folder: str) -> list[str]:
  """Renames every file in `source` (files only, no sub-folders) into `folder` (created if
  missing), each replacing its namesake atomically; other files in `folder` stay. Returns the
  names moved."""
  os.makedirs(folder, exist_ok=True)
  names = sorted(os.listdir(source))
  for name in names:
    os.replace(os.path.join(source, name), os.path.join(folder, name))
  return names
