"""Supervised classification: softmax cross-entropy on the model's logits."""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vit import config as config_lib, objective as objective_lib, preprocess
from vit.errors import ConfigError
from vit.evaluators import fewshot
from vit.models.spec import ModelSpec
from vit.models.vit import VisionTransformer
from vit.preprocess import to_model_input


def make_loss_fn(model, to_input=to_model_input):
  """`to_input`: uint8 images -> model input (vit.preprocess.input_fn of the model)."""
  def loss_fn(params, batch, rng, train):
    logits = model.apply({'params': params}, to_input(batch['image']), train=train,
                         rngs={'dropout': rng})
    labels = batch['label']
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    hits = jnp.argmax(logits, -1) == labels
    mask = batch.get('mask')  # An evaluation batch's padding rows count for nothing.
    if mask is None:
      return losses.mean(), {'accuracy': jnp.mean(hits)}
    valid = jnp.maximum(jnp.sum(mask), 1)
    return (jnp.sum(jnp.where(mask, losses, 0.0)) / valid,
            {'accuracy': jnp.sum(hits & mask) / valid})
  return loss_fn


def make_logits_fn(model, to_input=to_model_input):
  """logits_fn(params, batch) -> logits float32 [B, C] of batch['image'] (uint8, turned into the
  model's input by `to_input`), without dropout."""
  def logits_fn(params, batch):
    return model.apply({'params': params}, to_input(batch['image']), train=False)
  return logits_fn


@dataclasses.dataclass(frozen=True)
class Classifier:
  """Classification as a `vit.objective.Objective` (supervised.train and .finetune).

  Parameters: the ViT's, official names (a 'head' Dense D -> C, 'pre_logits' when
  model.representation_size is set). `predictions` are logits float32 [B, C];
  `representation` is what the head sees, float32 [B, D] (pre_logits when present; see
  `vit.evaluators.fewshot.make_representation_fn`). Images are normalised by the model's own
  `pixels` (a checkpoint's, when fine-tuning; else x / 127.5 - 1).
  """
  model: VisionTransformer
  image_shape: tuple[int, int, int, int]  # (1, H, W, C) traced at init.
  to_input: Callable = dataclasses.field(repr=False)
  represent: Callable = dataclasses.field(repr=False)

  def init_params(self, rng: jax.Array):
    """The classifier's parameters, the ViT's official tree with its head, traced on one zero
    image."""
    return self.model.init(rng, jnp.zeros(self.image_shape, jnp.float32), train=False)['params']

  def loss(self, params, batch, rng: jax.Array, train: bool) -> tuple[jax.Array, dict]:
    """Classification's loss: softmax cross-entropy of the logits against batch['label'], the mean
    over the batch's valid rows (all, without batch['mask']); `rng` feeds dropout. Metrics
    {'accuracy'}: top-1."""
    return make_loss_fn(self.model, self.to_input)(params, batch, rng, train)

  def predictions(self, params, batch) -> jax.Array:
    """Classification's outputs: logits float32 [B, C], without dropout (`make_logits_fn`)."""
    return make_logits_fn(self.model, self.to_input)(params, batch)

  def representation(self, params, images: jax.Array) -> jax.Array:
    """Classification's features: what the head sees, float32 [B, D] (pre_logits when present)."""
    return self.represent(params, images)

  def backbone(self, params):
    """`params` without the head ('pre_logits', when present, stays)."""
    return {k: v for k, v in params.items() if k != 'head'}


def check_classes(m: ModelSpec) -> None:
  """ConfigError naming model.num_classes when the resolved model `m` has no head to classify
  with, or model.classifier when it is 'unpooled' (no pooled token for a head)."""
  if m.num_classes is None:
    raise ConfigError('model.num_classes', None, 'must be set for classification')
  if m.classifier == 'unpooled':
    # A valid value for the pretraining objectives (their encoder keeps every token), but a
    # head on the whole sequence gives [B, N, C] logits: a broadcasting traceback in the loss.
    raise ConfigError('model.classifier', m.classifier,
                      'has no pooled output for a classification head; use token or gap')


def build(config: ml_collections.ConfigDict, m: ModelSpec) -> Classifier:
  """The classifier of a validated config (`m`: its resolved model); ConfigError without
  model.num_classes."""
  check_classes(m)
  return Classifier(
      model=config_lib.build_model(m),
      image_shape=objective_lib.init_image_shape(config),
      to_input=preprocess.input_fn(m), represent=fewshot.make_representation_fn(m))


DEFINITION = objective_lib.Definition(name='supervised', build=build)
