"""Restarts a training entry point with glibc's transparent-huge-page tunable.

XLA's CPU client allocates each step's temporaries afresh from a worker thread, and glibc serves
blocks that large with a new mapping. Where the kernel gives transparent huge pages only to
memory that asks for them (`madvise` mode, Debian's default), those mappings fault in 4 KiB at
a time: 334,000 page faults and about 0.55 s of system time per ViT-Ti/16 step on the CI
machine. `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` makes glibc ask for huge pages on its mappings:
1.29x the images/s of that step (docs/performance.md). glibc reads tunables only when a process
starts, hence a restart: once, before the heavy imports, only where it helps (Linux, glibc 2.35
or later, huge pages in `madvise` mode), and never when GLIBC_TUNABLES already names
glibc.malloc.hugetlb (set it to 0 to keep 4 KiB pages).
"""
from __future__ import annotations

import os
import sys
from typing import Mapping, Optional

TUNABLE = 'glibc.malloc.hugetlb'
_THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'


def _glibc_version() -> tuple[int, ...]:
  try:
    name, version = os.confstr('CS_GNU_LIBC_VERSION').split()  # 'glibc 2.36'
  except (AttributeError, ValueError, OSError):  # Not glibc (macOS, musl).
    return ()
  return tuple(int(part) for part in version.split('.')[:2]) if name == 'glibc' else ()


def _thp_mode() -> str:
  try:
    with open(_THP_MODE_FILE) as f:
      return f.read().split('[')[1].split(']')[0]  # 'always [madvise] never' -> 'madvise'
  except (OSError, IndexError):
    return ''


def restart_environment(environ: Mapping[str, str], thp_mode: str,
                        glibc_version: tuple[int, ...]) -> Optional[dict]:
  """The environment to restart with, or None when a restart would gain nothing."""
  tunables = environ.get('GLIBC_TUNABLES', '')
  if thp_mode != 'madvise' or glibc_version < (2, 35) or TUNABLE in tunables:
    return None
  return dict(environ, GLIBC_TUNABLES=':'.join(filter(None, [tunables, f'{TUNABLE}=1'])))


def environment_for_this_machine(environ: Mapping[str, str] = os.environ) -> Optional[dict]:
  """`restart_environment` for this machine's kernel and C library."""
  return restart_environment(environ, _thp_mode(), _glibc_version())


def restart_with_huge_pages() -> None:
  """Re-executes this process (same interpreter, arguments and directory) with the tunable."""
  environ = environment_for_this_machine()
  if environ is None or not sys.executable or not getattr(sys, 'orig_argv', None):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], environ)
