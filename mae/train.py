"""Masked autoencoder pretraining: `python -m mae.train --config ... --workdir DIR`.

The checkpoint holds {'backbone', 'decoder'}; `supervised.finetune --config.init=mae:DIR` keeps
the backbone (the encoder) and reads its architecture from the saved config, and
`python -m vit.export --checkpoint DIR` writes it in the official, HF or timm format.
"""
from __future__ import annotations

from absl import flags

from mae import objective
from vit import cli, config as config_lib
from vit.training import loop, reconstruction

FLAGS = flags.FLAGS


def build_task(config, m) -> loop.Task:
  return reconstruction.build_task(config, objective.build(config, m),
                                   config.mae.eval_examples)


def main(argv):
  del argv
  config = FLAGS.config
  m = config_lib.validate(config)
  loop.train(config, FLAGS.workdir, build_task(config, m))


if __name__ == '__main__':
  cli.define_config_flags('configs/mae/fashion_mnist.py')
  cli.run(main)
