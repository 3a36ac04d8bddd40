"""Protocol deviation 11: the grid-edge check of the raw-pixel fit at all labels.

`pixels/all/seed0` chose L2 = 2^-4, the smallest of `linear_probe.L2_GRID`. This refits it on
the same images (its recorded config) and prints the held-out accuracy at L2 below that edge
and at the edge, from held-out data only (the test split is not read).

  PYTHONPATH=. .venv/bin/python docs/study/checks/pixels_all_l2_edge.py
"""
import json

import ml_collections

from vit.data import pipeline
from vit.evaluators import linear_probe
from vit.evaluators.fewshot import LeastSquares

RECORD = 'docs/study/results/pixels/all/seed0.json'


def main() -> None:
  with open(RECORD) as f:
    config = ml_collections.ConfigDict(json.load(f)['config'])
  train = pipeline.make_source(config, config.data.train_split)
  held = linear_probe.splits(config)['holdout']
  (tx, ty), (hx, hy) = linear_probe.pixels(train), linear_probe.pixels(held)
  solver = LeastSquares(tx, ty, 10)
  l2s = [2.0 ** k for k in (-10, -8, -6, -4, -2)]
  print(json.dumps({'record': RECORD, 'labels': int(len(ty)), 'holdout_examples': int(len(hy)),
                    'holdout_by_l2': {f'{l2:g}': solver.accuracy(hx, hy, l2) for l2 in l2s}}))


if __name__ == '__main__':
  main()
