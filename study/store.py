"""Finished runs as one JSON file each (committed), and claims that keep workers apart.

`{results}/{run name}.json` holds the run's config, its digest, the result, the commit and the
machine it ran on, its wall and CPU time. A claim is a file created exclusively under
`{workdir}/claims/`, naming the process; a claim whose process is gone is taken over.
"""
from __future__ import annotations

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


def write(results_dir: str, record: dict) -> str:
  path = result_path(results_dir, record['name'])
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with atomic_write.file(path) as partial, open(partial, 'w') as f:
    json.dump(record, f, indent=1)
  return path


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def claim(workdir: str, name: str) -> bool:
  """True if this process now holds `name` (a stale claim of a dead process is replaced)."""
  path = os.path.join(workdir, 'claims', name + '.claim')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  me = f'{socket.gethostname()} {os.getpid()}'
  for _ in range(2):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      try:
        with open(path) as f:
          host, pid = f.read().split()
      except (OSError, ValueError):
        return False  # Being written by its owner right now.
      if host != socket.gethostname() or _alive(int(pid)):
        return False
      os.remove(path)  # Its process is gone: take the run over (it resumes from its work).
      continue
    with os.fdopen(fd, 'w') as f:
      f.write(me)
    return True
  return False


def release(workdir: str, name: str) -> None:
  try:
    os.remove(os.path.join(workdir, 'claims', name + '.claim'))
  except FileNotFoundError:
    pass


def commit_of(path: str) -> dict:
  """The git commit of the code that runs, and whether its tree had local changes."""
  def git(*args) -> Optional[str]:
    try:
      return subprocess.run(['git', '-C', path, *args], capture_output=True, text=True,
                            check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
      return None
  status = git('status', '--porcelain', '--untracked-files=no')
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
