"""Masked patch prediction pretraining: `python -m mpp.train --config ... --workdir DIR`.

The checkpoint holds {'backbone', 'mask_embedding', 'head'}; `supervised.finetune
--config.init=mpp:DIR` keeps the backbone and reads its architecture from the saved config.
"""
from __future__ import annotations

import jax.numpy as jnp
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
  model = objective.build_model(config, m)
  spec = objective.Spec.from_config(config, m)
  image_shape = (1, config.image_size, config.image_size, config.data.channels)

  def init_params(rng):
    return model.init(rng, jnp.zeros(image_shape, jnp.float32), None, train=False)['params']

  mesh = sharding.make_mesh(config.mesh)
  batches = lambda: pipeline.eval_batches(config)
  evaluator = evaluator_lib.MppEvaluator(
      model, spec, batches, mesh, examples=config.mpp.eval_examples,
      batch_size=pipeline.per_process_batch(config.eval_batch_size, 'eval_batch_size'),
      seed=config.seed)
  evaluators = [evaluator] if config.mpp.eval_examples else []
  if config.fewshot.enabled:
    evaluators.append(fewshot.FewShotEvaluator(
        config, objective.make_representation_fn(m), mesh, params_fn=lambda p: p['backbone']))
  first = next(iter(batches()))['image'][:GRID_IMAGES]
  grids = images_lib.GridWriter(model, spec, np.asarray(first), workdir, seed=config.seed)
  return loop.Task(init_params=init_params, loss_fn=objective.make_loss_fn(model, spec),
                   train_data=pipeline.train_dataset(config),
                   evaluators=evaluators,
                   periodic_hook=grids, hook_every=config.mpp.image_every or config.total_steps)


def main(argv):
  del argv
  config = FLAGS.config
  m = config_lib.validate(config)
  loop.train(config, FLAGS.workdir, build_task(config, m, FLAGS.workdir))


if __name__ == '__main__':
  cli.define_config_flags('configs/mpp/fashion_mnist.py')
  cli.run(main)
