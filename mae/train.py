"""Masked autoencoder pretraining: `python -m mae.train --config ... --workdir DIR`.

The checkpoint holds {'backbone', 'decoder'}; `supervised.finetune --config.init=mae:DIR` keeps
the backbone (the encoder) and reads its architecture from the saved config, and
`python -m vit.export --checkpoint DIR` writes it in the official, HF or timm format.
"""
from __future__ import annotations

from mae import objective
from vit import cli
from vit.training import loop, reconstruction


def build_task(config, m) -> loop.Task:
  """MAE's task: its loss on the first config.mae.eval_examples held-out images (rounded up
  to whole evaluation batches: `vit.evaluators.held_out_loss.HeldOutLoss`), few-shot
  probes when config.fewshot is on (`vit.training.reconstruction.build_task`)."""
  return reconstruction.build_task(config, objective.build(config, m), 'mae.eval_examples')


main = reconstruction.trainer_main(build_task)

if __name__ == '__main__':
  cli.define_config_flags('configs/mae/fashion_mnist.py', objective=objective.DEFINITION)
  cli.run(main)
