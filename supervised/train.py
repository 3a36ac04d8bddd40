"""Supervised pretraining of a ViT: `python -m supervised.train --config ... --workdir DIR`.

The paper's recipe (Appendix B.1): Adam (0.9, 0.999), decoupled weight decay, linear warmup
then linear or cosine decay, global-norm clipping at 1, a tanh representation layer before the
head (model.representation_size). Polyak averaging with config.ema_decay > 0.
"""
from __future__ import annotations

import dataclasses

from absl import flags

from supervised import objective
from vit import cli, config as config_lib, sharding
from vit.data import pipeline
from vit.evaluators import fewshot
from vit.evaluators.classification import ClassificationEvaluator
from vit.training import loop

FLAGS = flags.FLAGS


def build_task(config, m, *, train_source=None, eval_source=None) -> loop.Task:
  """The classification task; sources default to config.data (tests pass small ones)."""
  obj = objective.build(config, m)  # A checkpoint's own normalisation, when fine-tuning.
  mesh = sharding.make_mesh(config.mesh)
  # Opened now: a wrong data.eval_split is told before the first step, not after the last.
  eval_source = eval_source or pipeline.make_source(config, config.data.eval_split)
  evaluators = [ClassificationEvaluator(
      obj.predictions, lambda: pipeline.eval_batches(config, source=eval_source), mesh)]
  if config.fewshot.enabled:  # The task's sources where fewshot's splits are the task's own.
    fs = config.fewshot
    evaluators.append(fewshot.FewShotEvaluator(
        config, obj.representation, mesh,
        train_source=train_source if fs.train_split == config.data.train_split else None,
        test_source=eval_source if fs.test_split in (None, config.data.eval_split) else None))
  train_source = train_source or pipeline.make_source(config, config.data.train_split)
  return loop.Task(init_params=obj.init_params, loss_fn=obj.loss,
                   train_data=pipeline.train_dataset(config, source=train_source),
                   evaluators=evaluators, mesh=mesh)


def check_classes(config, m) -> None:
  """ConfigError naming model.num_classes when the resolved model `m` has no head
  (`objective.check_classes`); `config` is not read."""
  del config  # Only the model says whether there is a head.
  objective.check_classes(m)


def class_names(config, source=None):
  """The class names of the training source (`source`, else config.data.train_split's), for
  `loop.Task.class_names`; None when the source has none."""
  source = source or pipeline.make_source(config, config.data.train_split)
  names = getattr(source, 'class_names', None)
  return list(names) if names else None


def main(argv):
  """`python -m supervised.train`: validates --config, which must set model.num_classes, and
  trains a classifier into --workdir, resuming from its checkpoint; a bad config is one line
  and exit status 2 (`vit.cli.run`)."""
  del argv
  config, workdir = FLAGS.config, FLAGS.workdir
  m = config_lib.validate(config)
  check_classes(config, m)
  source = pipeline.make_source(config, config.data.train_split)
  task = build_task(config, m, train_source=source)
  task = dataclasses.replace(task, class_names=class_names(config, source))
  loop.train(config, workdir, task)


if __name__ == '__main__':
  cli.define_config_flags('configs/supervised/fashion_mnist.py', objective=objective.DEFINITION)
  cli.run(main)
