"""Writing outputs beside the old ones and replacing them only when the new ones are complete.

A command that writes where a good output may already stand (a prepared dataset, an exported
checkpoint, predictions) writes to a hidden temporary name in the same folder (so the final
rename is atomic, POSIX rename(2)) and renames it over the old output only after the writer
returned. A writer that raises, or a process that is interrupted, leaves the old output as it
was; the temporary is deleted. A write that fails (a full disk, a quota, a file size limit, no
permission, a read-only volume, a file where a folder should be: any OSError about the output,
its folder or its temporary) is a `NotWritten` (a `UserError`) naming the output and the reason,
saying that the previous output is unchanged; several files moved into a folder (`move_files`)
go in all or none, so that this stays true. The temporary's name holds the host and process
id of its writer (`.NAME-partial-HOST-PID-*`), so that what a killed process (SIGKILL) left is
removed by the next write beside it on that host, while a live writer's temporary is never
touched.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
from typing import Callable, Iterator, Optional

from vit.errors import UserError, write_reason

# Errors that mean "no room to write": the disk, a quota, a file size limit (ulimit -f), or a
# read-only or failing volume. Foreign writers (safetensors, TFDS) quote these texts.
_NO_ROOM = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def plain_mode(path: str) -> None:
  """Gives the file (or folder) at `path` the mode a plain open() (mkdir()) would have given it,
  0666 (0777) & ~umask: mkstemp, mkdtemp and some writers (safetensors' save_file) make theirs
  owner-only, which would make an output private to its writer."""
  os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


def _host() -> str:
  return re.sub(r'[^A-Za-z0-9.]', '_', socket.gethostname()) or 'host'


def _owned_prefix(path: str, kind: str = 'partial') -> str:
  """`.NAME-KIND-HOST-PID-`: who writes this temporary, so that a later run can tell a dead
  writer's leftover from a live one's."""
  return f'.{os.path.basename(os.path.normpath(path))}-{kind}-{_host()}-{os.getpid()}-'


def process_alive(pid: int) -> bool:
  """Whether process `pid` exists on this host (signal 0); another user's process counts as
  alive."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process: alive.
    pass
  return True


def remove_abandoned(path: str) -> list[str]:
  """Deletes the temporaries beside `path` that a writer on this host left when it was killed
  (its process is gone); returns their names. Another host's, or a live process's, stay."""
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    return []
  name = re.escape(os.path.basename(os.path.normpath(path)))
  owned = re.compile(rf'\.{name}-(partial|old)-{re.escape(_host())}-(\d+)-')
  removed = []
  for entry in sorted(os.listdir(folder)):
    match = owned.match(entry)
    if match and int(match[2]) != os.getpid() and not process_alive(int(match[2])):
      target = os.path.join(folder, entry)
      if match[1] == 'old' and os.path.isdir(os.path.join(target, 'previous')) and not \
          os.path.lexists(path):
        os.rename(os.path.join(target, 'previous'), path)  # Killed between the two renames.
      if os.path.isdir(target) and not os.path.islink(target):
        shutil.rmtree(target, ignore_errors=True)
      else:
        with contextlib.suppress(FileNotFoundError):
          os.remove(target)
      removed.append(entry)
  return removed


def failure_reason(e: BaseException) -> Optional[str]:
  """The reason, in plain words, when `e`, or an exception it was raised from (clu's AsyncError
  wraps its thread's), is a failed write in a background save (a checkpoint's, the TensorBoard
  events'): an OSError of any kind (`_plain`), or a foreign writer's error that gives the
  system's error code (TensorStore's os_error_code) or quotes its text for lack of room or a
  read-only or failing volume (_NO_ROOM). None for any other error: a bug, raised as it is."""
  return next((r for r in map(_own_failure_reason, _chain(e)) if r is not None), None)


def _chain(e: Optional[BaseException]) -> Iterator[BaseException]:
  """`e` and the exceptions it was raised from."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


def _own_failure_reason(e: BaseException) -> Optional[str]:
  if isinstance(e, OSError) and e.errno is not None:
    return _plain(e)
  if isinstance(e, OSError):  # No errno: numpy's short write, or a library's own check.
    return _room_reason(e) or str(e)
  code = re.search(r"\[os_error_code='(\d+)'\]", str(e))  # TensorStore's, naming its file.
  if code:
    named = re.search(r'local file "([^"]+)"', str(e))
    return _plain(OSError(int(code[1]), os.strerror(int(code[1])), named and named[1]))
  return _room_reason(e)


def _room_reason(e: BaseException) -> Optional[str]:
  """The system's text when `e` is a failed write for lack of room, or on a read-only or
  failing volume (_NO_ROOM), also quoted by a foreign writer (safetensors, TFDS); else None."""
  if isinstance(e, OSError) and e.errno in _NO_ROOM:
    return e.strerror
  if isinstance(e, OSError) and e.errno is None and 'written' in str(e):
    # numpy's short write ('N requested and M written') keeps no errno.
    return f'{e}: a short write (a full disk or a file size limit)'
  text = str(e)
  return next((os.strerror(code) for code in _NO_ROOM if os.strerror(code) in text), None)


def _plain(e: OSError) -> str:
  """`write_reason`, with the file when that is the system's bare text (EIO: which disk), unless
  the cause is a lack of room, whichever file hit it."""
  reason = write_reason(e)
  if reason != e.strerror or e.filename is None or e.errno in _FREE_SPACE:
    return reason
  return f'{reason}: {os.fsdecode(e.filename)}'


# The failures that more room would cure: the advice says so.
_FREE_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_ADVICE = '; free space and rerun'


def room_would_help(reason: str) -> bool:
  """Whether more room may cure the failure `failure_reason` gave as `reason`: a full disk, a
  quota, a file size limit, a short write; not a read-only (EROFS) or failing (EIO) volume, no
  permission, a file in a folder's place. Read from the text, as it may come from another
  process (vit.checkpoints)."""
  return 'a short write' in reason or any(os.strerror(code) in reason for code in _FREE_SPACE)


def _about(e: OSError, path: str) -> bool:
  """Whether `e` is a failure to write `path`: its own name, a folder above it, a file under it
  (a staged directory's), or its temporaries (`.NAME-...` beside it); or a write error that
  names no file (a full disk seen by write(2)). An input the writer read is none of these."""
  if e.errno in _NO_ROOM:
    return True
  target = os.path.abspath(path)
  for name in (e.filename, e.filename2):
    if name is None or not isinstance(name, (str, bytes, os.PathLike)):
      continue
    name = os.path.abspath(os.fsdecode(name))
    if (name == target or target.startswith(name + os.sep) or name.startswith(target + os.sep)
        or _temporary(name, path)):
      return True
  return False


def _temporary(name: str, path: str) -> bool:
  """Whether the absolute `name` is one of `path`'s temporaries (`.NAME-...` beside it) or lies
  in one (a staging folder's file)."""
  folder = os.path.dirname(os.path.abspath(path))
  hidden = f'.{os.path.basename(os.path.abspath(path))}-'
  return (name.startswith(folder + os.sep)
          and os.path.relpath(name, folder).split(os.sep)[0].startswith(hidden))


def _to_destination(e: OSError, staged: Callable[[str], bool]) -> OSError:
  """`e` naming the destination of its rename where its source is a staged file (`staged` of
  the source's absolute name is True), so that `write_reason` names what the user gave: a
  failed os.replace of a staged file into --out names the staged file first, and 'no
  permission to write in DIR' named the hidden staging folder, deleted by then, not --out."""
  if e.filename2 is None or not isinstance(e.filename, (str, bytes, os.PathLike)):
    return e
  if not staged(os.path.abspath(os.fsdecode(e.filename))):
    return e
  return OSError(e.errno, e.strerror, e.filename2)


def _failure(e: BaseException, path: str) -> Optional[tuple[str, str]]:
  """(reason, advice) for a failed write of `path`, else None (another failure: a bug, a bad
  input); advice is '' or '; free space and rerun'."""
  for error in _chain(e):
    if isinstance(error, OSError) and _about(error, path):
      advice = _ADVICE if error.errno in _FREE_SPACE else ''
      return write_reason(_to_destination(error, lambda name: _temporary(name, path))), advice
  # A foreign writer's error that quotes the system's text.
  reason = next((r for r in map(_room_reason, _chain(e)) if r is not None), None)
  if reason is None:
    return None
  return reason, _ADVICE if room_would_help(reason) else ''


class NotWritten(UserError):
  """A failed write of the output `path` for `reason` (plain words): '{path}: not written
  ({reason}); the previous one is unchanged' (or 'nothing was written there'), and '; free
  space and rerun' when room would help. A training run tells it with the step it stopped at
  (vit.training.loop)."""

  def __init__(self, path: str, reason: str, existed: bool, advice: str):
    kept = 'the previous one is unchanged' if existed else 'nothing was written there'
    super().__init__(f'{path}: not written ({reason}); {kept}{advice}')
    self.path, self.reason, self.advice = path, reason, advice


class NotRestored(UserError):
  """A `move_files` that failed half way and could not be undone (a volume that failed or
  became read-only meanwhile): '{folder}: not written ({reason}); undoing it failed ({why}):
  {names} not put back, the previous ones are in {kept}' and/or '{names} left from the new
  output'. The folder is mixed, so it is not a NotWritten ('the previous one is unchanged'
  would be false): `_reported` passes it on as it is."""


@contextlib.contextmanager
def _reported(path: str, existed: bool) -> Iterator[None]:
  """Turns a failed write of `path` (`_about`) into one line naming it and the reason."""
  try:
    yield
  except Exception as e:
    failure = None if isinstance(e, NotRestored) else _failure(e, path)
    if failure is None:
      raise
    raise NotWritten(path, failure[0], existed, failure[1]) from None


def unwritable(path: str) -> Optional[str]:
  """Why `file(path)` could not write `path` (None when it could), creating nothing: the
  nearest folder above it that exists must take a new file (`file` makes the missing ones
  below it). For outputs checked before the work that makes them (minutes of it)."""
  target = os.path.abspath(path)
  if os.path.isdir(target):
    return f'{target} is a directory'
  folder = os.path.dirname(target)
  while not os.path.lexists(folder):
    folder = os.path.dirname(folder)
  if not os.path.isdir(folder):
    return f'{folder} is a file, not a directory'
  try:
    # Nameless where the system allows (O_TMPFILE): nothing is left behind, even if killed.
    with tempfile.TemporaryFile(dir=folder):
      pass
  except OSError as e:
    reason = write_reason(e)
    return f'{reason}: {folder}' if reason == e.strerror else reason
  return None


@contextlib.contextmanager
def file(path: str) -> Iterator[str]:
  """Yields a temporary file name beside `path` (same extension, for writers such as np.save
  that append one) to write to; on success renames it over `path`, on any error deletes it."""
  folder = os.path.dirname(os.path.abspath(path))
  existed = os.path.lexists(path)
  with _reported(path, existed):
    os.makedirs(folder, exist_ok=True)
    remove_abandoned(path)
    fd, temporary = tempfile.mkstemp(prefix=_owned_prefix(path),
                                     suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
      yield temporary
      plain_mode(temporary)  # mkstemp's 0600 would make the output private.
      os.replace(temporary, path)
    finally:
      if os.path.exists(temporary):
        os.remove(temporary)


@contextlib.contextmanager
def staging_dir(path: str) -> Iterator[str]:
  """Yields a new empty directory beside `path` (same file system); deleted on exit, whatever
  happened. Move its results into place with `replace_dir` or `move_files` inside the block."""
  folder = os.path.dirname(os.path.abspath(path))
  existed = os.path.lexists(path)
  with _reported(path, existed):
    os.makedirs(folder, exist_ok=True)
    remove_abandoned(path)
    staging = tempfile.mkdtemp(prefix=_owned_prefix(path), dir=folder)
    try:
      yield staging
    finally:
      shutil.rmtree(staging, ignore_errors=True)


def replace_dir(new: str, path: str) -> None:
  """Moves directory `new` to `path`. A directory already at `path` is renamed aside first and
  deleted only once `new` is in place; if that second rename fails, it is renamed back. Its
  files and folders get the modes a plain open() and mkdir() would give (`plain_mode`)."""
  for folder, _, files in os.walk(new):  # As a plain mkdir/open would make them (plain_mode).
    for entry in (folder, *(os.path.join(folder, f) for f in files)):
      if not os.path.islink(entry):
        plain_mode(entry)
  if not os.path.lexists(path):
    os.rename(new, path)
    return
  old = tempfile.mkdtemp(prefix=_owned_prefix(path, 'old'),
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
  missing), each replacing its namesake, with the mode a plain open() would give (`plain_mode`);
  other files in `folder` stay. Returns the names moved, sorted.

  All or none: an export's or an inspection's files are one output, and a folder left with some
  new files beside some old ones passed for either. Each namesake is first kept in a hidden
  folder inside `source` (a hard link, or where the file system has none the file itself,
  renamed there), so when a rename fails half way (EXDEV, EACCES, ENOSPC) or the process is
  interrupted (KeyboardInterrupt, vit.cli's Terminated), every replaced file is put back and
  every new one removed before the error is raised again as it was: `staging_dir` then says,
  truly, that the previous output is unchanged. Once all are in, the kept ones are deleted.

  Raises IsADirectoryError before anything moves when a namesake is a directory (renamed aside,
  it would have been replaced by a file); NotRestored, one line naming `folder`, when undoing
  fails too (the volume failed meanwhile): the previous files not put back are left in a
  '.FOLDER-previous-*' folder beside `source`, named in the line. A process killed (SIGKILL)
  half way leaves `folder` mixed, as any move of several files would; on a file system without
  hard links, the one file being replaced at that instant lies in `source`, which the next
  write deletes (`remove_abandoned`)."""
  os.makedirs(folder, exist_ok=True)
  names = sorted(os.listdir(source))
  for name in names:
    target = os.path.join(folder, name)
    if os.path.isdir(target) and not os.path.islink(target):
      raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR),  # As os.replace says it.
                              os.path.join(source, name), None, target)
  kept = tempfile.mkdtemp(prefix='.previous-', dir=source)
  try:
    for name in names:
      _keep(os.path.join(folder, name), os.path.join(kept, name))
      plain_mode(os.path.join(source, name))
      os.replace(os.path.join(source, name), os.path.join(folder, name))
  except BaseException as e:
    _undo(source, folder, names, kept, e)
    raise
  shutil.rmtree(kept, ignore_errors=True)
  return names


# link(2)'s errors for "no hard link here": the file system has none (EPERM, EOPNOTSUPP), the
# file has too many (EMLINK), or fs.protected_hardlinks refuses another user's file (EPERM).
_NO_LINK = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK)


def _keep(path: str, copy: str) -> None:
  """Keeps the file (or symbolic link) at `path`, if any, as `copy`: a hard link, which leaves
  `path` in place and costs no room; where none can be made, `path` renamed to `copy`."""
  if not os.path.lexists(path):
    return
  try:
    os.link(path, copy, follow_symlinks=False)
  except OSError as e:
    if e.errno not in _NO_LINK:
      raise
    os.replace(path, copy)


def _undo(source: str, folder: str, names: list[str], kept: str, error: BaseException) -> None:
  """Puts back in `folder` every file kept in `kept` and removes every one of `names` that was
  moved in without a namesake (gone from `source`, none kept), whatever step `error` stopped:
  read from the files, not from a count, as an interrupt may fall between two renames.
  Deletes `kept` when all is undone; raises NotRestored (from `error`) when not."""
  lost, left, why = [], [], None
  for name in reversed(names):
    target, copy = os.path.join(folder, name), os.path.join(kept, name)
    try:
      if os.path.lexists(copy) and _same_file(copy, target):
        with contextlib.suppress(OSError):  # Not moved in yet: `target` is still the previous.
          os.remove(copy)  # (A rename between two links of one file would do nothing.)
      elif os.path.lexists(copy):
        os.replace(copy, target)
      elif not os.path.lexists(os.path.join(source, name)) and os.path.lexists(target):
        if os.path.isdir(target) and not os.path.islink(target):
          shutil.rmtree(target)
        else:
          os.remove(target)
    except OSError as e:
      (lost if os.path.lexists(copy) else left).append(name)
      why = why or e
  if why is None:
    shutil.rmtree(kept, ignore_errors=True)
    return
  parts = []
  if lost:
    kept = _out_of_source(kept, source, folder)
    parts.append(f'{", ".join(sorted(lost))} not put back, the previous ones are in {kept}')
  if left:
    parts.append(f'{", ".join(sorted(left))} left from the new output')
    if not lost:
      shutil.rmtree(kept, ignore_errors=True)
  staged = lambda name: name.startswith(os.path.abspath(source) + os.sep)
  reason = (write_reason(_to_destination(error, staged)) if isinstance(error, OSError)
            else str(error) or type(error).__name__)
  raise NotRestored(f'{folder}: not written ({reason}); undoing it failed '
                    f'({write_reason(_to_destination(why, staged))}): {"; ".join(parts)}'
                    ) from error


def _same_file(a: str, b: str) -> bool:
  """Whether `a` and `b` are links of one file (not following symbolic links)."""
  return os.path.lexists(b) and os.path.samestat(os.lstat(a), os.lstat(b))


def _out_of_source(kept: str, source: str, folder: str) -> str:
  """`kept` renamed beside `source`, where `staging_dir`'s clean-up (and `remove_abandoned`'s)
  does not reach, as '.FOLDER-previous-*'; where that fails too, `kept` as it is."""
  try:
    safe = tempfile.mkdtemp(prefix=f'.{os.path.basename(os.path.normpath(folder))}-previous-',
                            dir=os.path.dirname(os.path.abspath(source)))
  except OSError:
    return kept
  try:
    os.rename(kept, safe)  # Over the empty folder mkdtemp made: atomic, same file system.
  except OSError:
    with contextlib.suppress(OSError):
      os.rmdir(safe)
    return kept
  return safe
