"""SimMIM (Xie et al., 2022): the model, its masking and its loss.

As microsoft/SimMIM (commit d3e29bc; `models/simmim.py`, `data/data_simmim.py`): square blocks
of `mask_patch_size` pixels (several patches wide) are masked at random, `ceil(ratio * blocks)`
of them per image (`MaskGenerator`); the embeddings of the masked patches are replaced by a
learned mask token before the class token and position embeddings are added; a linear layer
(the official 1x1 convolution + PixelShuffle) predicts each patch's raw pixels from its encoded
token; the loss is the L1 distance on the masked pixels only, summed and divided by
(masked pixels + 1e-5) and by the channels, against the model's input (the official code
compares with the normalised image). transformers' `ViTForMaskedImageModeling` computes the
same loss given the same `bool_masked_pos` (tests/test_simmim.py carries our weights into it).

Blocks that do not tile the patch grid (a 7x7 grid in blocks of 2x2 patches) are laid from the
top-left corner and cut at the bottom and right edges, so the last row and column of blocks
cover fewer patches: the official generator asserts that blocks tile the image instead.

Parameters are {'backbone': <the ViT, official names>, 'mask_token': [D], 'decoder': Dense
(D -> ph * pw * C)}; fine-tuning (`--config.init=simmim:DIR`) keeps params['backbone'].
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vit import config as config_lib, objective as objective_lib
from vit.errors import ConfigError
from vit.evaluators import fewshot
from vit.models import patches
from vit.models.spec import ModelSpec
from vit.models.vit import VisionTransformer
from vit.preprocess import input_fn


@dataclasses.dataclass(frozen=True)
class Spec:
  """What SimMIM's masking and loss need, read once from the config."""
  patch_size: tuple[int, int]
  grid: tuple[int, int]
  channels: int
  mask_ratio: float
  mask_patch_size: int

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, m: ModelSpec) -> 'Spec':
    """Reads the patch size of `m`, the patch grid at config.image_size
    (`vit.config.token_grid`), config.data.channels and config.simmim's mask_ratio and
    mask_patch_size."""
    return cls(m.patch_size, config_lib.token_grid(config, m),
               config.data.channels, config.simmim.mask_ratio, config.simmim.mask_patch_size)

  @property
  def num_patches(self) -> int:
    """N, the patches of one image: the grid's rows times its columns."""
    return self.grid[0] * self.grid[1]

  @property
  def block(self) -> tuple[int, int]:
    """Patches per mask block along rows and columns."""
    return self.mask_patch_size // self.patch_size[0], self.mask_patch_size // self.patch_size[1]

  @property
  def blocks(self) -> tuple[int, int]:
    """Mask blocks along rows and columns (the last ones cut at the edge)."""
    return tuple(-(-g // b) for g, b in zip(self.grid, self.block))

  @property
  def masked_blocks(self) -> int:
    """Mask blocks masked per image: ceil(blocks * mask_ratio), as the official `MaskGenerator`."""
    return int(math.ceil(self.blocks[0] * self.blocks[1] * self.mask_ratio))


def sample_mask(spec: Spec, rng: jax.Array, batch: int) -> jax.Array:
  """bool [B, N]: the masked patches, in the ViT's row-major patch order."""
  (bh, bw), (sh, sw) = spec.blocks, spec.block
  noise = jax.random.uniform(rng, (batch, bh * bw))
  # The ranks of i.i.d. noise are a random permutation: the first `masked_blocks` are masked.
  blocks = jnp.argsort(jnp.argsort(noise, axis=1), axis=1) < spec.masked_blocks
  mask = blocks.reshape(batch, bh, 1, bw, 1)
  mask = jnp.broadcast_to(mask, (batch, bh, sh, bw, sw)).reshape(batch, bh * sh, bw * sw)
  gh, gw = spec.grid
  return mask[:, :gh, :gw].reshape(batch, gh * gw)


class SimMimModel(nn.Module):
  """The ViT with a mask token on its input and a linear pixel decoder on its patch outputs."""
  backbone: VisionTransformer
  patch_values: int  # ph * pw * channels

  @nn.compact
  def __call__(self, images: jax.Array, mask: Optional[jax.Array], *, train: bool) -> jax.Array:
    """Model input [B, H, W, C], mask bool [B, N] -> predicted pixels [B, N, ph * pw * C]."""
    mask_token = self.param(
        'mask_token', nn.with_logical_partitioning(nn.initializers.normal(0.02), ('embed',)),
        (self.backbone.hidden_size,), jnp.float32)
    transform = None
    if mask is not None:
      transform = lambda x: jnp.where(mask[..., None], mask_token.astype(x.dtype), x)
    encoded = self.backbone(images, train=train, patch_transform=transform)[:, 1:]
    out = nn.Dense(self.patch_values, dtype=self.backbone.dtype, name='decoder',
                   kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                            ('embed', 'classes')),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('classes',)))(
                       encoded)
    return out.astype(jnp.float32)


def build_model(config: ml_collections.ConfigDict, m: ModelSpec) -> SimMimModel:
  """The untrained `SimMimModel` of a validated config: the backbone of `m` with its class token
  and no classifier (classifier='unpooled'), and a linear decoder to ph * pw *
  config.data.channels pixel values per patch."""
  backbone = config_lib.build_model(m, num_classes=None, classifier='unpooled')
  ph, pw = m.patch_size
  return SimMimModel(backbone=backbone, patch_values=ph * pw * config.data.channels)


def init_fn(model: SimMimModel, image_shape: tuple[int, ...]) -> Callable:
  """rng -> fresh parameters of `model`, {'backbone', 'mask_token', 'decoder'} boxed with their
  logical axis names, traced on zero images of `image_shape` [B, H, W, C] without a mask."""
  def init(rng):
    return model.init(rng, jnp.zeros(image_shape, jnp.float32), None, train=False)['params']
  return init


def masked_l1(spec: Spec, pred: jax.Array, target: jax.Array, weights: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
  """(the official L1 loss over weighted patches, the weight sum): summed absolute error on the
  masked pixels of all channels / (masked pixels + 1e-5) / channels."""
  ph, pw = spec.patch_size
  total = jnp.sum(weights)
  error = jnp.sum(jnp.abs(pred - target) * weights[..., None])
  return error / (total * ph * pw + 1e-5) / spec.channels, total


def loss_on(model: SimMimModel, spec: Spec, params, inputs: jax.Array, mask: jax.Array,
            train: bool, rngs: Optional[dict] = None, valid: Optional[jax.Array] = None
            ) -> tuple[jax.Array, dict]:
  """The loss of one batch of model inputs under a given mask (what the tests compare)."""
  pred = model.apply({'params': params}, inputs, mask, train=train, rngs=rngs or {})
  weights = mask.astype(jnp.float32)
  if valid is not None:  # Padding rows of an evaluation batch.
    weights = weights * valid[:, None]
  loss, count = masked_l1(spec, pred, patches.pixels(inputs, spec.patch_size), weights)
  # An int32 count, so that the train step sums it over micro-batches (vit.training.step).
  return loss, {'masked_patches': jnp.round(count).astype(jnp.int32)}


def make_loss_fn(model: SimMimModel, spec: Spec, m: ModelSpec):
  """loss_fn(params, batch, rng, train) for the shared train step: uint8 images in; `rng`
  feeds the mask and dropout. Metrics: `masked_patches`, int32, the patches averaged
  over; the train step sums it over a step's micro-batches (optimizer.accumulation_steps),
  so the step's count is logged (its mean over the steps of a log line)."""
  to_input = input_fn(m)

  def loss_fn(params, batch, rng, train):
    mask_rng, dropout_rng = jax.random.split(rng)
    images = batch['image']
    mask = sample_mask(spec, mask_rng, images.shape[0])
    return loss_on(model, spec, params, to_input(images), mask, train,
                   rngs={'dropout': dropout_rng}, valid=batch.get('mask'))
  return loss_fn


@dataclasses.dataclass(frozen=True)
class SimMimObjective:
  """SimMIM as a `vit.objective.Objective` (what simmim.train trains).

  Parameters: {'backbone': the ViT (official names), 'mask_token': float32 [D], 'decoder':
  Dense D -> ph * pw * C}. `predictions` are the predicted pixels, float32 [B, N, ph * pw * C]
  in the model's input scale, under a mask drawn from a fixed key (jax.random.key(0)) so that
  repeated calls compare. `representation` is the mean of the backbone's encoded patch tokens,
  float32 [B, D], on the unmasked images (as MPP's and MAE's:
  `vit.evaluators.fewshot.make_patch_mean_fn`).
  """
  model: SimMimModel
  spec: Spec
  image_shape: tuple[int, int, int, int]  # (1, H, W, C) traced at init.
  m: ModelSpec = dataclasses.field(repr=False, compare=False)  # The resolved model.

  def init_params(self, rng: jax.Array):
    """SimMIM's parameters {'backbone', 'mask_token', 'decoder'}, traced on one zero image
    (`init_fn`)."""
    return init_fn(self.model, self.image_shape)(rng)

  def loss(self, params, batch, rng: jax.Array, train: bool) -> tuple[jax.Array, dict]:
    """SimMIM's loss (`make_loss_fn`): block mask and dropout drawn from `rng`, the L1 distance on
    the masked patches of the valid rows; metrics {'masked_patches'} (int32:
    the patches averaged over, `make_loss_fn`)."""
    return make_loss_fn(self.model, self.spec, self.m)(params, batch, rng, train)

  def predictions(self, params, batch) -> jax.Array:
    """SimMIM's predicted pixels of every patch, float32 [B, N, ph * pw * C] in the model's input
    scale, under the mask of jax.random.key(0), without dropout."""
    images = batch['image']
    mask = sample_mask(self.spec, jax.random.key(0), images.shape[0])
    return self.model.apply({'params': params}, input_fn(self.m)(images), mask, train=False)

  def representation(self, params, images: jax.Array) -> jax.Array:
    """SimMIM's features: the mean of the backbone's encoded patch tokens, float32 [B, D], of the
    unmasked images."""
    return fewshot.make_patch_mean_fn(self.m)(self.backbone(params), images)

  def backbone(self, params):
    """params['backbone']: the ViT, without the mask token and the decoder."""
    return params['backbone']


def build(config: ml_collections.ConfigDict, m: ModelSpec) -> SimMimObjective:
  """The SimMIM objective of a validated config (`m`: its resolved model); its own
  section is checked here, so the trainer, vit.plan and the benchmarks all check it."""
  check_config(config, m)
  return SimMimObjective(model=build_model(config, m), spec=Spec.from_config(config, m),
                         image_shape=objective_lib.init_image_shape(config), m=m)


def section() -> ml_collections.ConfigDict:
  """config.simmim: SimMIM's keys and their defaults (a config adds it:
  `config.simmim = section()`)."""
  return ml_collections.ConfigDict(dict(
      mask_ratio=0.6,
      mask_patch_size=8,  # Pixels; a multiple of the patch size.
      # Held-out images for the SimMIM loss, rounded up to whole evaluation batches.
      eval_examples=1024,
  ))


def check_config(config: ml_collections.ConfigDict, m: ModelSpec) -> None:
  """config.simmim against the resolved model `m`; ConfigError naming the key.
  `vit.config.validate` calls it for every config that carries a `simmim` section."""
  c = config.simmim
  objective_lib.check_pixel_encoder(m, 'SimMIM')
  # 1 would mask every patch: the encoder would see no pixel at all.
  if not 0.0 < c.mask_ratio < 1.0:
    raise ConfigError('simmim.mask_ratio', c.mask_ratio, 'must be in (0, 1)')
  patch = m.patch_size
  if (not isinstance(c.mask_patch_size, int) or c.mask_patch_size < 1
      or any(c.mask_patch_size % p for p in patch)):
    raise ConfigError('simmim.mask_patch_size', c.mask_patch_size,
                      f'must be a positive multiple of the patch size {patch}')
  spec = Spec.from_config(config, m)
  blocks = spec.blocks[0] * spec.blocks[1]
  if blocks < 2:
    raise ConfigError('simmim.mask_patch_size', c.mask_patch_size,
                      f'leaves one mask block in the {config.image_size}-px image, which is '
                      'masked whole; use blocks smaller than the image')
  if spec.masked_blocks >= blocks:
    raise ConfigError('simmim.mask_ratio', c.mask_ratio,
                      f'masks all {blocks} blocks of {c.mask_patch_size} px (it masks '
                      'ceil(blocks * mask_ratio)), so the encoder sees no pixel; lower it or '
                      'use smaller simmim.mask_patch_size')
  if c.eval_examples < 0:
    raise ConfigError('simmim.eval_examples', c.eval_examples, 'must be >= 0')


DEFINITION = objective_lib.Definition(
    name='simmim', build=build, section=section, validate=check_config,
    # Its loss on held-out images (vit/evaluators/held_out_loss.py).
    metrics=(objective_lib.Metric('eval/loss', 'SimMIM loss (masked patches)'),))
