"""Supervised classification: softmax cross-entropy on the model's logits."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vit.preprocess import to_model_input


def make_loss_fn(model, to_input=to_model_input):
  """`to_input`: uint8 images -> model input (vit.preprocess.input_fn of the model dict)."""
  def loss_fn(params, batch, rng, train):
    logits = model.apply({'params': params}, to_input(batch['image']), train=train,
                         rngs={'dropout': rng})
    labels = batch['label']
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, {'accuracy': accuracy}
  return loss_fn


def make_logits_fn(model, to_input=to_model_input):
  def logits_fn(params, batch):
    return model.apply({'params': params}, to_input(batch['image']), train=False)
  return logits_fn
