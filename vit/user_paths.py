"""Paths as users type them: a leading `~` is their home directory, even where the shell leaves
it as it is.

Bash expands `~` only at the start of a word or after `=` in an assignment, so `--out ~/x` reaches
a command expanded but `--out=~/x`, `--config.init=mae:~/runs/mae` and `'~/x'` do not; Python
then reads `~` as an ordinary folder name, and a command writing there creates a folder named
`~` in the current directory (one that `rm -rf ~` would not remove: it removes the home). A
leading `//` is the root, as Linux reads it (`//tmp/x` is `/tmp/x`; a script's `"mae:/$DIR"` of an
absolute DIR writes one): tensorstore, which writes and reads orbax's checkpoints, refuses such a
path, so a run given `--workdir=//tmp/x` trained to its end and then failed at its save, and a
finished run given as `mae://tmp/x` read as damaged. Every path a user gives goes through here
where it enters: plain flags (`vit.cli`), `FORMAT:PATH` init specs (`vit.init_spec`), the data
paths of the config (`vit.data.pipeline`).
"""
from __future__ import annotations

import os

from vit.errors import ConfigError, UserError


def _problem(path: str) -> str:
  user = path[1:].split(os.sep, 1)[0]
  return (f'~{user} is not the home of any user here (a leading ~ is read as a home '
          'directory); write the path in full')


def expanded(path: str) -> str | None:
  """`path` with a leading `~` or `~user` replaced by that home directory (os.path.expanduser)
  and leading slashes made one (`//tmp/x` -> `/tmp/x`), any other path as it is; None for `~user`
  when no such user exists."""
  if path.startswith('//'):
    return '/' + path.lstrip('/')
  if not path.startswith('~'):
    return path
  home = os.path.expanduser(path)
  return None if home.startswith('~') else home


def expand(path: str, label: str) -> str:
  """`expanded(path)`. Raises UserError '{label} {path}: ~user is not the home of any user
  here ...' for a `~user` that names no user (left as it is, it would become a folder '~user'
  in the current directory)."""
  home = expanded(path)
  if home is None:
    raise UserError(f'{label} {path}: {_problem(path)}')
  return home


def expand_key(key: str, value: str | None, *, spec: bool = False) -> str | None:
  """`expanded(value)` for the config key `key` (None stays None); with `spec`, the PATH of a
  `KIND:PATH` value, returned alone (`data.source='array_record:~/x'` -> '/home/me/x'). Raises
  ConfigError naming config.KEY and its value for a `~user` that names no user."""
  if value is None:
    return None
  path = str(value).partition(':')[2] if spec else str(value)
  home = expanded(path)
  if home is None:
    raise ConfigError(key, value, _problem(path))
  return home


def expand_spec(spec: str, label: str | None = None) -> str:
  """`FORMAT:PATH` with PATH expanded (`expanded`); anything else as it is. Raises UserError
  '[{label} ]{spec}: ...' for a `~user` that names no user."""
  fmt, sep, path = spec.partition(':')
  if not sep:
    return spec
  home = expanded(path)
  if home is None:
    raise UserError(f'{label} {spec}: {_problem(path)}' if label else f'{spec}: {_problem(path)}')
  return f'{fmt}:{home}'
