"""The network a resolved model describes: preset resolution, construction, and the
implementations chosen for the platform a step runs on. Next to the models, once.

`resolved_model` is `config.model` as plain data (its nested layout, as checkpoints carry it)
with a preset's sizes filled in; `vit.config.validate` returns it as a `ModelSpec`
(vit/models/spec.py), and every model in the project is built from a spec by `build_model`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from vit.errors import ConfigError
from vit.models import layer_norm as layer_norm_lib, presets
from vit.models.resnet import ResNetConfig
from vit.models.spec import ModelSpec
from vit.models.vit import VisionTransformer, patch_grid


def resolved_model(config: ml_collections.ConfigDict) -> dict:
  """The architecture as plain data in `config.model`'s layout: the preset's sizes overlaid
  with every explicit key. ConfigError naming `model.name` (an unknown preset) or the first
  size left unset."""
  m = config.model.to_dict()
  if m['name'] is not None:
    if m['name'] not in presets.PRESETS:
      raise ConfigError('model.name', m['name'],
                        f'unknown preset; known: {", ".join(presets.PRESETS)}')
    preset = presets.PRESETS[m['name']]
    m['patches']['size'] = m['patches']['size'] or preset['patches']['size']
    for key in ('hidden_size',):
      m[key] = m[key] if m[key] is not None else preset[key]
    for key, value in preset['transformer'].items():
      if m['transformer'][key] is None:
        m['transformer'][key] = value
    if m['resnet']['num_layers'] is None and preset['resnet'] is not None:
      width = m['resnet']['width_factor']
      m['resnet'] = dict(preset['resnet'])
      if width != ResNetConfig.width_factor:  # Set by the config: kept, as every explicit key.
        m['resnet']['width_factor'] = width
  for key, value in (('patches.size', m['patches']['size']), ('hidden_size', m['hidden_size']),
                     *((f'transformer.{k}', v) for k, v in m['transformer'].items())):
    if value is None:
      raise ConfigError(f'model.{key}', None, 'not set: set it or choose a preset in model.name')
  return m


def preset_overrides(config: ml_collections.ConfigDict) -> list[tuple[str, object, object]]:
  """The explicit keys of `config.model` that differ from the preset named in `model.name`, as
  (key, value, preset's value) in the layout's order; [] without a preset or an override. A
  preset named beside a config's own sizes is overlaid by them (`resolved_model`), so
  `--config.model.name=ViT-B/16` on a small config keeps the small sizes: callers say so."""
  m = config.model.to_dict()
  preset = presets.PRESETS.get(m['name'])
  if preset is None:
    return []
  pairs = [('patches.size', m['patches']['size'], preset['patches']['size']),
           ('hidden_size', m['hidden_size'], preset['hidden_size'])]
  pairs += [(f'transformer.{k}', m['transformer'][k], v) for k, v in preset['transformer'].items()]
  return [(key, value, want) for key, value, want in pairs
          if value is not None and _as_tuple(value) != _as_tuple(want)]


def _as_tuple(value) -> tuple:
  return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def build_model(m: ModelSpec, *, num_classes: int | None = None, classifier: str | None = None
                ) -> VisionTransformer:
  """The VisionTransformer `m` describes; `num_classes` and `classifier` override its head
  (None: the spec's), as the pretraining objectives do for their own heads."""
  return VisionTransformer(
      num_classes=m.num_classes if num_classes is None else num_classes,
      patch_size=m.patch_size, hidden_size=m.hidden_size, num_layers=m.num_layers,
      mlp_dim=m.mlp_dim, num_heads=m.num_heads, dropout_rate=m.dropout_rate,
      attention_dropout_rate=m.attention_dropout_rate,
      classifier=classifier or m.classifier,
      representation_size=m.representation_size,
      resnet=m.resnet,
      gelu_approximate=m.gelu_approximate,
      layer_norm_epsilon=m.layer_norm_epsilon,
      remat=m.remat,
      dtype=jnp.dtype(m.dtype),
      posemb=m.posemb,
      attention=m.attention,
      attention_kernel=attention_kernel(m),
      scan_layers=m.scan_layers,
      remat_policy=m.remat_policy,
      layer_norm=layer_norm(m),
  )


def attention_kernel(m: ModelSpec, platform: str | None = None) -> str | None:
  """jax.nn.dot_product_attention's implementation for `model.attention_kernel`.

  'auto' takes cuDNN's fused attention where it was measured to win: NVIDIA GPUs computing in
  bfloat16 without a logits bias (ViT-B/16 on an H200: 1.31x the images/s and 26% less step
  memory than XLA's attention, docs/performance.md); XLA's everywhere else (CPU, TPU).
  `platform` is the one the step will run on (default: this process's). Raises ConfigError
  for 'cudnn' on another platform than 'gpu'.
  """
  if m.attention_kernel == 'xla':
    return 'xla'
  platform = platform or jax.default_backend()
  if m.attention_kernel == 'cudnn':
    if platform != 'gpu':  # It was jax's traceback 'cuDNN is not detected' at the first step.
      raise ConfigError('model.attention_kernel', 'cudnn',
                        f'needs an NVIDIA GPU (cuDNN\'s fused attention); JAX runs on '
                        f'{platform} here: use auto (cuDNN on a GPU in bfloat16, XLA '
                        'elsewhere) or xla')
    return 'cudnn'
  if platform == 'gpu' and m.dtype == 'bfloat16' and m.posemb != 'relative':
    return 'cudnn'
  return None


def layer_norm(m: ModelSpec, platform: str | None = None) -> str:
  """LayerNorm's implementation for `model.layer_norm`: 'auto' takes the dots on a CPU, where
  XLA runs short reductions as reduce-windows (docs/performance.md), and flax's reductions
  elsewhere. `platform` is the one the step will run on (default: this process's)."""
  if m.layer_norm != 'auto':
    return m.layer_norm
  return layer_norm_lib.implementation_for(platform or jax.default_backend())


def token_grid(image_size: int, m: ModelSpec) -> tuple[int, int]:
  """(rows, cols) of patch tokens of a square `image_size` image (after a hybrid's stem)."""
  return patch_grid((image_size, image_size), m.patch_size, m.resnet)
