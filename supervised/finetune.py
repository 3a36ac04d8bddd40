"""Fine-tuning from any checkpoint: `python -m supervised.finetune --config ... --workdir DIR`.

As the paper (§3.2, Appendix B.1.1): the pretrained head and representation layer are removed
and a zero-initialised head for the new classes is attached; at a higher resolution than
pretraining the patch size stays, so the sequence grows and the position embeddings are
interpolated in 2D. SGD with momentum 0.9, no weight decay, warmup + cosine, clipping at 1.

`config.init` names the weights (vit/init_spec.py); the architecture comes from the
checkpoint, and model keys set in the config must agree with it.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import flax.linen as nn
import jax
import ml_collections
from absl import flags

from supervised import objective, train
from vit import checkpoints, cli, config as config_lib, init_spec, user_paths
from vit.data import pipeline
from vit.models.spec import ModelSpec
from vit.training import loop

FLAGS = flags.FLAGS
logger = logging.getLogger(__name__)


def prepare(config: ml_collections.ConfigDict, workdir: Optional[str] = None
            ) -> tuple[ModelSpec, Optional[init_spec.Checkpoint]]:
  """Loads config.init, writes its architecture into config.model, validates the config.

  The config then describes the fine-tuned model completely, so the checkpoint it saves can
  itself be loaded with `supervised:DIR`. A leading `~` in config.init's path is expanded there
  too, so the saved config names the weights wherever the run is resumed from. Resuming the
  fine-tune `workdir` holds, the architecture is read from it, not from config.init: the init
  weights may be gone or replaced since (the saved state is all a resume needs; the loop
  still refuses another config.init, vit.checkpoints), and the checkpoint returned is None.
  """
  init_spec.require_init(config)
  config.init = user_paths.expand_spec(config.init)
  resumed = _saved_backbone(workdir)
  if resumed:
    ckpt = None  # Read only if the loop finds no step to resume after all (`build_task`).
    init_spec.adopt_backbone(config, *resumed, workdir)
  else:
    ckpt = init_spec.load_init(config)
    init_spec.adopt_backbone(config, ckpt.model, ckpt.channels, config.init)
  m = config_lib.validate(config)
  train.check_classes(config, m)
  return m, ckpt


def _saved_backbone(workdir: Optional[str]) -> Optional[tuple[ModelSpec, int]]:
  """(model, image channels) of the fine-tune `workdir` holds, from the config saved with its
  newest step whose config reads and matches its saved CRC-32s (its parameters are not read:
  the loop reads them to resume, skipping the same damaged steps); None for a new workdir, or
  one where no step's config reads (the loop then says what it finds there). A config changed
  in place on disk (model.hidden_size 32 -> 33) was adopted: the run then stopped on a model
  its checkpoints do not hold ('num_heads=2: does not divide model.hidden_size=33')."""
  if not workdir or not checkpoints.has_steps(workdir):
    return None
  try:
    backbones = (_backbone_of(saved) for _, saved in checkpoints.saved_configs(workdir))
    return next((backbone for backbone in backbones if backbone), None)
  except Exception:  # noqa: BLE001 (an unreadable checkpoints folder: the loop names it)
    return None


def _backbone_of(saved: dict) -> Optional[tuple[ModelSpec, int]]:
  """(model, image channels) of a saved config, or None for one no model reads (an older
  step's may)."""
  try:
    saved = ml_collections.ConfigDict(saved)
    return config_lib.upgrade(config_lib.resolved_model(saved)), saved.data.channels
  except Exception:  # noqa: BLE001 (whatever a damaged or foreign config makes them raise)
    return None


def build_task(config, m, ckpt: Optional[init_spec.Checkpoint], **sources) -> loop.Task:
  """The supervised task, started from the checkpoint's weights (adapted to this model);
  config.init's, read when needed, without `ckpt` (a resume: `prepare`)."""
  task = train.build_task(config, m, **sources)

  def fresh():  # Only for a new representation layer (model.representation_size set).
    return nn.unbox(task.init_params(jax.random.key(config.seed)))

  def load_params(target):
    grid = config_lib.token_grid(config, m)
    weights = (ckpt or init_spec.load_init(config)).params
    return init_spec.adapt_params(weights, target, grid, fresh=fresh,
                                  what=f'init {config.init}')

  return dataclasses.replace(task, load_params=load_params)


def finetune(config, workdir: str, *, train_source=None, eval_source=None) -> loop.Trained:
  """Fine-tunes into `workdir` from config.init, or resumes the fine-tune it holds (the loop
  refuses one started from another config.init: vit.checkpoints). Sources default to
  config.data (tests pass small ones)."""
  m, ckpt = prepare(config, workdir)
  if not checkpoints.has_steps(workdir):  # Resuming, the loop says so once it accepts.
    logger.info('fine-tuning from %s: %s -> %spx, %s classes', init_spec.origin(config.init, ckpt),
                init_spec.describe(ckpt), config.image_size, m.num_classes)
    init_spec.warn_if_unfinished(config.init, ckpt)
  source = (train_source if train_source is not None
            else pipeline.make_source(config, config.data.train_split))
  task = build_task(config, m, ckpt, train_source=source, eval_source=eval_source)
  task = dataclasses.replace(task, class_names=train.class_names(config, source))
  return loop.train(config, workdir, task)


def main(argv):
  """`python -m supervised.finetune`: fine-tunes from config.init into --workdir, or resumes the
  fine-tune it holds (`finetune`); a bad config or init is one line and exit status 2."""
  del argv
  finetune(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  cli.define_config_flags('configs/finetune/fashion_mnist.py', objective=objective.DEFINITION,
                          reads_init=True)
  cli.run(main)
