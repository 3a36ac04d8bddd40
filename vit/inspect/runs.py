"""`python -m vit.inspect.runs WORKDIR...`: a Markdown table of finished training runs.

One row per run, read back from what the run wrote: the parameter counts from its latest
checkpoint (all it trains, and its ViT backbone's alone: without a classifier's head, MPP's head
and mask embedding, MAE's decoder or SimMIM's mask token and decoder), the median
`images_per_s` from its TensorBoard events (the first logged interval, which includes
compilation, is left out when there are others), and the last value of the
metric its objective is judged by, in a column named by what it measures: `test accuracy`
(`eval/accuracy`) for a classifier (`accuracy on 'holdout'` when its data.eval_split is
another split), an MPP run's colour accuracy on corrupted patches, an MAE
or SimMIM run's loss (`vit.objective.Definition.metrics`, chosen by the objective section of
the run's saved config). docs/ablations.md is made with it.

A run that cannot be read (not a directory, no event files or none with a scalar in them, no
readable checkpoint) is left out: the table shows the others, and one line on stderr per run
left out names its folder and the reason; the exit status is then 1.
"""
from __future__ import annotations

import glob
import os
import sys

import jax
import ml_collections
import numpy as np
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.util import tensor_util

from vit import checkpoints, config as config_lib, objective as objective_lib, user_paths
from vit.errors import UserError


def scalars(workdir: str) -> dict[str, dict[int, float]]:
  """Every scalar a run logged, {tag: {step: value}}, read with TensorBoard's reader: once per
  step, the latest run's value where a resumed run logged a step again.

  UserError naming `workdir` when it has no event files, or none holds a scalar: TensorBoard's
  reader stops silently at a damaged record, so a file damaged from its start reads as empty.
  """
  files = glob.glob(os.path.join(workdir, '**', 'events.out.tfevents.*'), recursive=True)
  if not files:
    raise UserError(f'{workdir}: no TensorBoard event files')
  out: dict[str, dict[int, float]] = {}
  for directory in sorted({os.path.dirname(f) for f in files}):
    # The reader of the TensorBoard server, which holds every summary as a tensor (old
    # `simple_value` scalars converted) and purges the tensors too at a restart: a resumed
    # run's file starts with a SessionLog START at its first step (vit.training.events), and
    # what a killed run logged from that step on is dropped, so each step counts once, with the
    # resumed run's value. (event_accumulator's purge skips tensors, what tf.summary and we
    # write.)
    acc = plugin_event_accumulator.EventAccumulator(directory, size_guidance={'tensors': 0},
                                                    purge_orphaned_data=True)
    acc.Reload()
    for tag in acc.Tags()['tensors']:
      values = {e.step: tensor_util.make_ndarray(e.tensor_proto) for e in acc.Tensors(tag)}
      if all(np.ndim(v) == 0 for v in values.values()):
        out.setdefault(tag, {}).update({s: float(v) for s, v in values.items()})
  if not out:
    raise UserError(f'{workdir}: no scalar in its {len(files)} event file(s) (damaged, or '
                    'written before the first logged step)')
  return out


def metric(config: dict, logged: dict[str, dict[int, float]]) -> objective_lib.Metric:
  """What a run with saved `config` is judged by: the first of its objective's metrics it
  logged (an objective section's `metrics`), else the classifier's test accuracy (its accuracy
  on the split data.eval_split names, when that is not 'test')."""
  found = config_lib.sections(ml_collections.ConfigDict(config)).values()
  candidates = [m for definition in found for m in definition.metrics]
  judged = next((m for m in candidates if m.tag in logged), (candidates or [
      objective_lib.CLASSIFIER_METRIC])[0])
  # A classifier evaluated on another split than 'test' (data.eval_split='holdout',
  # 'train[90%:]') has no test accuracy: its column names the split, and is its own.
  split = config.get('data', {}).get('eval_split', 'test')
  if judged == objective_lib.CLASSIFIER_METRIC and split != 'test':
    judged = judged._replace(label=f"accuracy on '{split}'")
  return judged


def summarise(workdir: str) -> dict:
  """{'run', 'params', 'backbone_params' (`backbone_size`), 'steps', 'metric' (a `Metric`),
  'value' (its last value or None), 'images_per_s'} of one workdir; UserError without events or
  a readable checkpoint."""
  logged = scalars(workdir)
  rates = [v for _, v in sorted(logged.get('images_per_s', {}).items())]
  config, params, _ = checkpoints.read_params(workdir)
  judged = metric(config, logged)
  values = logged.get(judged.tag, {})
  return dict(run=os.path.basename(os.path.normpath(workdir)),
              params=_size(params), backbone_params=backbone_size(params),
              steps=max(logged.get('loss', {0: 0})),
              metric=judged, value=values[max(values)] if values else None,
              images_per_s=float(np.median(rates[1:] or rates)) if rates else None)


def _size(tree) -> int:
  return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def backbone_size(params: dict) -> int:
  """The parameter count of a run's ViT backbone: its objective's 'backbone' subtree (MPP,
  MAE, SimMIM keep the ViT there, beside their heads and decoders), else a classifier's tree
  without its 'head' (what `Objective.backbone` returns and fine-tuning starts from)."""
  if 'backbone' in params:
    return _size(params['backbone'])
  return _size({k: v for k, v in params.items() if k != 'head'})


def table(rows: list[dict]) -> str:
  """One column per metric the rows are judged by (a run's value in its own, '-' in the
  others): a classifier's test accuracy never shares a column with an MPP colour accuracy."""
  metrics = list(dict.fromkeys(r['metric'] for r in rows))
  lines = ['| run | parameters | ViT backbone | steps | ' + ' | '.join(m.label for m in metrics)
           + ' | images/s |', '|---|---:|---:|---:|' + '---:|' * len(metrics) + '---:|']
  for r in rows:
    shown = [_show(r['value'], m) if m == r['metric'] else '-' for m in metrics]
    rate = '-' if r['images_per_s'] is None else f'{r["images_per_s"]:.0f}'
    lines.append(f'| {r["run"]} | {r["params"]:,} | {r["backbone_params"]:,} | {r["steps"]} | '
                 f'{" | ".join(shown)} | {rate} |')
  return '\n'.join(lines)


def _show(value, m: objective_lib.Metric) -> str:
  if value is None:
    return '-'
  return f'{100 * value:.2f}%' if m.percent else f'{value:.4g}'


def summarise_all(workdirs: list[str]) -> tuple[list[dict], list[str]]:
  """(`summarise` of each readable workdir, in order; one line per workdir that is not, naming
  it and the reason): one unreadable run does not hide the others."""
  rows, left_out = [], []
  for workdir in workdirs:
    # A quoted '~/runs/x' too (vit.user_paths); a ~user of no user is no such directory.
    workdir = user_paths.expanded(workdir) or workdir
    try:
      if not os.path.isdir(workdir):
        raise UserError(f'{workdir}: ' + ('not a directory' if os.path.exists(workdir)
                                          else 'no such directory'))
      rows.append(summarise(workdir))
    except UserError as e:
      reason = str(e)
      left_out.append(reason if reason.startswith(workdir) else f'{workdir}: {reason}')
  return rows, left_out


def main(argv: list[str]) -> None:
  """`python -m vit.inspect.runs WORKDIR...`: prints the table of the runs. Exit status 2 without
  a workdir (the usage printed), 0 for -h or --help, 1 when a run was left out of the table
  (one stderr line each)."""
  if len(argv) < 2 or argv[1] in ('-h', '--help'):
    print(__doc__.strip())
    sys.exit(0 if len(argv) > 1 else 2)
  rows, left_out = summarise_all(argv[1:])
  if rows:
    print(table(rows), flush=True)
  for line in left_out:
    print(f'error: {line}; left out of the table', file=sys.stderr)
  if left_out:
    sys.exit(1)


if __name__ == '__main__':
  from vit import cli
  cli.run(main, positional=True)  # The workdirs.
