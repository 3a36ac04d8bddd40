"""Runs the pre-registered study: `python -m study.run --config configs/study/converged.py
--workdir runs/study` (docs/study/protocol.md).

A worker takes the runnable run of best priority that no other worker holds, runs it, writes its
result JSON under config.results and takes the next; it stops when nothing is left it can run.
`--config.workers=N` starts N single-threaded workers side by side (on 2 cores, two give about
14% more images/s than one two-threaded process). Rerunning resumes: finished runs are read
from their JSON, an interrupted run from its checkpoint. `--config.only_priority=K` leaves
runs of priority above K (study/protocol.py) alone; `--config.cells=b,c,d,e` takes only the
runs of those cells (the later cells, at a later commit, beside a worker of cell (a) at the
study's commit, with the same --workdir and results). Before any run or worker starts, the
study config and every trainer config it would build are validated (study/check.py): a bad
override is one line on stderr and exit status 2, whatever config.workers says. A SIGTERM or
Ctrl-C to a worker stops it with exit status 0: in a run's training steps the run saves and
stops ('stopped after step N'); otherwise the run in progress finishes and is recorded, and the
worker stops before the next ('study: worker stops: ...'). Rerunning continues.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jax
from absl import flags
from ml_collections import config_flags

from study import check, choices, configs, execute, execute_later, later_cells, protocol
from study import report, segments, snapshot, store
from study.protocol import Run
from vit import cli, xla_flags
from vit.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_integer('worker_index', -1, 'Internal: this process is worker K of config.workers.')
CODE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _check_finished(study, run: Run, record: dict, planned_digest: str) -> None:
  if record.get('digest') != planned_digest:
    raise UserError(f'{store.result_path(study.results, run.name)}: finished with another '
                    f'config than the protocol now gives (digest {record.get("digest")} vs '
                    f'{planned_digest}); the protocol changed: list it as a deviation')


def _settled(study, run: Run, results: dict, order: list[str]) -> Run:
  """`run` with the choices of a later cell's grid and wall time applied."""
  if not (run.settings_from or run.steps_from):
    return run
  changes = {**later_cells.grid_changes(study, later_cells.MAE),
             **later_cells.grid_changes(study, later_cells.SIMMIM)}
  return choices.resolve_settings(run, results, order, changes)


def _config(study, run: Run, results: dict, order: list[str]):
  if run.kind == 'pretrain':
    return configs.pretrainer(study, _settled(study, run, results, order))
  if run.kind == 'pixels':
    return configs.pixels(study, run)
  if run.kind == 'probe':
    return configs.probe(study, run)
  if run.kind == 'walltime':
    return configs.walltime(study, _settled(study, run, results, order))
  if run.kind == 'figures':
    return configs.figures(study, run)
  return configs.classifier(study, choices.resolve(run, results, order))


def _ready(study, run: Run, results: dict, workdir: str, kinds: dict) -> bool:
  if run.kind == 'export' or run.name in results or not all(d in results for d in run.deps):
    return False
  # Cell (e) reads a classifier's final weights: from their committed .npz or the workdir.
  return run.kind != 'figures' or kinds[run.source] == 'export' or os.path.exists(
      configs.final_weights_file(study, run.source)) or os.path.isdir(
      os.path.join(workdir, 'runs', run.source, 'checkpoints'))


def _execute(study, run: Run, config, workdir: str, results: dict) -> dict:
  rundir = os.path.join(workdir, 'runs', run.name)
  if run.kind == 'pixels':
    return execute.pixels(config)
  if run.kind == 'train':
    out = execute.train_classifier(configs.runnable(study, config), rundir)
    if run.backbone:  # The bytes it started from, beside the name in its config.
      out['backbone_sha256'] = results[run.backbone]['result'].get('sha256')
    return out
  if run.kind != 'pretrain':
    return _execute_later(study, run, config, workdir, results)
  if run.variant is not None:
    return _pretrain_later(study, run, config, rundir, results)
  exports = {r.steps: (r.name, configs.backbone_file(study, r.name))
             for r in protocol.pretraining(study)
             if r.kind == 'export' and r.deps == (run.name,)}
  return execute.pretrain_mpp(config, rundir, exports,
                              lambda name, result: _record(study, name, config, result),
                              lambda name: store.load_all(study.results).get(name))


OBJECTIVE_OF = {'mpp': 'mpp', 'transfer_mpp': 'mpp', 'transfer_supervised': 'supervised',
                'mae': 'mae', 'simmim': 'simmim'}


def _pretrain_later(study, run: Run, config, rundir: str, results: dict) -> dict:
  """A pretraining of cells (b)-(d) and its exports (their lengths resolved, the wall-time
  export included)."""
  plan = protocol.runs(study)
  order = [r.name for r in plan]
  exports: dict[int, list] = {}
  for r in plan:
    if r.kind == 'export' and r.deps[:1] == (run.name,):
      r = _settled(study, r, results, order)
      exports.setdefault(r.steps, []).append((r.name, configs.backbone_file(study, r.name)))
  return execute_later.pretrain(OBJECTIVE_OF[run.variant], config, rundir, exports,
                                lambda name, result: _record(study, name, config, result),
                                lambda name: store.load_all(study.results).get(name))


def _execute_later(study, run: Run, config, workdir: str, results: dict) -> dict:
  """A probe, the wall-time measurement or the figures (cells (b), (d), (e))."""
  if run.kind == 'probe':
    path = configs.backbone_file(study, run.source) if run.source else None
    out = execute_later.probe(config, run.variant or 'backbone', path)
    if run.source:
      out['backbone_sha256'] = results[run.source]['result'].get('sha256')
    return out
  if run.kind == 'walltime':
    c = config
    return execute_later.walltime(c.mpp, c.mae, c.rounds, c.steps, c.mpp_steps,
                                  c.steps_per_epoch)
  source = results[run.source]
  if 'file' in source['result']:  # An exported backbone.
    npz, weights = configs.backbone_file(study, run.source), dict(source['result'])
  else:  # A classifier's final weights, kept as an .npz once read from its workdir.
    npz = configs.final_weights_file(study, run.source)
    weights = execute_later.final_weights(os.path.join(workdir, 'runs', run.source), npz)
  out = os.path.join(study.figures.out, run.name.split('/', 1)[1])
  # An exported backbone is an MPP encoder: its rollout reads the patch mean, as its probes do.
  summary = execute_later.figures(npz, out, config.max_images,
                                  'patch_mean' if 'file' in source['result'] else 'auto')
  return dict(summary, out=out, weights_file=os.path.basename(npz),
              weights_sha256=weights.get('sha256'))


def _record(study, name: str, config, result: dict, **extra) -> None:
  record = dict(name=name, config=config.to_dict(), digest=configs.digest(config),
                result=result, **store.commit_of(CODE_DIR), machine=store.machine(),
                finished=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()), **extra)
  # An export is recorded twice: when written, then with its step's held-out MPP accuracy.
  again = os.path.exists(store.result_path(study.results, name))
  path = store.write(study.results, record)
  print(f'study: {"updated" if again else "finished"} {name} -> {path}', flush=True)


def _check_all_finished(study, every: list[Run], results: dict) -> None:
  """Every finished run was made with the config the protocol now gives it."""
  order = [r.name for r in every]
  for run in every:
    if run.name in results and run.kind != 'export':
      _check_finished(study, run, results[run.name],
                      configs.digest(_config(study, run, results, order)))


def preflight(study, source: str = '--config') -> int:
  """Before any run or worker starts: the study config and the trainer config of every run it
  may run validate (study/check.py), and every finished run still has its config; a bad
  override is one line on this process's stderr. Returns the number of configs checked.
  `source` names the study config in errors ('--config FILE')."""
  check.check_complete(study, source)  # Before any key is read.
  results = store.load_all(study.results)
  checked = check.check(study, lambda run, done, order: _config(study, run, done, order),
                        results)
  _check_all_finished(study, protocol.runs(study), results)
  return checked


class _StopRequest:
  """SIGTERM/SIGINT to a worker (a session's end): it finishes and records the run in
  progress, then stops before it starts another, exit status 0 as the loop's own stop.

  A signal during a run's training steps is the loop's (vit.checkpoints.StopSignal): it saves
  and stops the worker. One the loop does not stop for, at the run's last step or in its final
  evaluation, it passes on here; one after the loop, between runs or in a run that trains
  nothing (pixels, probes) comes here directly. A second signal ends the worker at once, as
  before. SIGTERM is left to JAX's preemption service in a job of several processes, and a
  signal the parent ignores stays ignored."""

  def __init__(self):
    self.received: int | None = None
    self.during: str | None = None  # The run in progress when it came (None: between runs).
    self.run: str | None = None  # The run in progress.
    self._previous = {}

  def __enter__(self) -> '_StopRequest':
    signals = [signal.SIGINT]
    if not (jax.distributed.is_initialized() and jax.process_count() > 1):
      signals.append(signal.SIGTERM)
    try:
      for sig in signals:
        if signal.getsignal(sig) is not signal.SIG_IGN:
          self._previous[sig] = signal.signal(sig, self._handle)
    except ValueError:  # Not the main thread: no handlers.
      pass
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.received is not None:  # A second signal: the user insists.
      signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
      os.kill(os.getpid(), signum)
      return
    self.received, self.during = signum, self.run
    print(f'study: {name} received{f" during {self.run}" if self.run else ""}: this worker '
          f'starts no other run (a second {name} ends it now)', flush=True)

  def stop_if_asked(self, next_run: str | None = None) -> None:
    """Ends the worker (SystemExit 0) with one line when a signal came; `next_run` is the run
    claimed and prepared, not started (released by the caller)."""
    if self.received is None:
      return
    name = signal.Signals(self.received).name
    if self.during is not None:
      what = f'{name} received during {self.during}; it finished and is recorded'
    elif next_run is not None:
      what = f'{name} received while {next_run} was prepared; it did not run'
    else:
      what = f'{name} received between runs'
    print(f'study: worker stops: {what}; rerun to continue', flush=True)
    raise SystemExit(0)


def work(study, workdir: str) -> int:
  """Runs what it can of the cells `config.cells` names; returns the number of runs finished
  by this worker. Every finished run it reads is checked against the protocol, whatever its
  cell (a later cell's runs read cell (a)'s). A SIGTERM or SIGINT lets the run in progress
  finish (or saves it, in its training steps) and ends the worker, exit status 0
  (`_StopRequest`)."""
  with _StopRequest() as stop:
    return _work(study, workdir, stop)


def _work(study, workdir: str, stop: _StopRequest) -> int:
  every = protocol.runs(study)
  order = [r.name for r in every]  # The protocol's order decides ties.
  kinds = {r.name: r.kind for r in every}
  cells = protocol.cells_of(study)
  plan = sorted((r for r in every if r.cell in cells), key=lambda r: (r.priority, r.name))
  done = 0
  while True:
    stop.stop_if_asked()
    results = store.load_all(study.results)
    _check_all_finished(study, every, results)
    ready = [r for r in plan if r.priority <= study.only_priority
             and _ready(study, r, results, workdir, kinds)]
    run = next((r for r in ready if store.claim(workdir, r.name)), None)
    if run is not None and os.path.exists(store.result_path(study.results, run.name)):
      store.release(workdir, run.name)  # Finished by another worker since this one looked.
      continue
    if run is None:
      waiting = [r.name for r in plan if r.priority <= study.only_priority
                 and r.kind != 'export' and r.name not in results]
      if not waiting or not store.held_by_others(workdir, order):
        print(f'study: worker stops ({len(waiting)} runs left, none runnable here)', flush=True)
        return done
      time.sleep(20)  # Others hold what is runnable, or work that this waits for.
      continue
    config = _config(study, run, results, order)
    print(f'study: starting {run.name} (priority {run.priority})', flush=True)
    digest = configs.digest(config)
    snapshot.restore(study, workdir, run.name, digest)
    snapshot.write_identity(workdir, run.name, digest)
    rundir = os.path.join(workdir, 'runs', run.name)
    try:
      stop.stop_if_asked(next_run=run.name)  # Came while it was prepared.
      stop.run = run.name
      # Every segment of the run (this one and any before a resume, on any machine) is timed.
      with segments.Ledger(rundir, store.commit_of(CODE_DIR)['commit'],
                           store.machine()) as ledger:
        result = _execute(study, run, config, workdir, results)
      wall_s, cpu_s = ledger.totals()
      _record(study, run.name, config, result, wall_s=wall_s, cpu_s=cpu_s,
              segments=ledger.segments, priority=run.priority)
    finally:
      stop.run = None
      store.release(workdir, run.name)  # After the record: no one redoes a finished run.
    done += 1


def _spawn(study, workdir: str) -> None:
  """config.workers single-threaded workers, each on its own core where there are enough."""
  procs, starts, cores = [], [], sorted(os.sched_getaffinity(0))
  flags_ = os.environ.get('XLA_FLAGS', '') + ' ' + xla_flags.SINGLE_THREAD
  for k in range(study.workers):
    log = open(os.path.join(workdir, f'worker{k}.log'), 'a')
    starts.append(log.tell())  # The log is kept across restarts: read only this start's part.
    cmd = [sys.executable, '-m', 'study.run', *sys.argv[1:], f'--worker_index={k}']
    env = dict(os.environ, XLA_FLAGS=flags_.strip())
    pin = ['taskset', '-c', str(cores[k % len(cores)])] if len(cores) >= study.workers else []
    procs.append(subprocess.Popen(pin + cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  cwd=CODE_DIR))
    print(f'study: worker {k} started (pid {procs[-1].pid}), log {log.name}', flush=True)
    time.sleep(5)  # Staggered: the first claims before the second looks.
  codes = [p.wait() for p in procs]
  if any(codes):
    k = next(k for k, code in enumerate(codes) if code)
    log = os.path.join(workdir, f'worker{k}.log')
    raise UserError(f'study: workers exited with {codes}; worker {k}: '
                    f'{_last_error(log, starts[k])} (log {log})')


def _last_error(log: str, start: int) -> str:
  """The last `error: ...` line a worker printed after byte `start` of its log (its one-line
  reason), without the prefix; 'no error line' where it printed none (killed by a signal)."""
  try:
    with open(log, errors='replace') as f:
      f.seek(start)
      lines = [ln.rstrip('\n') for ln in f if ln.startswith('error: ')]
  except OSError:
    lines = []
  return lines[-1][len('error: '):] if lines else 'no error line'


def main(argv):
  del argv
  study, workdir = FLAGS.config, os.path.abspath(FLAGS.workdir)
  if FLAGS.worker_index < 0:
    # Its workers need not: they run this config, checked.
    preflight(study, f'--config {config_flags.get_config_filename(FLAGS["config"])}')
  os.makedirs(workdir, exist_ok=True)
  if study.workers > 1 and FLAGS.worker_index < 0:
    _spawn(study, workdir)
  else:
    work(study, workdir)
  if FLAGS.worker_index < 0 and study.report:
    st = report.write(study, study.report)
    print('\n'.join(report.headline(st) + [''] + report.comparisons(st)), flush=True)
    print(f'study: wrote {study.report}', flush=True)


if __name__ == '__main__':
  cli.define_config_flags('configs/study/converged.py')
  cli.run(main)
