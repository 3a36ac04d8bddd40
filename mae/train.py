"""Masked autoencoder pretraining: `python -m mae.train --config ... --workdir DIR`.

The checkpoint holds {'backbone', 'decoder'}; `supervised.finetune --config.init=mae:DIR` keeps
the backbone (the encoder) and reads its architecture from the saved config, and
`python -m vit.export --checkpoint DIR` writes it in the official, HF or timm format.
"""
from __future__ import annotations

from absl import flags

from mae import objective
from vit import cli, config as config_lib, sharding
from vit.data import pipeline
from vit.evaluators import fewshot, held_out_loss
from vit.training import loop

FLAGS = flags.FLAGS


def build_task(config, m) -> loop.Task:
  model = objective.build_model(config, m)
  spec = objective.Spec.from_config(config, m)
  image_shape = (1, config.image_size, config.image_size, config.data.channels)
  loss_fn = objective.make_loss_fn(model, spec, m)
  mesh = sharding.make_mesh(config.mesh)
  evaluators = []
  if config.mae.eval_examples:
    evaluators.append(held_out_loss.HeldOutLoss(
        loss_fn, lambda: pipeline.eval_batches(config), mesh, examples=config.mae.eval_examples,
        batch_size=pipeline.per_process_batch(config.eval_batch_size, 'eval_batch_size'),
        seed=config.seed))
  if config.fewshot.enabled:
    evaluators.append(fewshot.FewShotEvaluator(
        config, objective.make_representation_fn(m), mesh, params_fn=lambda p: p['backbone']))
  return loop.Task(init_params=objective.init_fn(model, spec, image_shape), loss_fn=loss_fn,
                   train_data=pipeline.train_dataset(config), evaluators=evaluators)


def main(argv):
  del argv
  config = FLAGS.config
  m = config_lib.validate(config)
  objective.check_config(config, m)
  loop.train(config, FLAGS.workdir, build_task(config, m))


if __name__ == '__main__':
  cli.define_config_flags('configs/mae/fashion_mnist.py')
  cli.run(main)
