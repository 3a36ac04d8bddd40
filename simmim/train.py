"""SimMIM pretraining: `python -m simmim.train --config ... --workdir DIR`.

The checkpoint holds {'backbone', 'mask_token', 'decoder'}; `supervised.finetune
--config.init=simmim:DIR` keeps the backbone and reads its architecture from the saved config, and
`python -m vit.export --checkpoint DIR` writes it in the official, HF or timm format.
"""
from __future__ import annotations

from absl import flags

from simmim import objective
from vit import cli, config as config_lib, sharding
from vit.data import pipeline
from vit.evaluators import fewshot, held_out_loss
from vit.training import loop

FLAGS = flags.FLAGS


def build_task(config, m) -> loop.Task:
  obj = objective.build(config, m)
  mesh = sharding.make_mesh(config.mesh)
  evaluators = []
  if config.simmim.eval_examples:
    evaluators.append(held_out_loss.HeldOutLoss(
        obj.loss, lambda: pipeline.eval_batches(config), mesh,
        examples=config.simmim.eval_examples,
        batch_size=pipeline.per_process_batch(config.eval_batch_size, 'eval_batch_size'),
        seed=config.seed))
  if config.fewshot.enabled:
    evaluators.append(fewshot.FewShotEvaluator(config, obj.representation, mesh))
  return loop.Task(init_params=obj.init_params, loss_fn=obj.loss,
                   train_data=pipeline.train_dataset(config), evaluators=evaluators)


def main(argv):
  del argv
  config = FLAGS.config
  m = config_lib.validate(config)
  loop.train(config, FLAGS.workdir, build_task(config, m))


if __name__ == '__main__':
  cli.define_config_flags('configs/simmim/fashion_mnist.py')
  cli.run(main)
