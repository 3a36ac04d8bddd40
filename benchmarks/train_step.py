"""Train-step benchmark: our JAX step vs timm and Hugging Face ViTs, side by side, on one machine.

    python -m benchmarks.train_step                      # all shapes, supervised and MPP steps
    python benchmarks/train_step.py --shapes=small-32    # by its path, too
    python -m benchmarks.train_step --process=shared     # every case in one process
    python -m benchmarks.train_step --shapes=tiny-28 --variants=base,einsum_attention
    python -m benchmarks.train_step --device=gpu --shapes=B/16-224 --batch=512 --variants=bf16

Every (framework, shape, step, variant) lives in its own worker process (so each has its own
peak RSS and thread pools) and is built and warmed up once; then the workers take turns, round
after round, each timing a few steps per turn, so that load from other users of a shared machine
spreads over all of them alike. Figures are medians over rounds; only ratios within one run
mean much on a noisy machine. Prints a table, then the JSON (also written to --json).

`--process=shared` builds every case in one worker process instead (our steps, the PyTorch
peers and the matmul yardstick side by side, as a notebook would hold them): XLA's and
PyTorch's thread pools then live in one process, and the XLA flags are the process's (our
`vit/xla_flags.py` defaults, also for the yardstick). The peak RSS is then the process's.
docs/performance.md explains why the two setups give different ratios.

Model FLOPs per image follow the usual count for a ViT layer with N tokens, width D and MLP
width M: 8ND^2 (QKV and output projections) + 4NDM (MLP) + 4N^2D (scores and weighted sum),
forward; x3 for a training step. Each objective's own model is counted
(`Shape.train_flops_per_image`): the supervised step and MPP's and SimMIM's run every layer on
all tokens, MPP and SimMIM add their linear per-patch heads (MPP: 512 colour classes in RGB, 8
in grey; SimMIM: the patch's pixels); MAE's encoder runs on the kept quarter of the patches and
the class token (13 of 50 at 28 px), its decoder's layers on all 50 tokens at the decoder's
width, with its input and pixel projections. transformers' MPP peer is a SimMIM model
(ViTForMaskedImageModeling) and is counted as one. The patch embedding and the supervised
classifier (one token) are left out: 0.1% to 3.5% of the count at these shapes, 10% for MAE at
224 px, so the count is never more than the work done.

On a GPU (`--device=gpu`) the workers run one after another rather than in turns (each would
otherwise hold the GPU's memory while the others run; a lent GPU has no neighbours to average
over), the peers train in bfloat16 autocast, the yardstick is a bfloat16 8192^3 matmul, and
the MFU is also given against the GPU's published dense bfloat16 peak.
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
from typing import Callable, Optional

if __package__ in (None, ''):  # Run by its path: make the repository importable.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vit import xla_flags  # noqa: E402


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
  def patches(self) -> int:
    return (self.image // self.patch) ** 2

  @property
  def tokens(self) -> int:
    """The patches and the class token, which every objective's model here has."""
    return self.patches + 1

  def train_flops_per_image(self, step: str = 'supervised') -> float:
    """FLOPs of one training image's forward and backward pass through the model of `step` (an
    objective of STEPS), as the module's docstring counts them."""
    patch_values = self.patch * self.patch * self.channels
    if step == 'mae':
      kept = mae_kept(self.patches) + 1
      d = MAE_DECODER
      forward = (layers_flops(self.depth, kept, self.hidden, self.mlp)
                 + 2 * kept * self.hidden * d['hidden_size']  # decoder_embed
                 + layers_flops(d['num_layers'], self.tokens, d['hidden_size'], d['mlp_dim'])
                 + 2 * self.tokens * d['hidden_size'] * patch_values)  # decoder_pred
      return 3 * forward
    forward = layers_flops(self.depth, self.tokens, self.hidden, self.mlp)
    if step in ('mpp', 'simmim'):
      outputs = mpp_classes(self.channels) if step == 'mpp' else patch_values
      forward += 2 * self.patches * self.hidden * outputs
    elif step != 'supervised':
      raise ValueError(f'unknown step {step!r}; known: {", ".join(STEPS)}')
    return 3 * forward


def layers_flops(depth: int, n: int, d: int, m: int) -> int:
  """Forward FLOPs of `depth` ViT layers on `n` tokens of width `d` with MLP width `m`."""
  return depth * (8 * n * d * d + 4 * n * d * m + 4 * n * n * d)


# The sizes of the objectives' models that jax_step.make_config gives them (each objective's
# config section's defaults; tests/test_benchmarks.py holds them to it) and torch_peers builds
# its peers with: here, so that counting FLOPs imports no JAX in the parent process.
MAE_MASK_RATIO = 0.75
MAE_DECODER = {'hidden_size': 32, 'num_layers': 2, 'num_heads': 2, 'mlp_dim': 128}
MPP_BITS = 3  # mpp.target=mean_color: (2 ** bits) ** channels colour classes per patch.


def mae_kept(patches: int) -> int:
  """Patches MAE's encoder sees, as mae.objective.num_kept rounds them (12 of 49)."""
  return int(patches * (1 - MAE_MASK_RATIO))


def mpp_classes(channels: int) -> int:
  """Outputs of MPP's head per patch: its colour classes (512 for RGB at 3 bits)."""
  return (2 ** MPP_BITS) ** channels


SHAPES = {
    # The Fashion-MNIST fine-tuning default (configs/finetune/fashion_mnist.py on the
    # configs/supervised/fashion_mnist.py backbone): 65 tokens, four heads of 16.
    'small-32': Shape(32, 3, 4, 64, 4, 4, 256, 128, 10, 4),
    # The same backbone at the pretraining size (configs/mpp, configs/mae, configs/simmim):
    # 28 px grey repeated to 3 channels, 49 patches.
    'small-28': Shape(28, 3, 4, 64, 4, 4, 256, 128, 10, 4),
    'tiny-28': Shape(28, 1, 4, 192, 6, 3, 768, 128, 10, 2),
    'Ti/16-224': Shape(224, 3, 16, 192, 12, 3, 768, 32, 1000, 1),
    'B/16-224': Shape(224, 3, 16, 768, 12, 12, 3072, 8, 1000, 1),
}
# Variants that set up the whole process (XLA flags, the heap trim): not in a shared process.
PROCESS_VARIANTS = ('no_xla_defaults', 'no_heap_trim')
PEERS = {'timm': ('supervised',), 'hf': ('supervised', 'mpp', 'mae', 'simmim')}
STEPS = ('supervised', 'mpp', 'mae', 'simmim')  # Objectives (vit.objective.resolve).
# Published dense bfloat16 tensor-core peaks (NVIDIA datasheets; "with sparsity" figures halved),
# looked up by a substring of the device kind, the first match winning.
GPU_PEAK_BF16_FLOPS = (('H100 PCIe', 756e12), ('H100', 989.4e12), ('H200', 989.4e12),
                       ('A100', 312e12), ('L4', 121e12))


@dataclasses.dataclass(frozen=True)
class Case:
  shape: str
  step: str
  framework: str  # 'jax' | 'timm' | 'hf' | 'matmul'
  variant: str = 'base'
  device: str = 'cpu'  # 'cpu' | 'gpu'
  batch: int = 0       # 0: the shape's own batch.

  @property
  def label(self) -> str:
    variant = '' if self.variant == 'base' else f' [{self.variant}]'
    batch = f' batch {self.batch}' if self.batch else ''
    return f'{self.shape}{batch} {self.step} {self.framework}{variant}'

  def shape_spec(self) -> Shape:
    shape = SHAPES[self.shape]
    return dataclasses.replace(shape, batch=self.batch) if self.batch else shape

  @property
  def model(self) -> str:
    """The objective whose model the case trains: transformers' MPP peer is SimMIM's."""
    return 'simmim' if (self.framework, self.step) == ('hf', 'mpp') else self.step

  def train_flops_per_image(self) -> float:
    return self.shape_spec().train_flops_per_image(self.model)


def _start(cases: list[Case], threads: int = 0) -> None:
  """The environment the trainers start with (vit.cli.run), before jax or torch is imported.

  Process-wide: in a shared process the first case's device and variant decide (parse_args
  refuses the variants that would differ). The matmul yardstick, alone in its process, keeps
  XLA's own defaults: its YNNPACK dot is the faster big matmul (497 vs 459 GFLOP/s on the CI
  machine), and a peak should be the best the machine gives.

  `threads=1` sets up the study's worker (study/run.py): the process on one core (the lowest
  it may use), XLA's ops and PyTorch's each on one thread. 0 leaves both libraries' pools.
  """
  case = cases[0]
  os.environ['JAX_PLATFORMS'] = jax_platforms(case.device)
  if case.device == 'gpu':
    # One worker at a time holds the GPU: let it take most of the memory ("as large as fits").
    os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.9')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  if threads == 1:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' '
                               + xla_flags.SINGLE_THREAD).strip()
    os.environ['OMP_NUM_THREADS'] = '1'  # PyTorch's intra-op pool: read when torch is imported.
  if case.variant.startswith('xla:'):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + case.variant[4:]).strip()
  alone = len(cases) == 1
  if not (alone and case.framework == 'matmul') and case.variant != 'no_xla_defaults':
    xla_flags.apply_defaults()
  if any(c.framework in ('jax', 'matmul') for c in cases) and case.variant != 'no_heap_trim':
    from vit import host_memory  # Imports jax (not in a PyTorch worker): after XLA_FLAGS.
    host_memory.release_after_compiles()


def jax_platforms(device: str) -> str:
  """The JAX_PLATFORMS a worker for `device` runs with: the user's own when set, else the
  device's (cuda for gpu)."""
  return os.environ.get('JAX_PLATFORMS', 'cuda' if device == 'gpu' else 'cpu')


_PLATFORM_NAMES = {'cuda': 'CUDA', 'rocm': 'ROCm', 'cpu': 'CPU', 'tpu': 'TPU'}


class NoBackend(RuntimeError):
  """JAX could not start a backend and said nothing about why (`no_backend`)."""


def no_backend(platforms: str, error: str) -> str:
  """Why JAX could not start the backends JAX_PLATFORMS=`platforms` names, where starting them
  raised `error` (its type) with no message: JAX 0.10 raises a bare AssertionError when
  JAX_PLATFORMS names a platform (cuda) whose plugin is not installed, which said nothing."""
  names = ' or '.join(_PLATFORM_NAMES.get(p, p) for p in platforms.split(',') if p)
  return (f'no {names + " " if names else ""}backend could start in this JAX installation '
          f'(JAX_PLATFORMS={platforms}; JAX raised {error} without a message)')


def _start_backend(device: str) -> None:
  """Starts JAX's backends, so that a failure to start that JAX leaves unexplained is told as
  one (`NoBackend`); a failure with a message is raised as it is."""
  import jax
  try:
    jax.devices()
  except Exception as e:
    if str(e).strip():
      raise
    raise NoBackend(no_backend(jax_platforms(device), type(e).__name__)) from None


def _error_text(e: Exception) -> str:
  """The line a worker sends for a case it could not build: the exception's type and message;
  the type alone when there is no message; a NoBackend's message alone (a sentence already)."""
  text = str(e).strip()
  if isinstance(e, NoBackend) or not text:
    return text or type(e).__name__
  return f'{type(e).__name__}: {text}'


def _serve(conn, cases: list[Case], threads: int = 0) -> None:
  """A worker process holding `cases`: reports ('ok', info) or ('error', why) for each as it is
  built, then answers (command, index, n): 'train'/'infer' with seconds for n steps, 'peaks'
  with (peak RSS, peak accelerator bytes), 'stop' with the same, then exits."""
  _start(cases, threads)
  runners = []
  for case in cases:
    try:
      runner, info = _build(case)
    except Exception as e:  # A peer not installed or unable to run this shape: say so, go on.
      runner, info = None, None
      conn.send(('error', _error_text(e)))
    else:
      conn.send(('ok', info))
    runners.append(runner)
  if all(runner is None for runner in runners):
    return  # Nothing to time, so the parent asks nothing: exit now, not at its EOF.
  while True:
    command, index, n = conn.recv()
    if command in ('peaks', 'stop'):
      runner = runners[index]
      conn.send((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                 runner.peak_device_bytes() if hasattr(runner, 'peak_device_bytes') else None))
      if command == 'stop':
        return
      continue
    conn.send(getattr(runners[index], command)(n))


def _build(case: Case):
  if case.framework == 'matmul':
    import functools
    from benchmarks import jax_step
    _start_backend(case.device)  # The first JAX work of a run: here its backend starts.
    gpu = case.device == 'gpu'
    fn = functools.partial(jax_step.matmul_gflops, n=8192 if gpu else 2048,
                           dtype='bfloat16' if gpu else 'float32')
    return _Matmul(fn), {'device_kind': jax_step.device_kind()}
  shape = case.shape_spec()
  if case.framework == 'jax':
    from benchmarks import jax_step
    runner = jax_step.JaxStep(shape, case.step, case.variant)
    info = runner.info()
  else:
    from benchmarks import torch_peers
    runner = torch_peers.TorchStep(shape, case.step, case.framework, device=case.device)
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


class _Process:
  """A worker process (see `_serve`) and the build status of each of its cases."""

  def __init__(self, ctx, cases: list[Case], threads: int = 0):
    self.conn, child = ctx.Pipe()
    self.process = ctx.Process(target=_serve, args=(child, cases, threads), daemon=True)
    self.process.start()
    child.close()  # Else a worker that dies never gives this end an EOF.
    self.statuses, self.open = [], len(cases)
    for case in cases:
      print(f'building {case.label} ...', file=sys.stderr, flush=True)
      try:
        self.statuses.append(self.conn.recv())
      except EOFError:  # Died while building, e.g. XLA aborting on an unknown flag.
        self.process.join()
        why = f'worker exited with status {self.process.exitcode}'
        self.statuses += [('error', why)] * (len(cases) - len(self.statuses))
        self.open = 0
        break

  def ask(self, command: str, index: int, n: int):
    self.conn.send((command, index, n))
    return self.conn.recv()

  def release(self, index: int) -> tuple[int, Optional[int]]:
    """The peaks; the process exits when its last live case is released."""
    self.open -= 1
    if self.open:
      return self.ask('peaks', index, 0)
    peaks = self.ask('stop', index, 0)
    self.process.join()
    return peaks


class _Worker:
  """One case in a worker process: times its turns."""

  def __init__(self, process: _Process, index: int, case: Case):
    self.process, self.index, self.case = process, index, case
    status, self.info = process.statuses[index]
    self.error = self.info if status == 'error' else None
    if self.error and process.open:
      process.open -= 1
    self.train_s, self.infer_s = [], []

  def ask(self, command: str, n: int):
    return self.process.ask(command, self.index, n)

  def turn(self, n: int) -> None:
    self.train_s.append(self.ask('train', n) / n)
    self.infer_s.append(self.ask('infer', n) / n)

  def stop(self) -> tuple[int, Optional[int]]:
    """(peak RSS, peak accelerator bytes or None) of the worker's process."""
    return self.process.release(self.index)


def _workers(ctx, cases: list[Case], shared: bool, threads: int = 0) -> list[_Worker]:
  """A process per case, or one process for all of them (`threads`: see `_start`)."""
  groups = [cases] if shared else [[case] for case in cases]
  workers = []
  for group in groups:
    process = _Process(ctx, group, threads)
    workers += [_Worker(process, i, case) for i, case in enumerate(group)]
  return workers


def _cases(args) -> list[Case]:
  cases = []
  for shape in args.shapes:
    for step in args.steps:
      cases += [Case(shape, step, 'jax', v, args.device, args.batch) for v in args.variants]
      cases += [Case(shape, step, p, 'base', args.device, args.batch)
                for p in args.peers if step in PEERS[p]]
  return cases


def run(args, cases: Optional[list[Case]] = None) -> dict:
  """Times `cases` (default: every shape x step x variant and peer of `args`)."""
  ctx = multiprocessing.get_context('spawn')
  matmul_case = Case('-', '-', 'matmul', device=args.device)
  peaks, results = [], []
  steps_per_turn = lambda shape: args.steps_per_turn or SHAPES[shape].steps_per_turn
  shared = args.process == 'shared'
  cases = _cases(args) if cases is None else cases
  threads = args.threads
  workers = _workers(ctx, [matmul_case] + cases if shared else [matmul_case], shared, threads)
  matmul = workers.pop(0)
  if matmul.error:
    if not matmul.process.open:  # Nothing built there: it exits by itself (`_serve`).
      matmul.process.process.join()
    raise SystemExit(f'error: JAX cannot run a matmul on --device={args.device}: {matmul.error}')
  kind = matmul.info['device_kind']
  if args.device == 'gpu':
    peaks += [matmul.ask('train', 1) for _ in range(3)]
    matmul.stop()
    for case in cases:
      worker = _checked(_workers(ctx, [case], False, threads), results)
      if worker:
        _rounds(worker, args.rounds, steps_per_turn(case.shape), case.shape)
        results.append(_summary(worker[0], *worker[0].stop()))
  else:
    for shape in dict.fromkeys(c.shape for c in cases):
      mine = workers if shared else _workers(ctx, [c for c in cases if c.shape == shape], False,
                                             threads)
      mine = _checked([w for w in mine if w.case.shape == shape], results)
      peaks += _rounds(mine, args.rounds, steps_per_turn(shape), shape, matmul)
      results += [_summary(w, *w.stop()) for w in mine]
    matmul.stop()
  peak = max(peaks)
  published = published_peak(kind)
  for result in results:
    if 'train_gflops_s' in result:
      result['fraction_of_matmul_peak'] = result['train_gflops_s'] / peak
      if args.device == 'gpu' and published:
        result['mfu_published_bf16_peak'] = result['train_gflops_s'] * 1e9 / published
  return {'machine': _machine(), 'device': args.device, 'device_kind': kind,
          'process': args.process, 'threads': threads or 'all',
          'published_bf16_peak_flops': published if args.device == 'gpu' else None,
          'matmul': '8192^3 bfloat16' if args.device == 'gpu' else '2048^3 float32',
          'matmul_peak_gflops_s': peak, 'matmul_gflops_s_per_round': peaks,
          'rounds': args.rounds, 'results': results}


def published_peak(device_kind: str) -> Optional[float]:
  """The published dense bf16 FLOP/s of a GPU named `device_kind`; None if not listed."""
  return next((f for name, f in GPU_PEAK_BF16_FLOPS if name in device_kind), None)


def _checked(workers: list[_Worker], results: list) -> list[_Worker]:
  """The workers that built; the others' errors go to the results."""
  good = []
  for worker in workers:
    if worker.error:
      print(f'  skipped {worker.case.label}: {worker.error}', file=sys.stderr, flush=True)
      results.append({'case': dataclasses.asdict(worker.case), 'error': worker.error})
    else:
      good.append(worker)
  return good


def _rounds(workers: list, rounds: int, steps: int, shape: str, matmul=None) -> list[float]:
  """Every worker times `steps` steps per round, in turns; the matmul peak after each round."""
  peaks = []
  for r in range(rounds):
    # Rotate who goes first, so no worker always follows the same neighbour.
    for worker in workers[r % max(len(workers), 1):] + workers[:r % max(len(workers), 1)]:
      worker.turn(steps)
    if matmul is not None:
      peaks.append(matmul.ask('train', 1))
    print(f'  {shape}: round {r + 1}/{rounds} done', file=sys.stderr, flush=True)
  return peaks


def _summary(worker: _Worker, rss: int, device_bytes: Optional[int]) -> dict:
  shape = worker.case.shape_spec()
  train_s, infer_s = statistics.median(worker.train_s), statistics.median(worker.infer_s)
  train_img_s = shape.batch / train_s
  flops = worker.case.train_flops_per_image()
  return {'case': dataclasses.asdict(worker.case), **worker.info,
          'train_img_s': train_img_s, 'infer_img_s': shape.batch / infer_s,
          'train_step_s_per_round': worker.train_s, 'train_flops_per_image': flops,
          'train_gflops_s': flops * train_img_s / 1e9, 'peak_rss_bytes': rss,
          'peak_device_bytes': device_bytes}


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
  gpu = report.get('device') == 'gpu'
  memory = 'peak GPU MiB' if gpu else 'peak RSS MiB'
  head = ('| case | train img/s | infer img/s | compile s (JAX) / first step s (torch) '
          f'| step memory MiB (JAX) | {memory} | train GFLOP/s | fraction of matmul peak |'
          + (' MFU (published peak) |' if gpu else ''))
  columns = 9 if gpu else 8
  lines = [head, '|' + '---|' * columns]
  mib = lambda b: f'{b / 2 ** 20:.0f}' if b else '-'
  for r in report['results']:
    label = Case(**r['case']).label
    if 'error' in r:
      lines.append(f'| {label} | skipped: {r["error"]} |' + ' |' * (columns - 1))
      continue
    compile_s = r.get('compile_s', r.get('first_step_s'))
    row = (f'| {label} | {r["train_img_s"]:.1f} | {r["infer_img_s"]:.1f} | '
           f'{compile_s:.1f} | {mib(r.get("step_memory_bytes"))} | '
           f'{mib(r["peak_device_bytes"] if gpu else r["peak_rss_bytes"])} | '
           f'{r["train_gflops_s"]:.1f} | {r["fraction_of_matmul_peak"]:.2f} |')
    if gpu:
      mfu = r.get('mfu_published_bf16_peak')
      row += f' {mfu:.1%} |' if mfu is not None else ' - |'
    lines.append(row)
  peak = report['published_bf16_peak_flops']
  lines.append(f'\n{report["matmul"]} matmul peak (XLA, best of the run): '
               f'{report["matmul_peak_gflops_s"]:.1f} GFLOP/s'
               + (f'; {report["device_kind"]}, published dense bf16 peak '
                  f'{peak / 1e12:.1f} TFLOP/s' if peak else ''))
  lines.append('train GFLOP/s counts the model of each case\'s objective (MAE: the encoder on the '
               'kept patches, the decoder on all tokens; python -m pydoc benchmarks.train_step)')
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


def _at_least(low: int, wanted: str) -> Callable[[str], int]:
  """An argparse type: an integer >= `low`, else one line saying `wanted`."""
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      value = low - 1
    if value < low:
      raise argparse.ArgumentTypeError(f'expected {wanted}, got {text!r}')
    return value
  return parse


# A positive integer (a count of rounds, a batch); an integer >= 0 (a count that may be none,
# as worker processes). Each refuses anything else in one line.
positive = _at_least(1, 'a positive integer')
non_negative = _at_least(0, 'an integer >= 0')


def parser(doc: str, module: str, results: str = 'docs/performance.md') -> argparse.ArgumentParser:
  """The parser of the benchmark `module` (benchmarks.NAME): its docstring's first line above
  the options, its usage examples (the docstring's `python ...` lines, as written) below them,
  and the document that gives its `results`."""
  lines = doc.strip().splitlines()
  examples = '\n'.join(line for line in lines if line.lstrip().startswith('python '))
  return argparse.ArgumentParser(
      description=lines[0], formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=f'examples:\n{examples}\n\nThe module\'s docstring says more (python -m pydoc '
             f'{module});\n{results} gives the results.')


def check_json(path: Optional[str]) -> None:
  """Exits with status 2 after one line naming --json and the reason when the report cannot be
  written at `path`, before any round runs: emit() would find it only after all of them."""
  from vit import atomic_write  # Standard library only: imports no JAX.
  reason = path and atomic_write.unwritable(path)
  if reason:
    print(f'error: --json {path}: not writable ({reason}); nothing was run', file=sys.stderr)
    sys.exit(2)


def parse_args(argv=None):
  p = parser(__doc__, 'benchmarks.train_step')
  p.add_argument('--shapes', type=_csv('shape', SHAPES), default=list(SHAPES),
                 help=f'comma-separated, of {", ".join(SHAPES)} (default: all)')
  p.add_argument('--steps', type=_csv('step', STEPS), default=['supervised', 'mpp'],
                 help=f'comma-separated, of {", ".join(STEPS)} (default: supervised,mpp)')
  p.add_argument('--peers', type=_csv('peer', PEERS), default=list(PEERS),
                 help='PyTorch peers to time alongside, skipped when not installed (default: '
                      f'{",".join(PEERS)})')
  p.add_argument('--variants', type=_csv('variant'), default=['base'],
                 help='comma-separated, of our step\'s variants: base, no_donate, sync_every_step, '
                      'einsum_attention, bf16, bf16_xla, bf16_cudnn, remat, no_xla_defaults, '
                      'no_heap_trim, flax_layer_norm, corruption_0.75 (MPP at 75%%), '
                      'scan:K (K steps per call), or xla:FLAGS (docs/performance.md) '
                      '(default: base)')
  p.add_argument('--rounds', type=positive, default=3,
                 help='rounds of turns; the figures are medians over them (default: 3)')
  p.add_argument('--device', choices=('cpu', 'gpu'), default='cpu',
                 help='gpu: JAX on CUDA, peers in bf16 autocast, workers one at a time '
                      '(default: cpu)')
  p.add_argument('--batch', type=positive, default=0,
                 help='global batch for every shape (default: each shape\'s own)')
  p.add_argument('--steps-per-turn', type=positive, default=0,
                 help='train steps a worker times per turn (default: the shape\'s own)')
  p.add_argument('--process', choices=('isolated', 'shared'), default='isolated',
                 help='isolated: a worker process per case; shared: every case, peers and '
                      'yardstick in one process (CPU only) (default: isolated)')
  p.add_argument('--threads', type=int, choices=(0, 1), default=0,
                 help='1: every worker as a study worker runs (study/run.py): one core, one '
                      'thread for XLA and PyTorch; 0 (default): the libraries\' thread pools')
  p.add_argument('--json', help='also write the JSON report to this file (its folder is checked '
                                 'before the first round)')
  args = p.parse_args(argv)
  if args.threads and args.device != 'cpu':
    p.error('--threads=1: CPU only')
  if args.process == 'shared':
    if args.device != 'cpu':
      p.error('--process=shared: CPU only (GPU workers run one at a time)')
    process_wide = [v for v in args.variants if v in PROCESS_VARIANTS or v.startswith('xla:')]
    if process_wide:
      p.error(f'--process=shared: variant {process_wide[0]} changes the whole process; '
              'measure it with --process=isolated')
  check_json(args.json)
  return args


def emit(report: dict, json_path) -> None:
  """Prints the JSON report and, given a path, writes it there (complete or not at all). A
  write that fails (a full disk) exits with status 2 after one line naming the file, as the
  vit.cli entry points do: the report stays printed above it."""
  text = json.dumps(report, indent=1)
  print(text, flush=True)
  if json_path:
    from vit import atomic_write  # Standard library only: imports no JAX.
    try:
      with atomic_write.file(json_path) as partial, open(partial, 'w') as f:
        f.write(text + '\n')
    except atomic_write.NotWritten as e:
      print(f'error: --json {e}', file=sys.stderr)
      sys.exit(2)


def main(argv=None) -> None:
  args = parse_args(argv)
  report = run(args)
  print(table(report))
  emit(report, args.json)


if __name__ == '__main__':
  main()
