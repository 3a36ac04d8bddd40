"""Named model sizes of the paper's Table 1, as in the official `configs/models.py`."""
from __future__ import annotations

_SIZES = {  # hidden, mlp, heads, layers
    'Ti': (192, 768, 3, 12),
    'S': (384, 1536, 6, 12),
    'B': (768, 3072, 12, 12),
    'L': (1024, 4096, 16, 24),
    'H': (1280, 5120, 16, 32),
}


def _vit(size: str, patch: int) -> dict:
  hidden, mlp, heads, layers = _SIZES[size]
  return dict(patches=dict(size=(patch, patch)), hidden_size=hidden,
              transformer=dict(mlp_dim=mlp, num_heads=heads, num_layers=layers), resnet=None)


PRESETS = {
    'ViT-Ti/16': _vit('Ti', 16),
    'ViT-S/16': _vit('S', 16),
    'ViT-S/32': _vit('S', 32),
    'ViT-B/16': _vit('B', 16),
    'ViT-B/32': _vit('B', 32),
    'ViT-L/16': _vit('L', 16),
    'ViT-L/32': _vit('L', 32),
    'ViT-H/14': _vit('H', 14),
    # Hybrid: ResNet-50 with stage 4 removed and stage 3 extended to 9 units (stride 16), then
    # ViT-B on 1x1 "patches" of its feature map: still 14x14 tokens at 224 px.
    'R50+ViT-B/16': dict(_vit('B', 1), resnet=dict(num_layers=(3, 4, 9), width_factor=1.0)),
}
