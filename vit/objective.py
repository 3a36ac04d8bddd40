"""The contract between the shared library and an objective (MPP, supervised, MAE, ...).

An objective is what `mpp/` and `supervised/` each add to the library: a model around the ViT
backbone, a loss, what the model outputs, the frozen features it is judged by, and the section
of the config that tunes it. The trainers, `vit.plan`, the benchmarks and the evaluators see an
objective only through this interface, so `vit/` never imports an objective's package, and a
new objective (say `mae/`) plugs in by writing one module, `<package>/objective.py`:

    DEFINITION = vit.objective.Definition(
        name='mae',                      # the package; also its config section's key
        build=build,                     # (config, model) -> an `Objective`
        section=section_defaults,        # () -> ConfigDict of config.mae's keys (or None)
        validate=validate)               # (config, model) -> None; raises ConfigError

Batches are what every pipeline of vit/data yields (per process, sharded by the loop):
  'image': uint8 [B, H, W, C], the pixels as stored (the objective normalises them itself,
           on the device: vit.preprocess.input_fn of the model);
  'label': int32 [B];
  'mask':  bool [B], evaluation batches only (False on the padding of a last partial batch).
Parameters are the objective's whole tree, float32, possibly boxed by
`nn.with_logical_partitioning` at init (the loop unboxes them and shards by their axis names).
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any, Callable, Mapping, NamedTuple, Optional, Protocol, runtime_checkable

import jax
import ml_collections

from vit.errors import ConfigError, UserError

Params = Any  # A pytree of arrays (flax's nested dict of the module's parameters).
Batch = Mapping[str, jax.Array]


@runtime_checkable
class Objective(Protocol):
  """One objective built for one config: every method is pure and may be jitted.

  The same instance serves training (`loss`), evaluation (`predictions`, `representation`)
  and the compilers (`vit.plan`, the benchmarks), so each compiles the trainers' own step.
  """

  def init_params(self, rng: jax.Array) -> Params:
    """Fresh parameters for images of the config's size and channels (one image traced).

    rng: a jax.random key. Returns the full tree, leaves float32 and boxed with their logical
    axis names (`vit.sharding` turns those into shardings; `nn.unbox` strips them).
    """

  def loss(self, params: Params, batch: Batch, rng: jax.Array, train: bool
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(scalar float32 loss, {name: scalar}) of one batch; `rng` feeds dropout and any
    randomness of the objective (e.g. MPP's corruption). A float32 metric is a mean (averaged
    over a step's micro-batches), an int32 one a count (summed over them). Rows whose
    batch['mask'] is False (an evaluation batch's padding) count for nothing. This is
    `vit.training.step.LossFn`."""

  def predictions(self, params: Params, batch: Batch) -> jax.Array:
    """The model's outputs at evaluation (train=False), float32 [B, ...]: the logits [B, C] of
    a classifier, MPP's per-patch predictions [B, N, ...]. Deterministic in its inputs."""

  def representation(self, params: Params, images: jax.Array) -> jax.Array:
    """Frozen features of uint8 images [B, H, W, C]: float32 [B, D], what the objective
    trains the backbone to produce (few-shot and linear-probe evaluation read these)."""

  def backbone(self, params: Params) -> Params:
    """The ViT's subtree of `params`, official names: what fine-tuning starts from."""


class Metric(NamedTuple):
  """An evaluation number an objective is judged by, as tables show it (`vit.inspect.runs`):
  its TensorBoard tag, its column's label, and whether it is a fraction shown as a percentage."""
  tag: str
  label: str
  percent: bool = False


# A run of no objective section (supervised training, fine-tuning): its classifier's accuracy.
CLASSIFIER_METRIC = Metric('eval/accuracy', 'test accuracy', percent=True)


@dataclasses.dataclass(frozen=True)
class Definition:
  """An objective as a package states it (its module's `DEFINITION`).

  `name` is the package and the key of its config section. `build(config, model)` returns an
  `Objective`; `model` is the resolved model of `vit.config.validate`, a
  `vit.models.spec.ModelSpec`. `section()` returns the defaults of `config.<name>` (None: the
  objective has no keys of its own); `validate(config, model)` checks them, raising
  `vit.errors.ConfigError` that names the key. `metrics`: what its evaluation logs that judges
  a run, best first (a table shows the first one a run logged); none: the classifier's
  `CLASSIFIER_METRIC`.
  """
  name: str
  build: Callable[[ml_collections.ConfigDict, Any], Objective]
  section: Optional[Callable[[], ml_collections.ConfigDict]] = None
  validate: Callable[[ml_collections.ConfigDict, Any], None] = lambda config, model: None
  metrics: tuple[Metric, ...] = ()


class UnknownObjectiveError(UserError, ValueError):
  """`resolve`'s name leads to no Definition (a ValueError too, for callers that test a name)."""


class ObjectiveImportError(UserError):
  """The objective's module exists, but a module it imports does not (a missing dependency)."""


def resolve(name: str) -> Definition:
  """The `Definition` that `name` points to: a package ('mpp': its `objective` module's
  DEFINITION), a module ('mpp.objective'), or 'module:ATTRIBUTE'.

  A name, not a table of known objectives: the library names none of them, so a new
  objective needs no edit here. Raises, each one line: UnknownObjectiveError when the name
  leads to no Definition (listing `available()`), ObjectiveImportError naming the missing
  module when the objective's module exists but one it imports does not. Any other error
  raised while importing the objective's code (a bug in it) propagates as it is.
  """
  module_name, _, attribute = name.partition(':')
  candidates = [module_name] if '.' in module_name or attribute else [
      f'{module_name}.objective', module_name]
  for candidate in candidates:
    try:
      module = importlib.import_module(candidate)
    except ModuleNotFoundError as e:
      if e.name is not None and (candidate == e.name or candidate.startswith(e.name + '.')):
        continue  # This candidate (or its package) does not exist.
      needs = f'module {e.name!r}' if e.name else str(e)
      raise ObjectiveImportError(f'objective {name!r} failed to import: {candidate} needs '
                                 f'{needs}, which is not found') from e
    found = getattr(module, attribute or 'DEFINITION', None)
    if isinstance(found, Definition):
      return found
  raise UnknownObjectiveError(
      f'objective {name!r}: no Definition at '
      f'{" or ".join(c + "." + (attribute or "DEFINITION") for c in candidates)}; the '
      f'objectives of this checkout: {", ".join(available())}')


def available() -> tuple[str, ...]:
  """The objectives of this checkout: the packages beside `vit/` with an `objective.py` (the
  module `resolve` reads), sorted; found from the files, none imported, so that listing them
  (a --help, an error) costs nothing and a new objective is listed without an edit here."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return tuple(sorted(name for name in os.listdir(root) if name != 'vit' and os.path.isfile(
      os.path.join(root, name, 'objective.py'))))


def init_image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int, int]:
  """(1, config.image_size, config.image_size, config.data.channels): the one image an
  objective's `init_params` traces (parameter shapes do not depend on the batch)."""
  return (1, config.image_size, config.image_size, config.data.channels)


def with_section(config: ml_collections.ConfigDict, definition: Definition
                 ) -> ml_collections.ConfigDict:
  """`config` with the objective's section at its defaults if it has none (a copy; `config`
  itself when nothing is missing): how `vit.plan` and the benchmarks train any config with
  any objective."""
  if definition.section is None or definition.name in config:
    return config
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config[definition.name] = definition.section()
  return config


def check_pixel_encoder(m: Any, objective: str) -> None:
  """The backbone a pixel-level pretraining objective (mpp/, mae/, simmim/) can train and save:
  ConfigError naming the model key it cannot honour. `m`: the resolved
  `vit.models.spec.ModelSpec`; `objective`: its name for the message ('MAE').

  - model.classifier: these objectives build the encoder with a class token
    (classifier='unpooled', as the official models_mae.py and SimMIM keep one) whatever the
    config says, and the checkpoint's saved config is what fine-tuning and export read its
    architecture from: a 'gap' there describes a model without the class token the params
    hold, and `--config.init=mae:DIR` failed on the position embedding's length.
  - model.resnet: their targets are pixels per model.patches.size, but a hybrid's token
    covers patches.size times the ResNet's stride, so targets and tokens do not line up (was
    a broadcasting or reshape traceback at the first step).
  - model.representation_size: the pre-logits layer feeds a classifier head, which these
    objectives do not have; it was silently neither trained nor saved, though the saved config
    named it.
  """
  if m.classifier not in ('token', 'unpooled'):
    raise ConfigError('model.classifier', m.classifier,
                      f'{objective} pretrains an encoder with a class token, which its '
                      'checkpoint keeps for fine-tuning and export; leave it at token')
  if m.resnet is not None:
    raise ConfigError('model.resnet.num_layers', m.resnet.num_layers,
                      f'{objective} predicts the pixels of each model.patches.size patch, but a '
                      'hybrid\'s token covers the ResNet stride times that; pretrain a plain ViT')
  if m.representation_size is not None:
    raise ConfigError('model.representation_size', m.representation_size,
                      f'{objective} has no classifier head for a pre-logits layer to feed, so it '
                      'would be neither trained nor saved; set it when fine-tuning')
