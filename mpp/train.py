"""Masked patch prediction pretraining: `python -m mpp.train --config ... --workdir DIR`.

The checkpoint holds {'backbone', 'mask_embedding', 'head'}; `supervised.finetune
--config.init=mpp:DIR` keeps the backbone and reads its architecture from the saved config.
"""
from __future__ import annotations

import numpy as np
from absl import flags

from mpp import evaluator as evaluator_lib, images as images_lib, objective
from vit import cli, config as config_lib, sharding
from vit.data import pipeline
from vit.evaluators import fewshot
from vit.training import loop

FLAGS = flags.FLAGS
GRID_IMAGES = 8


def build_task(config, m, workdir: str) -> loop.Task:
  """MPP's task: its loss on every training batch; `MppEvaluator` on the first
  config.mpp.eval_examples held-out images (0: none), few-shot probes when config.fewshot is
  on; PNG grids of the predictions on the first GRID_IMAGES evaluation images, under
  WORKDIR/images every config.mpp.image_every steps (0: at the end only)."""
  obj = objective.build(config, m)
  config_lib.note_unused_head(config, 'mpp.train')
  mesh = sharding.make_mesh(config.mesh)
  # One source for the evaluator, the note and the image grids (each opened it before).
  source = pipeline.make_source(config, config.data.eval_split)
  batches = lambda: pipeline.eval_batches(config, source=source)
  evaluator = evaluator_lib.MppEvaluator(
      obj.model, obj.spec, batches, mesh, examples=config.mpp.eval_examples,
      global_batch_size=config.eval_batch_size,
      seed=config.seed)
  evaluators = [evaluator] if config.mpp.eval_examples else []
  if evaluators:
    pipeline.note_eval_examples(config, 'mpp.eval_examples', config.mpp.eval_examples, source)
  if config.fewshot.enabled:
    evaluators.append(fewshot.FewShotEvaluator(config, obj.representation, mesh))
  first = next(iter(batches()))['image'][:GRID_IMAGES]
  grids = images_lib.GridWriter(obj.model, obj.spec, np.asarray(first), workdir,
                                seed=config.seed)
  return loop.Task(init_params=obj.init_params, loss_fn=obj.loss,
                   train_data=pipeline.train_dataset(config),
                   evaluators=evaluators,
                   periodic_hook=grids, hook_every=config.mpp.image_every or config.total_steps,
                   mesh=mesh)


def main(argv):
  """`python -m mpp.train`: validates --config and trains MPP into --workdir, resuming from its
  checkpoint; a bad config is one line and exit status 2 (`vit.cli.run`)."""
  del argv
  config = FLAGS.config
  m = config_lib.validate(config)
  loop.train(config, FLAGS.workdir, build_task(config, m, FLAGS.workdir))


if __name__ == '__main__':
  cli.define_config_flags('configs/mpp/fashion_mnist.py', objective=objective.DEFINITION)
  cli.run(main)
