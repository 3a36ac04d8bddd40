"""SimMIM pretraining: `python -m simmim.train --config ... --workdir DIR`.

The checkpoint holds {'backbone', 'mask_token', 'decoder'}; `supervised.finetune
--config.init=simmim:DIR` keeps the backbone and reads its architecture from the saved config, and
`python -m vit.export --checkpoint DIR` writes it in the official, HF or timm format.
"""
from __future__ import annotations

from absl import flags

from simmim import objective
from vit import cli, config as config_lib
from vit.training import loop, reconstruction

FLAGS = flags.FLAGS


def build_task(config, m) -> loop.Task:
  return reconstruction.build_task(config, objective.build(config, m),
                                   config.simmim.eval_examples)


def main(argv):
  del argv
  config = FLAGS.config
  m = config_lib.validate(config)
  loop.train(config, FLAGS.workdir, build_task(config, m))


if __name__ == '__main__':
  cli.define_config_flags('configs/simmim/fashion_mnist.py')
  cli.run(main)
