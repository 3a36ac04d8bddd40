"""The segments of one run: every process that worked on it, with its commit, machine and the
wall and CPU seconds it spent, kept as `segments.json` in the run's workdir, so that a
snapshot's tar (study/snapshot.py) carries it to the next machine with the checkpoints.

A run's record gives their sums (`wall_s`, `cpu_s`, steps redone after a resume included: that
compute was spent) and the list. Records made before this file existed (cell (a), at
b3bdea2) give the last segment's time, commit and machine only (protocol.md, deviation 7).
"""
from __future__ import annotations

import json
import os
import threading
import time
from typing import Optional

from study import store
from vit.errors import UserError

FILE = 'segments.json'
EVERY_S = 60.0  # A segment killed without warning loses at most this much of its account.


def _load(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      segments = json.load(f)
    if isinstance(segments, list) and all(isinstance(s, dict) for s in segments):
      return segments
    reason = 'not a list of segments'
  except (OSError, ValueError) as e:
    reason = getattr(e, 'strerror', None) or type(e).__name__
  print(f'study: {path}: unreadable ({reason}); the run\'s earlier segments are not counted',
        flush=True)
  return []


class Ledger:
  """`with Ledger(rundir, commit, machine) as ledger:` appends this process's segment to the
  run's earlier ones and rewrites the file every `every_s` seconds and on exit; `totals()`
  then gives (wall seconds, CPU seconds) over all segments. `commit`: the code's commit (or
  None); `machine`: study.store.machine()'s dict."""

  def __init__(self, rundir: str, commit: Optional[str], machine: dict,
               every_s: float = EVERY_S):
    self.path = os.path.join(rundir, FILE)
    self.segments = _load(self.path)
    self.current = dict(commit=commit, machine=machine,
                        started=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                        wall_s=0.0, cpu_s=0.0)
    self.segments.append(self.current)
    self._wall, self._cpu = time.time(), time.process_time()
    self._every_s, self._stop = every_s, threading.Event()
    self._thread = threading.Thread(target=self._beat, daemon=True, name='study-segments')

  def __enter__(self) -> 'Ledger':
    self.update()
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    self._thread.join()
    self.update()

  def _beat(self) -> None:
    while not self._stop.wait(self._every_s):
      try:
        self.update()
      except (OSError, UserError):  # A full disk: kept in memory, written again on exit.
        pass

  def update(self) -> None:
    """Brings this segment's seconds up to now and rewrites the file (atomically)."""
    self.current.update(wall_s=round(time.time() - self._wall, 3),
                        cpu_s=round(time.process_time() - self._cpu, 3))
    store.write_json(self.path, self.segments)

  def totals(self) -> tuple[float, float]:
    return (sum(s.get('wall_s', 0.0) for s in self.segments),
            sum(s.get('cpu_s', 0.0) for s in self.segments))
