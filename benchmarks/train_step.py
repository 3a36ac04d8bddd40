"""Train-step benchmark: our JAX step vs timm and Hugging Face ViTs, side by side, on one machine.

    python -m benchmarks.train_step                      # all shapes, supervised and MPP steps
    python -m benchmarks.train_step --shapes=tiny-28 --variants=base,einsum_attention

Every (framework, shape, step, variant) lives in its own worker process (so each has its own
peak RSS and thread pools) and is built and warmed up once; then the workers take turns, round
after round, each timing a few steps per turn, so that load from other users of a shared machine
spreads over all of them alike. Figures are medians over rounds; only ratios within one run
mean much on a noisy machine. Prints a table, then the JSON (also written to --json).

Model FLOPs per image follow the usual count for a ViT layer with N tokens, width D and MLP
width M: 8ND^2 (QKV and output projections) + 4NDM (MLP) + 4N^2D (scores and weighted sum),
forward; x3 for a training step. The patch embedding and head are left out (under 2% here).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time


@dataclasses.dataclass(frozen=True)
class Shape:
  image: int
  channels: int
  patch: int
  hidden: int
  depth: int
  heads: int
  mlp: int
  batch: int
  classes: int
  steps_per_turn: int  # Train (and inference) steps a worker times per turn.

  @property
  def tokens(self) -> int:
    return (self.image // self.patch) ** 2 + 1

  def train_flops_per_image(self) -> float:
    n, d, m = self.tokens, self.hidden, self.mlp
    return 3 * self.depth * (8 * n * d * d + 4 * n * d * m + 4 * n * n * d)


SHAPES = {
    'tiny-28': Shape(28, 1, 4, 192, 6, 3, 768, 128, 10, 2),
    'Ti/16-224': Shape(224, 3, 16, 192, 12, 3, 768, 32, 1000, 1),
    'B/16-224': Shape(224, 3, 16, 768, 12, 12, 3072, 8, 1000, 1),
}
PEERS = {'timm': ('supervised',), 'hf': ('supervised', 'mpp')}


@dataclasses.dataclass(frozen=True)
class Case:
  shape: str
  step: str
  framework: str  # 'jax' | 'timm' | 'hf' | 'matmul'
  variant: str = 'base'

  @property
  def label(self) -> str:
    variant = '' if self.variant == 'base' else f' [{self.variant}]'
    return f'{self.shape} {self.step} {self.framework}{variant}'


def _serve(conn, case: Case) -> None:
  """A worker: builds its step, answers ('train'|'infer', n) with seconds, 'stop' with RSS."""
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  if case.variant.startswith('xla:'):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + case.variant[4:]).strip()
  try:
    runner, info = _build(case)
  except Exception as e:  # A peer not installed or unable to run this shape: say so, go on.
    conn.send(('error', f'{type(e).__name__}: {e}'))
    return
  conn.send(('ok', info))
  while True:
    command, n = conn.recv()
    if command == 'stop':
      conn.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
      return
    conn.send(getattr(runner, command)(n))


def _build(case: Case):
  if case.framework == 'matmul':
    from benchmarks import jax_step
    return _Matmul(jax_step.matmul_gflops), {}
  shape = SHAPES[case.shape]
  if case.framework == 'jax':
    from benchmarks import jax_step
    runner = jax_step.JaxStep(shape, case.step, case.variant)
    info = runner.info()
  else:
    from benchmarks import torch_peers
    runner = torch_peers.TorchStep(shape, case.step, case.framework)
    info = runner.info()
    info['first_step_s'] = runner.train(1)
  runner.train(2)  # Warm-up: allocator, caches, thread pools.
  runner.infer(1)
  return runner, info


class _Matmul:
  def __init__(self, fn):
    self.fn = fn

  def train(self, n: int) -> float:
    return self.fn()

  infer = train


class _Worker:
  def __init__(self, ctx, case: Case):
    self.case = case
    self.conn, child = ctx.Pipe()
    self.process = ctx.Process(target=_serve, args=(child, case), daemon=True)
    self.process.start()
    child.close()  # Else a worker that dies never gives this end an EOF.
    try:
      status, self.info = self.conn.recv()
    except EOFError:  # Died while building, e.g. XLA aborting on an unknown flag.
      self.process.join()
      status, self.info = 'error', f'worker exited with status {self.process.exitcode}'
    self.error = self.info if status == 'error' else None
    self.train_s, self.infer_s = [], []

  def ask(self, command: str, n: int):
    self.conn.send((command, n))
    return self.conn.recv()

  def turn(self, n: int) -> None:
    self.train_s.append(self.ask('train', n) / n)
    self.infer_s.append(self.ask('infer', n) / n)

  def stop(self) -> int:
    self.conn.send(('stop', 0))
    rss = self.conn.recv()
    self.process.join()
    return rss


def _cases(args) -> list[Case]:
  cases = []
  for shape in args.shapes:
    for step in args.steps:
      cases += [Case(shape, step, 'jax', v) for v in args.variants]
      cases += [Case(shape, step, p) for p in args.peers if step in PEERS[p]]
  return cases


def run(args) -> dict:
  ctx = multiprocessing.get_context('spawn')
  matmul = _Worker(ctx, Case('-', '-', 'matmul'))
  peaks, results = [], []
  for shape in args.shapes:
    workers = []
    for case in (c for c in _cases(args) if c.shape == shape):
      print(f'building {case.label} ...', file=sys.stderr, flush=True)
      worker = _Worker(ctx, case)
      if worker.error:
        print(f'  skipped: {worker.error}', file=sys.stderr, flush=True)
        results.append({'case': dataclasses.asdict(case), 'error': worker.error})
      else:
        workers.append(worker)
    for r in range(args.rounds):
      # Rotate who goes first, so no worker always follows the same neighbour.
      for worker in workers[r % len(workers):] + workers[:r % len(workers)]:
        worker.turn(SHAPES[shape].steps_per_turn)
      peaks.append(matmul.ask('train', 1))
      print(f'  {shape}: round {r + 1}/{args.rounds} done', file=sys.stderr, flush=True)
    results += [_summary(w, w.stop()) for w in workers]
  matmul.stop()
  peak = max(peaks)
  for result in results:
    if 'train_gflops_s' in result:
      result['fraction_of_matmul_peak'] = result['train_gflops_s'] / peak
  return {'machine': _machine(), 'matmul_peak_gflops_s': peak, 'matmul_gflops_s_per_round': peaks,
          'rounds': args.rounds, 'results': results}


def _summary(worker: _Worker, rss: int) -> dict:
  shape = SHAPES[worker.case.shape]
  train_s, infer_s = statistics.median(worker.train_s), statistics.median(worker.infer_s)
  train_img_s = shape.batch / train_s
  flops = shape.train_flops_per_image()
  return {'case': dataclasses.asdict(worker.case), **worker.info,
          'train_img_s': train_img_s, 'infer_img_s': shape.batch / infer_s,
          'train_step_s_per_round': worker.train_s, 'train_flops_per_image': flops,
          'train_gflops_s': flops * train_img_s / 1e9, 'peak_rss_bytes': rss}


def _machine() -> dict:
  model = ''
  try:
    with open('/proc/cpuinfo') as f:
      model = next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), '')
  except OSError:
    pass
  return {'cpu': model, 'cores': os.cpu_count(), 'load_average_at_end': os.getloadavg(),
          'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}


def table(report: dict) -> str:
  head = ('| case | train img/s | infer img/s | compile s (JAX) / first step s (torch) '
          '| step memory MiB (JAX) | peak RSS MiB | train GFLOP/s | fraction of matmul peak |')
  lines = [head, '|' + '---|' * 8]
  mib = lambda b: f'{b / 2 ** 20:.0f}' if b else '-'
  for r in report['results']:
    label = Case(**r['case']).label
    if 'error' in r:
      lines.append(f'| {label} | skipped: {r["error"]} |' + ' |' * 7)
      continue
    compile_s = r.get('compile_s', r.get('first_step_s'))
    lines.append(f'| {label} | {r["train_img_s"]:.1f} | {r["infer_img_s"]:.1f} | '
                 f'{compile_s:.1f} | {mib(r.get("step_memory_bytes"))} | '
                 f'{mib(r["peak_rss_bytes"])} | {r["train_gflops_s"]:.1f} | '
                 f'{r["fraction_of_matmul_peak"]:.2f} |')
  lines.append(f'\nfloat32 2048x2048 matmul peak (XLA, best of the run): '
               f'{report["matmul_peak_gflops_s"]:.1f} GFLOP/s')
  return '\n'.join(lines)


def _csv(kind, known=None):
  def parse(text):
    items = [s for s in text.split(',') if s]
    bad = [s for s in items if known is not None and s not in known]
    if bad:
      raise argparse.ArgumentTypeError(f'unknown {kind}: {", ".join(bad)} '
                                       f'(known: {", ".join(known)})')
    return items
  return parse


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--shapes', type=_csv('shape', SHAPES), default=list(SHAPES))
  p.add_argument('--steps', type=_csv('step', ('supervised', 'mpp')),
                 default=['supervised', 'mpp'])
  p.add_argument('--peers', type=_csv('peer', PEERS), default=list(PEERS),
                 help='PyTorch peers to time alongside (skipped when not installed)')
  p.add_argument('--variants', type=_csv('variant'), default=['base'],
                 help='our step\'s variants: base, no_donate, sync_every_step, '
                      'einsum_attention, bf16, remat, or xla:FLAGS (docs/performance.md)')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--json', help='also write the JSON report to this file')
  return p.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  report = run(args)
  print(table(report))
  text = json.dumps(report, indent=1)
  print(text)
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, 'w') as f:
      f.write(text + '\n')


if __name__ == '__main__':
  main()
