"""The shared trainer task of the pixel-reconstruction objectives (mae/, simmim/).

Both train an `vit.objective.Objective` on unlabelled images and judge it by its own loss on
held-out images (`HeldOutLoss`) and, optionally, few-shot probes of its representation; only
the objective and its config section differ, so the task and the command's `main` are built
here once.
"""
from __future__ import annotations

from typing import Callable

import ml_collections
from absl import flags

from vit import config as config_lib, objective as objective_lib, sharding
from vit.data import pipeline
from vit.evaluators import fewshot, held_out_loss
from vit.models.spec import ModelSpec
from vit.training import loop
from vit.training.sharded import Task


def build_task(config: ml_collections.ConfigDict, obj: objective_lib.Objective,
               eval_key: str) -> Task:
  """The loop's Task for `obj`: its loss on every training batch, its held-out loss on the
  first `config[eval_key]` evaluation images (e.g. 'mae.eval_examples'; 0: none; rounded up to
  whole evaluation batches, `HeldOutLoss`; a note when the split has fewer), few-shot probes
  when config.fewshot is on.
  """
  section, name = eval_key.split('.')
  eval_examples = config[section][name]
  config_lib.note_unused_head(config, f'{section}.train')
  mesh = sharding.make_mesh(config.mesh)
  evaluators = []
  if eval_examples:
    # Opened now: a wrong data.eval_split is told before the first step, not after the last.
    source = pipeline.make_source(config, config.data.eval_split)
    pipeline.note_eval_examples(config, eval_key, eval_examples, source)
    evaluators.append(held_out_loss.HeldOutLoss(
        obj.loss, lambda: pipeline.eval_batches(config, source=source), mesh,
        examples=eval_examples,
        global_batch_size=config.eval_batch_size,
        seed=config.seed))
  if config.fewshot.enabled:
    evaluators.append(fewshot.FewShotEvaluator(config, obj.representation, mesh))
  return Task(init_params=obj.init_params, loss_fn=obj.loss,
              train_data=pipeline.train_dataset(config), evaluators=evaluators, mesh=mesh)


def trainer_main(build_task: Callable[[ml_collections.ConfigDict, ModelSpec], Task]
                 ) -> Callable[[list[str]], None]:
  """The `main` of an objective's training command (`python -m mae.train`), for `vit.cli.run`:
  validates --config, builds the task with `build_task(config, resolved model)` and trains it
  into --workdir (the flags of `vit.cli.define_config_flags`). A bad config is a ConfigError."""
  def main(argv):
    del argv
    config = flags.FLAGS.config
    m = config_lib.validate(config)
    loop.train(config, flags.FLAGS.workdir, build_task(config, m))
  return main
