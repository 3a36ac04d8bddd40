"""The masked patch prediction model, its loss and its metrics (paper §4.6, Appendix B.1.2).

Parameters are {'backbone': <the ViT, official names>, 'mask_embedding': [D], 'head': Dense}:
fine-tuning (`--config.init=mpp:DIR`) keeps params['backbone'] and drops the rest.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from mpp import corruption as corruption_lib
from mpp import targets as targets_lib
from vit import config as config_lib, objective as objective_lib
from vit.errors import ConfigError
from vit.evaluators import fewshot
from vit.models import patches
from vit.models.vit import VisionTransformer
from vit.models.spec import ModelSpec, Pixels
from vit.preprocess import pixels_fn, to_unit


class MppModel(nn.Module):
  """A ViT that returns, for every patch position (class token excluded), a prediction."""
  backbone: VisionTransformer
  output_shape: tuple[int, ...]

  @nn.compact
  def __call__(self, images: jax.Array, corruption: Optional[corruption_lib.Corruption], *,
               train: bool) -> jax.Array:
    mask_embedding = self.param(
        'mask_embedding', nn.with_logical_partitioning(nn.initializers.normal(0.02), ('embed',)),
        (self.backbone.hidden_size,), jnp.float32)
    transform = None
    if corruption is not None:
      transform = lambda x: corruption_lib.apply(x, corruption, mask_embedding)
    encoded = self.backbone(images, train=train, patch_transform=transform)[:, 1:]
    out = nn.Dense(math.prod(self.output_shape), dtype=self.backbone.dtype, name='head',
                   kernel_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                            ('embed', 'classes')),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('classes',)))(
                       encoded)
    return out.reshape(*out.shape[:2], *self.output_shape).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Spec:
  """Everything the MPP loss needs to know, read once from the config."""
  target: str
  patch_size: tuple[int, int]
  channels: int
  bits: int
  grid: int
  normalize_pixels: bool
  rate: float
  mask_fraction: float
  random_fraction: float
  random_source: str = 'batch'
  # The model's pixel normalisation (`model.pixels`), or None for the official
  # x / 127.5 - 1. Targets are always computed from [0, 1] pixels (mpp/targets.py).
  pixels: Optional[Pixels] = None

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, m: ModelSpec) -> 'Spec':
    """Reads config.mpp (random_source 'batch' when the key is absent), config.data.channels, and
    the patch size and `pixels` of the resolved model `m`."""
    c = config.mpp
    return cls(c.target, m.patch_size, config.data.channels, c.bits, c.grid,
               c.normalize_pixels, c.corruption_rate, c.mask_fraction, c.random_fraction,
               c.get('random_source', 'batch'), m.pixels)

  @property
  def to_input(self):
    """uint8 [B, H, W, C] -> float32 model input, by `model.pixels` (vit.preprocess)."""
    return pixels_fn(self.pixels)

  @property
  def cell_size(self) -> tuple[int, int]:
    """downsampled_color: pixels per predicted cell (1x1 at 4-px patches and grid 4)."""
    return targets_lib.cell_size(self.patch_size, self.grid)

  @property
  def output_shape(self) -> tuple[int, ...]:
    """The shape of the head's prediction per patch (`mpp.targets.output_shape`): (classes,)
    for mean_color, (grid * grid, classes) for downsampled_color, (ph * pw * C,) for pixels."""
    return targets_lib.output_shape(self.target, self.patch_size, self.channels, self.bits,
                                    self.grid)


def build_model(config: ml_collections.ConfigDict, m: ModelSpec) -> MppModel:
  """The untrained `MppModel` of a validated config: the backbone of `m` with its class token and
  no classifier (classifier='unpooled'), and a zero-initialised head of `Spec.output_shape`."""
  backbone = config_lib.build_model(m, num_classes=None, classifier='unpooled')
  return MppModel(backbone=backbone, output_shape=Spec.from_config(config, m).output_shape)


def compute_targets(spec: Spec, unit_images: jax.Array) -> jax.Array:
  """float32 images [B, H, W, C] in [0, 1] -> MPP's targets (Appendix B.1.2), by spec.target:
  mean_color int32 [B, N] (each patch's quantised mean colour), downsampled_color int32
  [B, N, grid * grid], pixels float32 [B, N, ph * pw * C] (per-patch normalised under
  spec.normalize_pixels)."""
  if spec.target == 'mean_color':
    return targets_lib.mean_color(unit_images, spec.patch_size, spec.bits)
  if spec.target == 'downsampled_color':
    return targets_lib.downsampled_color(unit_images, spec.patch_size, spec.grid, spec.bits)
  t = patches.pixels(unit_images, spec.patch_size)
  return targets_lib.normalize_patches(t) if spec.normalize_pixels else t


def _masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def masked_loss(spec: Spec, outputs: jax.Array, targets: jax.Array, corrupted: jax.Array
                ) -> tuple[jax.Array, dict]:
  """Loss and accuracy averaged over the corrupted patches only (bool [B, N])."""
  weights = corrupted.astype(jnp.float32)
  if spec.target == 'pixels':
    per_patch = jnp.mean(jnp.square(outputs - targets), axis=-1)
    metrics = {'mse': _masked_mean(per_patch, weights)}
    if not spec.normalize_pixels:
      # The predicted patch's mean colour: comparable with the colour targets' accuracy.
      predicted = _mean_color_of_pixels(spec, outputs)
      actual = _mean_color_of_pixels(spec, targets)
      metrics['accuracy'] = _masked_mean((predicted == actual).astype(jnp.float32), weights)
    return metrics['mse'], metrics
  per_cell = optax.softmax_cross_entropy_with_integer_labels(outputs, targets)
  hits = (jnp.argmax(outputs, -1) == targets).astype(jnp.float32)
  if spec.target == 'downsampled_color':
    per_cell, hits = per_cell.mean(-1), hits.mean(-1)
  loss = _masked_mean(per_cell, weights)
  return loss, {'accuracy': _masked_mean(hits, weights)}


def _mean_color_of_pixels(spec: Spec, flat_patches: jax.Array) -> jax.Array:
  colors = flat_patches.reshape(*flat_patches.shape[:2], -1, spec.channels).mean(axis=2)
  return targets_lib.quantize(jnp.clip(colors, 0.0, 1.0), spec.bits)


def sample_corruption(spec: Spec, rng: jax.Array, images: jax.Array
                      ) -> corruption_lib.Corruption:
  """The corruption of a batch of images [B, H, W, C] (only the shape is read) drawn from `rng`:
  round(spec.rate * N) patches per image, masked, replaced or kept in spec's fractions, a
  replacement taken from the same image when spec.random_source is 'image' (`corruption.sample`)."""
  gh = images.shape[1] // spec.patch_size[0]
  gw = images.shape[2] // spec.patch_size[1]
  return corruption_lib.sample(rng, images.shape[0], gh * gw, rate=spec.rate,
                               mask_fraction=spec.mask_fraction,
                               random_fraction=spec.random_fraction,
                               within_image=spec.random_source == 'image')


def forward(model: MppModel, spec: Spec, params, images: jax.Array, rng: jax.Array,
            train: bool):
  """uint8 images -> (outputs, targets, corruption); `rng` feeds both corruption and dropout."""
  corrupt_rng, dropout_rng = jax.random.split(rng)
  corruption = sample_corruption(spec, corrupt_rng, images)
  outputs = model.apply({'params': params}, spec.to_input(images), corruption, train=train,
                        rngs={'dropout': dropout_rng})
  return outputs, compute_targets(spec, to_unit(images)), corruption


def make_loss_fn(model: MppModel, spec: Spec):
  """loss_fn(params, batch, rng, train) for the shared train step, as `MppObjective.loss`: uint8
  images in; `rng` feeds the corruption and dropout; the padding rows of an evaluation batch
  (batch['mask'] False) are left out. Metrics: `accuracy` (colour targets, and unnormalised
  pixels), `mse` (pixels)."""
  def loss_fn(params, batch, rng, train):
    outputs, targets, corruption = forward(model, spec, params, batch['image'], rng, train)
    return masked_loss(spec, outputs, targets, valid_rows(corruption.corrupted, batch))
  return loss_fn


def valid_rows(corrupted: jax.Array, batch) -> jax.Array:
  """The corrupted patches (bool [B, N]) of the batch's valid rows: an evaluation batch's
  padding (batch['mask'] False) counts for nothing; a training batch has no mask."""
  mask = batch.get('mask')
  return corrupted if mask is None else corrupted & mask[:, None]


@dataclasses.dataclass(frozen=True)
class MppObjective:
  """Masked patch prediction as a `vit.objective.Objective` (what mpp.train trains).

  Parameters: {'backbone': the ViT (official names), 'mask_embedding': float32 [D], 'head':
  Dense D -> prod(spec.output_shape)}. `predictions` are MPP's per-patch outputs, float32
  [B, N, *spec.output_shape], under a corruption drawn from a fixed key (jax.random.key(0)), so
  that repeated calls compare. `representation` is the mean of the backbone's encoded patch
  tokens, float32 [B, D], on the uncorrupted images (`vit.evaluators.fewshot.make_patch_mean_fn`).
  """
  model: MppModel
  spec: Spec
  image_shape: tuple[int, int, int, int]  # (1, H, W, C) traced at init.
  represent: Callable = dataclasses.field(repr=False)

  def init_params(self, rng: jax.Array):
    """MPP's parameters {'backbone', 'mask_embedding', 'head'}, traced on one zero image without
    corruption."""
    return self.model.init(rng, jnp.zeros(self.image_shape, jnp.float32), None,
                           train=False)['params']

  def loss(self, params, batch, rng: jax.Array, train: bool) -> tuple[jax.Array, dict]:
    """MPP's loss: the corruption and dropout drawn from `rng`, cross-entropy (colour targets) or
    MSE (pixels) averaged over the corrupted patches of the valid rows (`masked_loss`)."""
    return make_loss_fn(self.model, self.spec)(params, batch, rng, train)

  def predictions(self, params, batch) -> jax.Array:
    """MPP's per-patch outputs, float32 [B, N, *spec.output_shape], under a corruption drawn
    from jax.random.key(0), without dropout."""
    return forward(self.model, self.spec, params, batch['image'], jax.random.key(0), False)[0]

  def representation(self, params, images: jax.Array) -> jax.Array:
    """MPP's features: the mean of the backbone's encoded patch tokens, float32 [B, D], of the
    uncorrupted images."""
    return self.represent(self.backbone(params), images)

  def backbone(self, params):
    """params['backbone']: the ViT, without the mask embedding and the head."""
    return params['backbone']


def build(config: ml_collections.ConfigDict, m: ModelSpec) -> MppObjective:
  """The MPP objective of a validated config (`m`: its resolved model)."""
  return MppObjective(
      model=build_model(config, m), spec=Spec.from_config(config, m),
      image_shape=objective_lib.init_image_shape(config),
      represent=fewshot.make_patch_mean_fn(m))


TARGETS = ('mean_color', 'downsampled_color', 'pixels')
# Colour classes per prediction: (2**bits)**channels. 3 bits of RGB (the paper's 512) up to 5
# bits (32768, a head of 2M weights at width 64); 8 bits of RGB would be 16.7M classes.
MAX_COLOR_CLASSES = 2 ** 15


def section() -> ml_collections.ConfigDict:
  """config.mpp: MPP's keys and their defaults (a config adds it: `config.mpp = section()`)."""
  return ml_collections.ConfigDict(dict(
      target='mean_color',  # 'mean_color' | 'downsampled_color' | 'pixels'
      corruption_rate=0.5,
      mask_fraction=0.8,
      random_fraction=0.1,
      # Where a randomly replaced patch comes from: 'batch' (any image) or 'image' (the same
      # image; no all-gather of the batch's embeddings across devices, for pods).
      random_source='batch',
      bits=3,  # Per channel: (2**bits)**data.channels colour classes (3 bits RGB: 512).
      # downsampled_color: each patch average-pooled to grid x grid cells of patch/grid pixels
      # (the paper: 4x4 cells of 4x4 pixels on 16-px patches). At Fashion-MNIST's 4-px patches
      # grid 4 is one pixel per cell (per-pixel colours); grid 2 is 2x2-pixel cells.
      grid=4,
      normalize_pixels=False,
      image_every=0,  # Steps between PNG grids of MPP predictions; 0: only at the end.
      # Held-out images for the MPP loss and colour accuracy, rounded up to whole
      # evaluation batches.
      eval_examples=1024,
  ))


def validate(config: ml_collections.ConfigDict, m: ModelSpec) -> None:
  """Checks config.mpp against the resolved model `m` and the data; ConfigError naming the key.
  `vit.config.validate` calls it for every config that carries an `mpp` section."""
  mpp, channels = config.mpp, config.data.channels
  objective_lib.check_pixel_encoder(m, 'MPP')
  if mpp.target not in TARGETS:
    raise ConfigError('mpp.target', mpp.target, f'must be one of {", ".join(TARGETS)}')
  if not 0.0 < mpp.corruption_rate <= 1.0:
    raise ConfigError('mpp.corruption_rate', mpp.corruption_rate, 'must be in (0, 1]')
  n = math.prod(config_lib.token_grid(config, m))
  if corruption_lib.num_corrupted(n, mpp.corruption_rate) < 1:
    # Nothing to predict: a loss, gradients and accuracy of 0 at every step.
    raise ConfigError('mpp.corruption_rate', mpp.corruption_rate, f'corrupts none of the {n} '
                      'patches (it corrupts round(N * corruption_rate))')
  for key in ('mask_fraction', 'random_fraction'):
    if not 0.0 <= mpp[key] <= 1.0:
      raise ConfigError(f'mpp.{key}', mpp[key], 'must be in [0, 1]')
  if mpp.get('random_source', 'batch') not in ('batch', 'image'):
    raise ConfigError('mpp.random_source', mpp.random_source, 'must be batch or image')
  if mpp.mask_fraction + mpp.random_fraction > 1.0:
    raise ConfigError('mpp.random_fraction', mpp.random_fraction,
                      f'plus mpp.mask_fraction={mpp.mask_fraction} exceeds 1')
  if not 1 <= mpp.bits <= 8:
    raise ConfigError('mpp.bits', mpp.bits, 'must be in 1..8')
  classes = (2 ** mpp.bits) ** channels
  if mpp.target != 'pixels' and classes > MAX_COLOR_CLASSES:
    raise ConfigError('mpp.bits', mpp.bits, f'bins each of the {channels} channels, so '
                      f'{classes} colour classes; at most {MAX_COLOR_CLASSES} '
                      f'(e.g. {int(math.log2(MAX_COLOR_CLASSES)) // channels} bits)')
  if mpp.target == 'downsampled_color' and any(p % mpp.grid for p in m.patch_size):
    raise ConfigError('mpp.grid', mpp.grid, f'must divide the patch size {m.patch_size}')
  for key in ('image_every', 'eval_examples'):
    if mpp[key] < 0:
      raise ConfigError(f'mpp.{key}', mpp[key], 'must be >= 0')


DEFINITION = objective_lib.Definition(
    name='mpp', build=build, section=section, validate=validate,
    # mpp/evaluator.py, on the corrupted patches of held-out images: the target colour's
    # accuracy (a colour target), else the loss (pixels).
    metrics=(objective_lib.Metric('eval/accuracy', 'MPP colour accuracy (corrupted patches)',
                                  percent=True),
             objective_lib.Metric('eval/loss', 'MPP loss (corrupted patches)')))
