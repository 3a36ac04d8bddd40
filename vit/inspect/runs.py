"""`python -m vit.inspect.runs WORKDIR...`: a Markdown table of finished training runs.

One row per run, read back from what the run wrote: the parameter count from its latest
checkpoint, the last `eval/accuracy` and the median `images_per_s` from its TensorBoard events
(the first logged interval, which includes compilation, is left out when there are others).
docs/ablations.md is made with it.
"""
from __future__ import annotations

import glob
import os
import sys

import jax
import numpy as np
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from vit import checkpoints
from vit.errors import UserError


def scalars(workdir: str) -> dict[str, dict[int, float]]:
  """Every scalar a run logged, {tag: {step: value}}, read with TensorBoard's reader."""
  files = glob.glob(os.path.join(workdir, '**', 'events.out.tfevents.*'), recursive=True)
  if not files:
    raise UserError(f'{workdir}: no TensorBoard event files')
  out: dict[str, dict[int, float]] = {}
  for directory in sorted({os.path.dirname(f) for f in files}):
    acc = event_accumulator.EventAccumulator(directory, size_guidance={'scalars': 0,
                                                                       'tensors': 0})
    acc.Reload()
    for tag in acc.Tags()['scalars']:
      out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    for tag in acc.Tags()['tensors']:
      values = {e.step: tensor_util.make_ndarray(e.tensor_proto) for e in acc.Tensors(tag)}
      if all(np.ndim(v) == 0 for v in values.values()):
        out.setdefault(tag, {}).update({s: float(v) for s, v in values.items()})
  return out


def summarise(workdir: str) -> dict:
  logged = scalars(workdir)
  rates = [v for _, v in sorted(logged.get('images_per_s', {}).items())]
  accuracy = logged.get('eval/accuracy', {})
  params = checkpoints.restore_params(workdir)
  return dict(run=os.path.basename(os.path.normpath(workdir)),
              params=sum(int(np.size(x)) for x in jax.tree.leaves(params)),
              steps=max(logged.get('loss', {0: 0})),
              accuracy=accuracy[max(accuracy)] if accuracy else None,
              images_per_s=float(np.median(rates[1:] or rates)) if rates else None)


def table(rows: list[dict]) -> str:
  lines = ['| run | parameters | steps | test accuracy | images/s |', '|---|---:|---:|---:|---:|']
  for r in rows:
    acc = '-' if r['accuracy'] is None else f'{100 * r["accuracy"]:.2f}%'
    rate = '-' if r['images_per_s'] is None else f'{r["images_per_s"]:.0f}'
    lines.append(f'| {r["run"]} | {r["params"]:,} | {r["steps"]} | {acc} | {rate} |')
  return '\n'.join(lines)


def main(argv: list[str]) -> None:
  if len(argv) < 2 or argv[1] in ('-h', '--help'):
    print(__doc__.strip())
    sys.exit(0 if len(argv) > 1 else 2)
  for workdir in argv[1:]:
    if not os.path.isdir(workdir):
      raise UserError(f'{workdir}: not a directory')
  print(table([summarise(w) for w in argv[1:]]))


if __name__ == '__main__':
  from vit import cli
  cli.run(main)
