"""Finished runs as one JSON file each (committed), and claims that keep workers apart.

`{results}/{run name}.json` holds the run's config, its digest, the result, the commit and the
machine it ran on, its wall and CPU time. A claim is an flock on `{workdir}/claims/{run}.claim`
(the file names the holder); the kernel drops it when the holder dies.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import socket
import subprocess
from typing import Optional

from vit import atomic_write
from vit.errors import UserError


def result_path(results_dir: str, name: str) -> str:
  return os.path.join(results_dir, name + '.json')


def load_all(results_dir: str) -> dict[str, dict]:
  """{run name: record} of every finished run; a file that does not parse is named."""
  out = {}
  for root, _, files in os.walk(results_dir):
    for f in sorted(files):
      if not f.endswith('.json') or f.startswith('.'):
        continue
      path = os.path.join(root, f)
      try:
        with open(path) as fh:
          record = json.load(fh)
      except (OSError, ValueError) as e:
        raise UserError(f'{path}: not a readable result ({e}); restore it from git') from None
      out[record['name']] = record
  return out


def write_json(path: str, value) -> None:
  """`value` as indented JSON at `path`, its folder made if missing, atomically (a reader
  sees the previous file or the new one, never a part)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with atomic_write.file(path) as partial, open(partial, 'w') as f:
    json.dump(value, f, indent=1)


def write(results_dir: str, record: dict) -> str:
  path = result_path(results_dir, record['name'])
  write_json(path, record)
  return path


_HELD: dict[str, int] = {}  # Claim files this process holds locked: name -> fd.


def _claim_path(workdir: str, name: str) -> str:
  return os.path.join(workdir, 'claims', name + '.claim')


def claim(workdir: str, name: str) -> bool:
  """True if this process now holds `name`: an exclusive flock on its claim file, which the
  kernel drops when the holder dies (a killed worker's run is taken over and resumes)."""
  path = _claim_path(workdir, name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    os.close(fd)
    return False
  os.ftruncate(fd, 0)
  os.write(fd, f'{socket.gethostname()} {os.getpid()}'.encode())
  _HELD[name] = fd
  return True


def release(workdir: str, name: str) -> None:
  del workdir
  fd = _HELD.pop(name, None)
  if fd is not None:
    os.close(fd)  # Drops the lock; the file stays (harmless, and racing no one).


def held_by_others(workdir: str, names) -> bool:
  """Whether another live process holds a claim on any of `names`."""
  for name in names:
    path = _claim_path(workdir, name)
    if name in _HELD or not os.path.exists(path):
      continue
    fd = os.open(path, os.O_RDONLY)
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
      return True
    finally:
      os.close(fd)
  return False


def commit_of(path: str, only: tuple[str, ...] = (), untracked: bool = False) -> dict:
  """The git commit of the code that runs, and whether its tree had local changes: `only`
  these paths when given (relative to the checkout), new files counted when `untracked`.
  Outside a git checkout: commit None, dirty False."""
  def git(*args) -> Optional[str]:
    try:
      return subprocess.run(['git', '-C', path, *args], capture_output=True, text=True,
                            check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
      return None
  status = git('status', '--porcelain', f'--untracked-files={"all" if untracked else "no"}',
               '--', *only)
  return dict(commit=git('rev-parse', 'HEAD'), dirty=bool(status))


def machine() -> dict:
  """What the run ran on: CPU model and count, the JAX backend and device."""
  import jax
  model = platform.processor()
  try:
    with open('/proc/cpuinfo') as f:
      model = next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return dict(cpu=model, cpus=os.cpu_count(), affinity=len(os.sched_getaffinity(0)),
              backend=jax.default_backend(), device=jax.devices()[0].device_kind,
              xla_flags=os.environ.get('XLA_FLAGS', ''))
