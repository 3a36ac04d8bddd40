"""The resolved model: what `vit.config.validate` returns and every model is built from.

`config.model` is the user's surface (nested as the official vit_jax configs: `patches.size`,
`transformer.mlp_dim`, ...; a preset in `name` fills the unset sizes). Resolved, it is a
`ModelSpec`: typed, frozen (so it can be compared, hashed and passed to jitted code as a static
value), and flat, with the names `VisionTransformer` takes (`patch_size`, `hidden_size`,
`mlp_dim`, `num_heads`, `num_layers`, ...). Checkpoints and the foreign formats keep the nested
layout of `config.model` (`to_dict`); a saved model dict of any age becomes a spec through
`vit.config.upgrade`, the one place that fills the keys older saves lack.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from vit.models.resnet import ResNetConfig


@dataclasses.dataclass(frozen=True)
class Pixels:
  """A checkpoint's own input normalisation: model input = (x * rescale - mean) / std of uint8
  pixels x, `mean` and `std` one value per channel or one for all (Hugging Face processors'
  rescale_factor, image_mean, image_std; timm's mean and std). Absent (None in a spec): the
  official x / 127.5 - 1 (vit.preprocess)."""
  rescale: float
  mean: tuple[float, ...]
  std: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A ViT (or R+ViT hybrid) fully resolved; field meanings are `config.model`'s
  (vit/config.py: model_defaults) and `VisionTransformer`'s (vit/models/vit.py).

  Sizes are in tokens and features (`patch_size` in pixels, (rows, cols)); `dtype` is the
  compute dtype's name ('float32' | 'bfloat16'); `attention_kernel` and `layer_norm` are the
  config's choices ('auto' included), resolved for a platform by vit.models.factory.
  """
  patch_size: tuple[int, int]
  hidden_size: int
  mlp_dim: int
  num_heads: int
  num_layers: int
  dropout_rate: float
  attention_dropout_rate: float
  resnet: Optional[ResNetConfig]  # The hybrid's stem; None: a plain ViT.
  classifier: str
  representation_size: Optional[int]
  num_classes: Optional[int]
  gelu_approximate: bool
  layer_norm_epsilon: float
  pixels: Optional[Pixels]
  posemb: str
  attention: str
  attention_kernel: str
  dtype: str
  remat: bool
  remat_policy: Optional[str]
  scan_layers: bool
  layer_norm: str
  name: Optional[str] = None  # The preset the sizes came from, if any.

  @classmethod
  def from_dict(cls, model: Mapping[str, Any]) -> ModelSpec:
    """The spec of a complete model dict in `config.model`'s layout (every key present, as
    `vit.models.factory.resolved_model` returns it). KeyError naming a missing key; a saved
    dict that may lack keys goes through `vit.config.upgrade` instead."""
    t, res, px = model['transformer'], model['resnet'] or {}, model['pixels'] or {}
    return cls(
        patch_size=tuple(int(p) for p in model['patches']['size']),
        hidden_size=model['hidden_size'], mlp_dim=t['mlp_dim'], num_heads=t['num_heads'],
        num_layers=t['num_layers'], dropout_rate=t['dropout_rate'],
        attention_dropout_rate=t['attention_dropout_rate'],
        resnet=(None if res.get('num_layers') is None else
                ResNetConfig(tuple(res['num_layers']), res.get('width_factor', 1.0))),
        classifier=model['classifier'], representation_size=model['representation_size'],
        num_classes=model['num_classes'], gelu_approximate=model['gelu_approximate'],
        layer_norm_epsilon=model['layer_norm_epsilon'],
        pixels=(None if px.get('rescale') is None else
                Pixels(float(px['rescale']), tuple(px['mean']), tuple(px['std']))),
        posemb=model['posemb'], attention=model['attention'],
        attention_kernel=model['attention_kernel'], dtype=model['dtype'],
        remat=model['remat'], remat_policy=model['remat_policy'],
        scan_layers=model['scan_layers'], layer_norm=model['layer_norm'], name=model['name'])

  def to_dict(self) -> dict:
    """The nested layout of `config.model` (what checkpoints and the formats read and
    write); `ModelSpec.from_dict(spec.to_dict()) == spec`."""
    res, px = self.resnet, self.pixels
    return dict(
        name=self.name, patches=dict(size=self.patch_size), hidden_size=self.hidden_size,
        transformer=dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                         num_layers=self.num_layers, dropout_rate=self.dropout_rate,
                         attention_dropout_rate=self.attention_dropout_rate),
        resnet=dict(num_layers=res.num_layers if res else None,
                    width_factor=res.width_factor if res else 1.0),
        classifier=self.classifier, representation_size=self.representation_size,
        num_classes=self.num_classes, gelu_approximate=self.gelu_approximate,
        layer_norm_epsilon=self.layer_norm_epsilon,
        pixels=dict(rescale=px.rescale if px else None, mean=px.mean if px else None,
                    std=px.std if px else None),
        posemb=self.posemb, attention=self.attention, attention_kernel=self.attention_kernel,
        dtype=self.dtype, remat=self.remat, remat_policy=self.remat_policy,
        scan_layers=self.scan_layers, layer_norm=self.layer_norm)

  def replace(self, **changes) -> ModelSpec:
    """A copy with `changes` (field names), as `dataclasses.replace`."""
    return dataclasses.replace(self, **changes)
