"""Masked patch prediction pretraining: `python -m mpp.train --config ... --workdir DIR`.

The checkpoint holds {'backbone', 'mask_embedding', 'head'}; `supervised.finetune
--config.init=mpp:DIR` keeps the backbone and reads its architecture from the saved config.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mpp import evaluator as evaluator_lib, images as images_lib, objective
from vit import cli, config as config_lib, sharding
from vit.data import pipeline
from vit.training import loop

_CONFIG, _WORKDIR = cli.define_config_flags('configs/mpp/fashion_mnist.py')
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
  first = next(iter(batches()))['image'][:GRID_IMAGES]
  grids = images_lib.GridWriter(model, spec, np.asarray(first), workdir, seed=config.seed)
  return loop.Task(init_params=init_params, loss_fn=objective.make_loss_fn(model, spec),
                   train_data=pipeline.train_dataset(config),
                   evaluators=[evaluator] if config.mpp.eval_examples else [],
                   periodic_hook=grids, hook_every=config.mpp.image_every or config.total_steps)


def main(argv):
  del argv
  config = _CONFIG.value
  m = config_lib.validate(config)
  loop.train(config, _WORKDIR.value, build_task(config, m, _WORKDIR.value))


if __name__ == '__main__':
  cli.run(main)
