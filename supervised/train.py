"""Supervised pretraining of a ViT: `python -m supervised.train --config ... --workdir DIR`."""
from __future__ import annotations

from absl import flags

from supervised import objective
from vit import cli, config as config_lib, sharding
from vit.data import pipeline
from vit.evaluators.classification import ClassificationEvaluator
from vit.training import loop

FLAGS = flags.FLAGS
_CONFIG, _WORKDIR = cli.define_config_flags('configs/supervised/fashion_mnist.py')


def build_task(config, m):
  model = config_lib.build_model(m)
  image_shape = (1, config.image_size, config.image_size, config.data.channels)

  def init_params(rng):
    import jax.numpy as jnp
    return model.init(rng, jnp.zeros(image_shape, jnp.float32), train=False)['params']

  mesh = sharding.make_mesh(config.mesh)
  evaluator = ClassificationEvaluator(objective.make_logits_fn(model),
                                      lambda: pipeline.eval_batches(config), mesh)
  return loop.Task(init_params=init_params, loss_fn=objective.make_loss_fn(model),
                   train_data=pipeline.train_dataset(config), evaluators=[evaluator])


def main(argv):
  del argv
  config = _CONFIG.value
  m = config_lib.validate(config)
  if m['num_classes'] is None:
    raise config_lib.ConfigError('model.num_classes', None, 'must be set for classification')
  loop.train(config, _WORKDIR.value, build_task(config, m))


if __name__ == '__main__':
  cli.run(main)
