"""Hands the heap that XLA's compiler frees back to the operating system.

Compiling a ViT train step on the CPU leaves a few hundred MB of freed heap that glibc keeps for
reuse; the step's activations, large blocks, are mapped fresh on top of it, so the process's
peak RSS carries both. `malloc_trim(0)` after each compilation returns it (ViT-Ti/16 at batch
32: peak RSS 2263 -> 2001 MiB, docs/performance.md run J). Without glibc this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

import jax

# jax._src.dispatch.BACKEND_COMPILE_EVENT: recorded after each compilation (or persistent-cache
# load), before the program first runs.
COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'
trims = 0  # How many times the heap was trimmed (tests check the listener fires).


@functools.cache
def _malloc_trim():
  try:
    return ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').malloc_trim
  except (OSError, AttributeError):  # No glibc (macOS, musl): nothing to trim.
    return None


def release_freed_heap() -> None:
  """malloc_trim(0): hands glibc's freed heap back to the operating system and counts it in
  `trims`; without glibc it does nothing."""
  global trims
  trim = _malloc_trim()
  if trim is not None:
    trim(0)
    trims += 1


def _on_event(event: str, duration_secs: float, **kwargs) -> None:
  del duration_secs, kwargs
  if event == COMPILE_EVENT:
    release_freed_heap()


@functools.cache
def release_after_compiles() -> None:
  """Trims the heap after every XLA compilation from now on (registers once)."""
  jax.monitoring.register_event_duration_secs_listener(_on_event)
