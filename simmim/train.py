"""SimMIM pretraining: `python -m simmim.train --config ... --workdir DIR`.

The checkpoint holds {'backbone', 'mask_token', 'decoder'}; `supervised.finetune
--config.init=simmim:DIR` keeps the backbone and reads its architecture from the saved config, and
`python -m vit.export --checkpoint DIR` writes it in the official, HF or timm format.
"""
from __future__ import annotations

from simmim import objective
from vit import cli
from vit.training import loop, reconstruction


def build_task(config, m) -> loop.Task:
  """SimMIM's task: its loss on the first config.simmim.eval_examples held-out images (rounded
  up to whole evaluation batches: `vit.evaluators.held_out_loss.HeldOutLoss`), few-shot
  probes when config.fewshot is on (`vit.training.reconstruction.build_task`)."""
  return reconstruction.build_task(config, objective.build(config, m), 'simmim.eval_examples')


main = reconstruction.trainer_main(build_task)

if __name__ == '__main__':
  cli.define_config_flags('configs/simmim/fashion_mnist.py', objective=objective.DEFINITION)
  cli.run(main)
