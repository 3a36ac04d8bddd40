"""Errors caused by the user's input. Entry points print them as one line, without a traceback."""
import errno
import os


class UserError(Exception):
  """A mistake in a config, a flag or an input file; the message names it."""


class ConfigError(UserError):
  """A config value at fault, as 'config.KEY=VALUE: PROBLEM'. `key` is dotted from the config's
  root without 'config.' ('mpp.bits'); `key`, `value` and `problem` stay attributes, so that a
  CLI can name its own flag instead of the key."""

  def __init__(self, key: str, value, problem: str):
    super().__init__(f'config.{key}={value!r}: {problem}')
    self.key, self.value, self.problem = key, value, problem  # For CLIs that name their flags.


class BadRecordError(UserError):
  """A fault of the data, not of a checkpoint, flag or config value: a record that cannot be
  used (an undecodable image, a label out of range) or a process whose records are all bad.
  The message is '{where}: {problem}', `where` naming the data ("tfds:NAME split 'train'") and
  `problem` the record, plus how to skip such records when skipping is the way out
  (`skippable`), in config words, which a CLI that sets the key from a flag names as its flag
  (vit.evaluators.fewshot)."""

  SKIP = 'set config.data.skip_bad_records=True to skip such records'

  def __init__(self, where: str, problem: str, skippable: bool = True):
    super().__init__(f'{where}: {problem}' + (f'; {self.SKIP}' if skippable else ''))
    self.where, self.problem, self.skippable = where, problem, skippable

  def __reduce__(self):  # Raised in a grain worker process, it is pickled to the main one.
    return type(self), (self.where, self.problem, self.skippable)


def counted(n: int, one: str, many: str) -> str:
  """'1 file', '0 files', '3 files': a count in a user's line with its noun agreeing."""
  return f'{n} {one if n == 1 else many}'


def write_reason(e: OSError) -> str:
  """Plain words for a failed write or folder creation at `e.filename`: 'F is a file, not a
  directory' where the path runs through a regular file F (ENOTDIR; EEXIST from os.makedirs),
  'F is a directory' (EISDIR), 'no permission to write in DIR' (EACCES, EPERM: a new file
  needs its folder's permission), else the system's own text (strerror)."""
  name = os.fsdecode(e.filename) if e.filename is not None else None
  if name is not None and e.errno in (errno.ENOTDIR, errno.EEXIST):
    probe = os.path.abspath(name)
    while not os.path.lexists(probe) and os.path.dirname(probe) != probe:
      probe = os.path.dirname(probe)
    if os.path.lexists(probe) and not os.path.isdir(probe):
      return f'{probe} is a file, not a directory'
  if e.errno == errno.EISDIR:  # os.replace names its target second.
    return f'{os.fsdecode(e.filename2 or e.filename)} is a directory'
  if name is not None and e.errno in (errno.EACCES, errno.EPERM):
    return f'no permission to write in {os.path.dirname(os.path.abspath(name))}'
  return e.strerror or str(e)


def require_directory(path: str, label: str, what: str = 'a directory', hint: str = '') -> None:
  """UserError '{label}: directory not found{hint}', or '{label}: a file, not {what}{hint}'
  when `path` is something else than a directory (a file given where a run or model directory
  is read)."""
  if os.path.isdir(path):
    return
  if os.path.exists(path):
    raise UserError(f'{label}: a file, not {what}{hint}')
  raise UserError(f'{label}: directory not found{hint}')


def require_file(path: str, label: str, what: str = 'a file', hint: str = '') -> None:
  """UserError '{label}: file not found{hint}', or '{label}: a directory, not {what}{hint}'."""
  if os.path.isfile(path):
    return
  if os.path.isdir(path):
    raise UserError(f'{label}: a directory, not {what}{hint}')
  raise UserError(f'{label}: file not found{hint}')
