"""The network a resolved model dict describes: preset resolution, construction, and the
implementations chosen for the platform a step runs on. Next to the models, once.

A resolved model (`resolved_model`) is `config.model` as plain data with a preset's sizes
filled in; `vit.config.validate` returns it, checkpoints (`vit.init_spec`) carry it, and every
model in the project is built from it by `build_model`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from vit.errors import ConfigError
from vit.models import layer_norm as layer_norm_lib, presets, resnet
from vit.models.vit import VisionTransformer, patch_grid


def resolved_model(config: ml_collections.ConfigDict) -> dict:
  """The architecture as plain data: the preset's sizes overlaid with every explicit key."""
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
      m['resnet'] = dict(preset['resnet'])
  for key, value in (('patches.size', m['patches']['size']), ('hidden_size', m['hidden_size']),
                     *((f'transformer.{k}', v) for k, v in m['transformer'].items())):
    if value is None:
      raise ConfigError(f'model.{key}', None, 'not set: set it or choose a preset in model.name')
  return m


def resnet_config(m: dict) -> resnet.ResNetConfig | None:
  if not m['resnet'] or m['resnet'].get('num_layers') is None:
    return None
  return resnet.ResNetConfig(tuple(m['resnet']['num_layers']), m['resnet']['width_factor'])


def build_model(m: dict, *, num_classes: int | None = None, classifier: str | None = None
                ) -> VisionTransformer:
  """A VisionTransformer from a resolved model dict (see `resolved_model`)."""
  t = m['transformer']
  return VisionTransformer(
      num_classes=m['num_classes'] if num_classes is None else num_classes,
      patch_size=tuple(m['patches']['size']),
      hidden_size=m['hidden_size'],
      num_layers=t['num_layers'], mlp_dim=t['mlp_dim'], num_heads=t['num_heads'],
      dropout_rate=t['dropout_rate'], attention_dropout_rate=t['attention_dropout_rate'],
      classifier=classifier or m['classifier'],
      representation_size=m['representation_size'],
      resnet=resnet_config(m),
      gelu_approximate=m['gelu_approximate'],
      layer_norm_epsilon=m['layer_norm_epsilon'],
      remat=m['remat'],
      dtype=jnp.dtype(m['dtype']),
      posemb=m.get('posemb', 'learned_1d'),
      attention=m.get('attention', 'global'),
      attention_kernel=attention_kernel(m),
      scan_layers=m.get('scan_layers', False),
      remat_policy=m.get('remat_policy'),
      layer_norm=layer_norm(m),
  )


def attention_kernel(m: dict, platform: str | None = None) -> str | None:
  """jax.nn.dot_product_attention's implementation for `model.attention_kernel`.

  'auto' takes cuDNN's fused attention where it was measured to win: NVIDIA GPUs computing in
  bfloat16 without a logits bias (ViT-B/16 on an H200: 1.31x the images/s and 26% less step
  memory than XLA's attention, docs/performance.md); XLA's everywhere else (CPU, TPU).
  `platform` is the one the step will run on (default: this process's).
  """
  kernel = m.get('attention_kernel', 'auto')
  if kernel != 'auto':
    return kernel
  platform = platform or jax.default_backend()
  if platform == 'gpu' and m['dtype'] == 'bfloat16' and m.get('posemb') != 'relative':
    return 'cudnn'
  return None


def layer_norm(m: dict, platform: str | None = None) -> str:
  """LayerNorm's implementation for `model.layer_norm`: 'auto' takes the dots on a CPU, where
  XLA runs short reductions as reduce-windows (docs/performance.md), and flax's reductions
  elsewhere. `platform` is the one the step will run on (default: this process's)."""
  chosen = m.get('layer_norm', 'auto')
  if chosen != 'auto':
    return chosen
  return layer_norm_lib.implementation_for(platform or jax.default_backend())


def token_grid(image_size: int, m: dict) -> tuple[int, int]:
  """(rows, cols) of patch tokens of a square `image_size` image (after a hybrid's stem)."""
  return patch_grid((image_size, image_size), m['patches']['size'], resnet_config(m))
