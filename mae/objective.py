"""Masked autoencoders (He et al., 2022): the model, its masking and its loss.

As facebookresearch/mae `models_mae.py` (commit efb2a80): the encoder (our ViT backbone) sees
only the visible patches, a random `1 - mask_ratio` of them chosen by the argsort of uniform
noise (`random_masking`); a light decoder (its own width, depth and heads) embeds them, puts a
learned mask token at every removed position, adds fixed 2-D sine-cosine position embeddings and
predicts every patch's pixels; the loss is the mean squared error on the removed patches only,
against each patch's pixels normalised to zero mean and unit variance (`norm_pix_loss`: unbiased
variance, eps 1e-6), computed from the model's input as the official code computes it from the
normalised image. transformers' `ViTMAEForPreTraining` computes the same loss from the same
noise (tests/test_mae.py carries our weights into it).

Differences from the official recipe, so that MAE, SimMIM and MPP share one backbone: the
encoder is our ViT (learned 1-D position embeddings and the official ViT initialisers, so the
pretrained encoder exports to every format as any ViT does; the official MAE encoder uses fixed
sine-cosine ones, `model.posemb=sincos_2d` is the nearest here), and its GELU and LayerNorm eps
are the backbone's (config.model), as are the decoder's.

Parameters are {'backbone': <the ViT, official names>, 'decoder': {'decoder_embed', 'mask_token',
'decoderblock_{i}', 'decoder_norm', 'decoder_pred'}} (the official module names; the blocks
have the ViT block's layout). Fine-tuning (`--config.init=mae:DIR`) keeps params['backbone'].
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vit import config as config_lib, objective as objective_lib
from vit.errors import ConfigError
from vit.evaluators import fewshot
from vit.models import patches
from vit.models.layer_norm import LayerNorm
from vit.models.spec import ModelSpec
from vit.models.vit import Encoder1DBlock, VisionTransformer
from vit.preprocess import input_fn

_xavier = nn.initializers.xavier_uniform()


def _logical(init, names):
  return nn.with_logical_partitioning(init, names)


def sincos_2d(grid: int, width: int) -> np.ndarray:
  """The official fixed position embeddings [1 + grid**2, width], a zero row for the class token.

  `util/pos_embed.py:get_2d_sincos_pos_embed`: the first half of the channels encodes the column
  (its `np.meshgrid(grid_w, grid_h)` puts w first), the second the row; each half is sin then
  cos over frequencies 1 / 10000**(k / (width / 4)). transformers' ViTMAE rotates its own table
  into this layout to load the official checkpoints. Not vit.models.vit.sincos_2d (big_vision's
  frequencies and order).
  """
  if width % 4:
    raise ValueError(f'decoder width {width} must be a multiple of 4 for sine-cosine embeddings')
  omega = 1.0 / 10000 ** (np.arange(width // 4, dtype=np.float64) / (width / 4))
  rows, cols = np.mgrid[:grid, :grid]
  one = lambda pos: np.concatenate([np.sin(np.outer(pos.ravel(), omega)),
                                    np.cos(np.outer(pos.ravel(), omega))], axis=1)
  table = np.concatenate([one(cols), one(rows)], axis=1)
  return np.concatenate([np.zeros((1, width)), table]).astype(np.float32)


def num_kept(num_patches: int, mask_ratio: float) -> int:
  """Patches the encoder sees: int(N * (1 - ratio)) as the official code (12 of 49 at 0.75)."""
  return int(num_patches * (1 - mask_ratio))


def random_masking(noise: jax.Array, keep: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """float [B, N] noise -> (ids_keep int [B, keep], mask bool [B, N], ids_restore int [B, N]).

  The `keep` patches of smallest noise are visible; `ids_restore` is each patch's rank, so
  position i is masked exactly when its rank is `keep` or more (the official mask, unshuffled).
  """
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  return ids_shuffle[:, :keep], ids_restore >= keep, ids_restore


class Decoder(nn.Module):
  """The MAE decoder: encoded visible tokens (class token first) -> pixels of every patch."""
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  grid: int
  patch_values: int  # ph * pw * channels
  gelu_approximate: bool = True
  layer_norm_epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  # The backbone's kernels (vit.config.attention_kernel, vit.config.layer_norm).
  attention_kernel: Optional[str] = None
  layer_norm: Optional[str] = None

  @nn.compact
  def __call__(self, latent: jax.Array, ids_restore: jax.Array, *, train: bool) -> jax.Array:
    x = nn.Dense(self.hidden_size, dtype=self.dtype, name='decoder_embed',
                 kernel_init=_logical(_xavier, (None, 'embed')),
                 bias_init=_logical(nn.initializers.zeros, ('embed',)))(latent)
    mask_token = self.param('mask_token', _logical(nn.initializers.normal(0.02), ('embed',)),
                            (self.hidden_size,), jnp.float32)
    b, n = ids_restore.shape
    tokens = jnp.concatenate(
        [x[:, 1:], jnp.broadcast_to(mask_token.astype(x.dtype),
                                    (b, n + 1 - x.shape[1], self.hidden_size))], axis=1)
    tokens = jnp.take_along_axis(tokens, ids_restore[..., None], axis=1)  # Unshuffle.
    x = jnp.concatenate([x[:, :1], tokens], axis=1)
    x = x + jnp.asarray(sincos_2d(self.grid, self.hidden_size), x.dtype)[None]
    for i in range(self.num_layers):
      x = Encoder1DBlock(self.mlp_dim, self.num_heads, 0.0, 0.0, self.gelu_approximate,
                         self.layer_norm_epsilon, self.dtype,
                         attention_kernel=self.attention_kernel, layer_norm=self.layer_norm,
                         name=f'decoderblock_{i}')(x, not train)
    x = LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype, name='decoder_norm',
                  implementation=self.layer_norm,
                  scale_init=_logical(nn.initializers.ones, ('embed',)),
                  bias_init=_logical(nn.initializers.zeros, ('embed',)))(x)
    x = nn.Dense(self.patch_values, dtype=self.dtype, name='decoder_pred',
                 kernel_init=_logical(_xavier, ('embed', 'classes')),
                 bias_init=_logical(nn.initializers.zeros, ('classes',)))(x)
    return x[:, 1:].astype(jnp.float32)


class MaeModel(nn.Module):
  """MAE's encoder and decoder: the ViT backbone sees the patches that `random_masking` of the
  noise keeps (`num_kept(N, mask_ratio)`), the `Decoder` predicts the pixels of every patch."""
  backbone: VisionTransformer
  decoder: Decoder
  mask_ratio: float

  def __call__(self, images: jax.Array, noise: jax.Array, *, train: bool
               ) -> tuple[jax.Array, jax.Array]:
    """Model input [B, H, W, C], noise [B, N] -> (predicted pixels [B, N, P], mask bool [B, N])."""
    ids_keep, mask, ids_restore = random_masking(noise, num_kept(noise.shape[1], self.mask_ratio))
    latent = self.backbone(images, train=train, keep=ids_keep)
    return self.decoder(latent, ids_restore, train=train), mask


@dataclasses.dataclass(frozen=True)
class Spec:
  """What the MAE loss needs, read once from the config."""
  patch_size: tuple[int, int]
  grid: tuple[int, int]
  mask_ratio: float
  norm_pix_loss: bool

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, m: ModelSpec) -> 'Spec':
    """Reads the patch size of `m`, the patch grid at config.image_size
    (`vit.config.token_grid`) and config.mae's mask_ratio and norm_pix_loss."""
    return cls(m.patch_size, config_lib.token_grid(config, m),
               config.mae.mask_ratio, config.mae.norm_pix_loss)

  @property
  def num_patches(self) -> int:
    """N, the patches of one image: the grid's rows times its columns."""
    return self.grid[0] * self.grid[1]


def build_model(config: ml_collections.ConfigDict, m: ModelSpec) -> MaeModel:
  """The untrained `MaeModel` of a validated config: the backbone of `m` with its class token and
  no classifier (classifier='unpooled'), and a decoder of config.mae.decoder's sizes that takes
  the backbone's GELU, LayerNorm epsilon, dtype and kernels and predicts ph * pw *
  config.data.channels values per patch."""
  backbone = config_lib.build_model(m, num_classes=None, classifier='unpooled')
  d = config.mae.decoder
  grid = config_lib.token_grid(config, m)
  ph, pw = m.patch_size
  decoder = Decoder(d.hidden_size, d.num_layers, d.num_heads, d.mlp_dim, grid[0],
                    ph * pw * config.data.channels, m.gelu_approximate,
                    m.layer_norm_epsilon, jnp.dtype(m.dtype),
                    config_lib.attention_kernel(m), config_lib.layer_norm(m))
  return MaeModel(backbone=backbone, decoder=decoder, mask_ratio=config.mae.mask_ratio)


def init_fn(model: MaeModel, spec: Spec, image_shape: tuple[int, ...]) -> Callable:
  """rng -> fresh parameters of `model`, {'backbone', 'decoder'} boxed with their logical axis
  names, traced on zero images of `image_shape` [B, H, W, C] and zero noise [B, N]."""
  def init(rng):
    images = jnp.zeros(image_shape, jnp.float32)
    noise = jnp.zeros((image_shape[0], spec.num_patches), jnp.float32)
    return model.init(rng, images, noise, train=False)['params']
  return init


def targets(spec: Spec, inputs: jax.Array) -> jax.Array:
  """Model input [B, H, W, C] -> [B, N, P] pixel targets, per-patch normalised if asked.

  Rows, then columns, then channels: the official `patchify` ('nchpwq->nhwpqc').
  """
  t = patches.pixels(inputs, spec.patch_size)
  if not spec.norm_pix_loss:
    return t
  mean = t.mean(axis=-1, keepdims=True)
  var = t.var(axis=-1, keepdims=True, ddof=1)  # torch's Tensor.var: unbiased.
  return (t - mean) / jnp.sqrt(var + 1e-6)


def masked_mse(pred: jax.Array, target: jax.Array, weights: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
  """(mean over weighted patches of the per-patch MSE, the weight sum)."""
  per_patch = jnp.mean(jnp.square(pred - target), axis=-1)
  total = jnp.sum(weights)
  return jnp.sum(per_patch * weights) / jnp.maximum(total, 1e-9), total


def loss_on(model: MaeModel, spec: Spec, params, inputs: jax.Array, noise: jax.Array,
            train: bool, rngs: Optional[dict] = None, valid: Optional[jax.Array] = None
            ) -> tuple[jax.Array, dict]:
  """The loss of one batch of model inputs under given masking noise (what the tests compare)."""
  pred, mask = model.apply({'params': params}, inputs, noise, train=train, rngs=rngs or {})
  weights = mask.astype(jnp.float32)
  if valid is not None:  # Padding rows of an evaluation batch.
    weights = weights * valid[:, None]
  loss, count = masked_mse(pred, targets(spec, inputs), weights)
  # An int32 count, so that the train step sums it over micro-batches (vit.training.step).
  return loss, {'masked_patches': jnp.round(count).astype(jnp.int32)}


def make_loss_fn(model: MaeModel, spec: Spec, m: ModelSpec):
  """loss_fn(params, batch, rng, train) for the shared train step: uint8 images in; `rng`
  feeds the masking noise and dropout. Metrics: `masked_patches`, int32, the patches averaged
  over; the train step sums it over a step's micro-batches (optimizer.accumulation_steps),
  so the step's count is logged (its mean over the steps of a log line)."""
  to_input = input_fn(m)

  def loss_fn(params, batch, rng, train):
    noise_rng, dropout_rng = jax.random.split(rng)
    images = batch['image']
    noise = jax.random.uniform(noise_rng, (images.shape[0], spec.num_patches))
    return loss_on(model, spec, params, to_input(images), noise, train,
                   rngs={'dropout': dropout_rng}, valid=batch.get('mask'))
  return loss_fn


@dataclasses.dataclass(frozen=True)
class MaeObjective:
  """MAE as a `vit.objective.Objective` (what mae.train trains).

  Parameters: {'backbone': the ViT (official names), 'decoder': see the module}.
  `predictions` are the decoder's pixels, float32 [B, N, ph * pw * C] (normalised per patch
  under norm_pix_loss), every patch predicted, under masking noise from a fixed key
  (jax.random.key(0)) so that repeated calls compare. `representation` is the mean of the
  backbone's encoded patch tokens, float32 [B, D], with every patch visible (as MPP's and
  SimMIM's: `vit.evaluators.fewshot.make_patch_mean_fn`).
  """
  model: MaeModel
  spec: Spec
  image_shape: tuple[int, int, int, int]  # (1, H, W, C) traced at init.
  m: ModelSpec = dataclasses.field(repr=False, compare=False)  # The resolved model.

  def init_params(self, rng: jax.Array):
    """MAE's parameters {'backbone', 'decoder'}, traced on one zero image (`init_fn`)."""
    return init_fn(self.model, self.spec, self.image_shape)(rng)

  def loss(self, params, batch, rng: jax.Array, train: bool) -> tuple[jax.Array, dict]:
    """MAE's loss (`make_loss_fn`): masking noise and dropout drawn from `rng`, the MSE on the
    removed patches of the valid rows; metrics {'masked_patches'} (int32:
    the patches averaged over, `make_loss_fn`)."""
    return make_loss_fn(self.model, self.spec, self.m)(params, batch, rng, train)

  def predictions(self, params, batch) -> jax.Array:
    """MAE's decoded pixels of every patch, float32 [B, N, ph * pw * C], under the masking
    noise of jax.random.key(0), without dropout."""
    images = batch['image']
    noise = jax.random.uniform(jax.random.key(0), (images.shape[0], self.spec.num_patches))
    return self.model.apply({'params': params}, input_fn(self.m)(images), noise,
                            train=False)[0]

  def representation(self, params, images: jax.Array) -> jax.Array:
    """MAE's features: the mean of the encoder's patch tokens, float32 [B, D], every patch
    visible."""
    return fewshot.make_patch_mean_fn(self.m)(self.backbone(params), images)

  def backbone(self, params):
    """params['backbone']: the encoder, without the decoder."""
    return params['backbone']


def build(config: ml_collections.ConfigDict, m: ModelSpec) -> MaeObjective:
  """The MAE objective of a validated config (`m`: its resolved model); its own
  section is checked here, so the trainer, vit.plan and the benchmarks all check it."""
  check_config(config, m)
  return MaeObjective(model=build_model(config, m), spec=Spec.from_config(config, m),
                      image_shape=objective_lib.init_image_shape(config), m=m)


def section() -> ml_collections.ConfigDict:
  """config.mae: MAE's keys and their defaults (a config adds it: `config.mae = section()`)."""
  return ml_collections.ConfigDict(dict(
      mask_ratio=0.75,
      norm_pix_loss=True,
      decoder=dict(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=128),
      # Held-out images for the MAE loss, rounded up to whole evaluation batches.
      eval_examples=1024,
  ))


def check_config(config: ml_collections.ConfigDict, m: ModelSpec) -> None:
  """config.mae against the resolved model `m`; ConfigError naming the key.
  `vit.config.validate` calls it for every config that carries a `mae` section."""
  c = config.mae
  objective_lib.check_pixel_encoder(m, 'MAE')
  if not 0.0 < c.mask_ratio < 1.0:
    raise ConfigError('mae.mask_ratio', c.mask_ratio, 'must be in (0, 1)')
  n = math.prod(config_lib.token_grid(config, m))
  if num_kept(n, c.mask_ratio) < 1:
    raise ConfigError('mae.mask_ratio', c.mask_ratio, f'leaves the encoder none of the {n} '
                      'patches (it keeps int(N * (1 - mask_ratio)))')
  if num_kept(n, c.mask_ratio) >= n:
    # A ratio so small that 1 - r rounds to 1.0: nothing masked, a loss of 0 every step.
    raise ConfigError('mae.mask_ratio', c.mask_ratio, f'masks none of the {n} patches '
                      '(it keeps int(N * (1 - mask_ratio)))')
  d = c.decoder
  for key in ('hidden_size', 'num_layers', 'num_heads', 'mlp_dim'):
    if not isinstance(d[key], int) or d[key] < 1:
      raise ConfigError(f'mae.decoder.{key}', d[key], 'must be a positive integer')
  if d.hidden_size % d.num_heads:
    raise ConfigError('mae.decoder.num_heads', d.num_heads,
                      f'does not divide mae.decoder.hidden_size={d.hidden_size}')
  if d.hidden_size % 4:
    raise ConfigError('mae.decoder.hidden_size', d.hidden_size,
                      'must be a multiple of 4 (2-D sine-cosine position embeddings)')
  gh, gw = config_lib.token_grid(config, m)
  if gh != gw:
    raise ConfigError('image_size', config.image_size, f'gives a {gh}x{gw} patch grid; the '
                      'decoder\'s sine-cosine table is square')
  if m.posemb == 'relative' or m.attention != 'global':
    raise ConfigError('model.posemb' if m.posemb == 'relative' else 'model.attention',
                      m.posemb if m.posemb == 'relative' else m.attention,
                      'MAE\'s encoder drops patches, which relative position biases and axial '
                      'attention (defined on the whole grid) cannot follow')
  # Fashion-MNIST is greyscale: at data.channels=3 its channels are three copies of one.
  grey = config.data.get('source') == 'fashion_mnist'
  values = math.prod(m.patch_size) * (1 if grey else config.data.channels)
  if c.norm_pix_loss and values < 2:
    # One distinct value per patch: its variance is 0, so every target is 0 (several copies)
    # or NaN (0 / 0, one value) and the loss tells nothing about the encoder.
    held = (f'{config.data.channels} copies of one grey channel (data.source fashion_mnist '
            'is greyscale)' if grey and config.data.channels > 1 else
            f'{config.data.channels} channel(s)')
    raise ConfigError('mae.norm_pix_loss', c.norm_pix_loss,
                      f'normalises each patch by its variance, but a {m.patch_size} patch of '
                      f'{held} holds one value; set it False or use larger patches')
  if c.eval_examples < 0:
    raise ConfigError('mae.eval_examples', c.eval_examples, 'must be >= 0')


DEFINITION = objective_lib.Definition(
    name='mae', build=build, section=section, validate=check_config,
    # Its loss on held-out images (vit/evaluators/held_out_loss.py).
    metrics=(objective_lib.Metric('eval/loss', 'MAE loss (masked patches)'),))
