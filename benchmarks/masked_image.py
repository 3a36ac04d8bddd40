"""MAE, SimMIM and MPP train steps side by side, with transformers' peers, at the study's shape.

    python -m benchmarks.masked_image --json docs/bench/cpu_masked_image.json
    python -m benchmarks.masked_image --device=gpu --batch=1024
    python -m benchmarks.masked_image --threads=1    # as a study worker runs: one core

The shape is `small-28` of benchmarks/train_step.py: 28x28 Fashion-MNIST grey repeated to 3
channels, 4x4 patches (49), width 64, depth 4, 4 heads, MLP 256, batch 128, as
configs/{mpp,mae,simmim}/fashion_mnist.py. Our steps are the trainers' own (vit.objective's
`loss` in `sharded.jit_train_step`, each objective's config defaults: MAE 75% masked with a
32-wide 2-block decoder, SimMIM 8-px blocks at 0.6, MPP mean colour at 50% and, as
`corruption_0.75`, at 75%); the peers are transformers' ViTMAEForPreTraining (the same decoder,
mask ratio and norm_pix_loss) and ViTForMaskedImageModeling (SimMIM's block mask; MPP's 50%
random mask), eager PyTorch, trained with AdamW as ours. The timing (a worker process per case,
turns, medians over rounds, the matmul yardstick) is train_step.py's. `--threads=1` runs every
case as the study runs its workers (study/run.py, one per core): pinned to one core, XLA's and
PyTorch's ops on one thread, as the study's `walltime` run times MPP and MAE (cell (d)).

Besides train_step's report, `ratios` states what the issue asks: MAE's images/s over MPP's
(the goal: >= 2.5 at 75% masking), and ours over transformers' for each objective. The
`train_gflops_s` column counts each objective's own model (train_step.py's docstring): MAE's
encoder on 13 of 50 tokens and its decoder on all 50, MPP's and SimMIM's heads beside the
full-sequence encoder.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ''):  # Run by its path: make the repository importable.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import train_step  # noqa: E402

SHAPE = 'small-28'
# (step, framework, variant): ours, then the peers.
CASES = (('mpp', 'jax', 'base'), ('mpp', 'jax', 'corruption_0.75'), ('mae', 'jax', 'base'),
         ('simmim', 'jax', 'base'), ('mpp', 'hf', 'base'), ('mae', 'hf', 'base'),
         ('simmim', 'hf', 'base'))


def cases(device: str = 'cpu', batch: int = 0) -> list[train_step.Case]:
  return [train_step.Case(SHAPE, step, framework, variant, device, batch)
          for step, framework, variant in CASES]


def ratios(report: dict) -> dict:
  """Images/s ratios between the cases that ran (a skipped case leaves its ratios out)."""
  rate = {(r['case']['step'], r['case']['framework'], r['case']['variant']): r['train_img_s']
          for r in report['results'] if 'train_img_s' in r}
  pairs = {
      'mae_over_mpp_at_75': (('mae', 'jax', 'base'), ('mpp', 'jax', 'corruption_0.75')),
      'mae_over_mpp_at_50': (('mae', 'jax', 'base'), ('mpp', 'jax', 'base')),
      'simmim_over_mpp': (('simmim', 'jax', 'base'), ('mpp', 'jax', 'base')),
      'mae_ours_over_hf': (('mae', 'jax', 'base'), ('mae', 'hf', 'base')),
      'simmim_ours_over_hf': (('simmim', 'jax', 'base'), ('simmim', 'hf', 'base')),
      'mpp_ours_over_hf_masked_image_modeling': (('mpp', 'jax', 'base'), ('mpp', 'hf', 'base')),
  }
  return {name: rate[a] / rate[b] for name, (a, b) in pairs.items() if a in rate and b in rate}


def parse_args(argv=None):
  # Its figures are in the masked-image guide's "Speed" section, not docs/performance.md.
  p = train_step.parser(__doc__, 'benchmarks.masked_image',
                        results='docs/guides/masked_image_modeling.md')
  p.add_argument('--rounds', type=train_step.positive, default=5,
                 help='rounds of turns; the figures are medians over them (default: 5)')
  p.add_argument('--device', choices=('cpu', 'gpu'), default='cpu',
                 help='gpu: JAX on CUDA, peers in bf16 autocast, workers one at a time '
                      '(default: cpu)')
  p.add_argument('--batch', type=train_step.positive, default=0,
                 help='global batch (default: 128, the study\'s)')
  p.add_argument('--threads', type=int, choices=(0, 1), default=0,
                 help='1: one core and one thread per case, as a study worker; 0 (default): '
                      'the libraries\' thread pools')
  p.add_argument('--json', help='also write the JSON report to this file (its folder is checked '
                                 'before the first round)')
  args = p.parse_args(argv)
  if args.threads and args.device != 'cpu':
    p.error('--threads=1: CPU only')
  train_step.check_json(args.json)
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  step_args = train_step.parse_args([f'--rounds={args.rounds}', f'--device={args.device}',
                                     f'--shapes={SHAPE}', f'--threads={args.threads}'])
  report = train_step.run(step_args, cases(args.device, args.batch))
  report['ratios'] = ratios(report)
  print(train_step.table(report))
  print('\n'.join(f'{k}: {v:.2f}' for k, v in report['ratios'].items()))
  train_step.emit(report, args.json)


if __name__ == '__main__':
  main()
