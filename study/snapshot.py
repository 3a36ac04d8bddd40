"""Long runs still going at a session's end, carried to the next machine through git.

`python -m study.snapshot --config ... --workdir DIR` writes, for every unfinished run with a
checkpoint in DIR, `{config.inflight}/{run}.tar` (its checkpoints and curve, a few MB). A
worker that takes that run on a machine without its workdir unpacks it first and resumes from
it instead of starting again (issue 24, item 7).
"""
from __future__ import annotations

import json
import os
import sys
import tarfile
from typing import Optional

from absl import flags

from study import protocol, store
from vit import atomic_write, cli
from vit.errors import UserError

FLAGS = flags.FLAGS


def _tar_path(study, name: str) -> str:
  return os.path.join(study.inflight, name.replace('/', '_') + '.tar')


def _rundir(workdir: str, name: str) -> str:
  return os.path.join(workdir, 'runs', name)


IDENTITY_FILE = 'study_run.json'  # In a run's directory: its name and config digest.


def write_identity(workdir: str, name: str, digest: str) -> None:
  """Marks the run directory with the run it holds, so a snapshot is only ever unpacked into
  the same run of the same config (not, say, the demo's run of the same name)."""
  rundir = _rundir(workdir, name)
  os.makedirs(rundir, exist_ok=True)
  with atomic_write.file(os.path.join(rundir, IDENTITY_FILE)) as partial, \
      open(partial, 'w') as f:
    json.dump(dict(name=name, digest=digest), f)


def _identity_in(path: str) -> Optional[dict]:
  with tarfile.open(path) as tar:
    try:
      return json.load(tar.extractfile(IDENTITY_FILE))
    except (KeyError, ValueError, AttributeError):
      return None


def restore(study, workdir: str, name: str, digest: str) -> bool:
  """Unpacks the run's snapshot when its run directory has no checkpoint and the snapshot was
  made by the same run of the same config (`digest`); True if it did."""
  path, rundir = _tar_path(study, name), _rundir(workdir, name)
  if not os.path.exists(path) or os.path.isdir(os.path.join(rundir, 'checkpoints')):
    return False
  if _identity_in(path) != dict(name=name, digest=digest):
    print(f'study: {path} ignored: not a snapshot of this run with this config', flush=True)
    return False
  os.makedirs(rundir, exist_ok=True)
  with tarfile.open(path) as tar:
    tar.extractall(rundir, filter='data')
  print(f'study: {name} resumes from {path}', flush=True)
  return True


def _kept(info: tarfile.TarInfo) -> Optional[tarfile.TarInfo]:
  """None for what a live run may still be writing, which a resume never reads: hidden files
  (its `.lock`, vit.atomic_write's temporaries) and unfinished checkpoint steps."""
  name = os.path.basename(info.name)
  return None if name.startswith('.') or name.endswith('.orbax-checkpoint-tmp') else info


def _pack(rundir: str, partial: str, attempts: int = 5) -> None:
  """Tars `rundir` into the file `partial`. Its run may be going on (a snapshot is taken at a
  session's end, beside the workers): a file gone while it was packed (a step orbax deleted
  past config.keep_checkpoints, or a finished one renamed) starts the tar again from a fresh
  listing, so that no step is packed in part."""
  for attempt in range(attempts):
    try:
      with tarfile.open(partial, 'w') as tar:
        for entry in sorted(os.listdir(rundir)):
          tar.add(os.path.join(rundir, entry), arcname=entry, filter=_kept)
      return
    except FileNotFoundError as e:
      if attempt == attempts - 1:
        raise UserError(f'{rundir}: changed while it was packed, {attempts} times ({e.filename} '
                        'gone); rerun study.snapshot') from None


def save(study, workdir: str) -> list[str]:
  """A tar of each unfinished run that has checkpoints; returns the files written."""
  finished, written = store.load_all(study.results), []
  for run in protocol.runs(study):
    rundir = _rundir(workdir, run.name)
    if run.name in finished or not os.path.isdir(os.path.join(rundir, 'checkpoints')):
      continue
    path = _tar_path(study, run.name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_write.file(path) as partial:
      _pack(rundir, partial)
    written.append(path)
  for f in os.listdir(study.inflight) if os.path.isdir(study.inflight) else []:
    name = next((r.name for r in protocol.runs(study) if _tar_path(study, r.name).endswith(f)),
                None)
    if name in finished:  # Finished since: its snapshot is no longer needed.
      os.remove(os.path.join(study.inflight, f))
  return written


def main(argv):
  del argv
  for path in save(FLAGS.config, os.path.abspath(FLAGS.workdir)):
    print(f'study: wrote {path}', file=sys.stderr)


if __name__ == '__main__':
  cli.define_config_flags('configs/study/converged.py')
  # Each tar is written whole or not at all (atomic_write), and nothing is trained here.
  cli.run(main, interrupted='interrupted: every snapshot written so far is complete, the rest '
                            'were not written; rerun to write them')
