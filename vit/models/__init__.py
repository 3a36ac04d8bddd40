"""The ViT, its hybrid stem and presets; `ModelSpec` is the resolved model every one is built
from (vit/models/spec.py)."""
from vit.models.spec import ModelSpec, Pixels  # noqa: F401
