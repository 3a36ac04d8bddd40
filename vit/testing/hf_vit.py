"""A tiny transformers ViT classifier, the peer the format and weight-checking tests read."""
from __future__ import annotations


def tiny_classifier(num_hidden_layers: int, seed: int = 0):
  """transformers' ViTForImageClassification in eval mode: 16-px RGB images in 4-px patches,
  width 32 (4 heads, MLP 64), `num_hidden_layers` blocks, 5 classes, weights drawn after
  torch.manual_seed(seed). torch and transformers are imported here: tests skip without them."""
  import torch
  import transformers
  torch.manual_seed(seed)
  cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=num_hidden_layers,
                               num_attention_heads=4, intermediate_size=64, image_size=16,
                               patch_size=4, num_labels=5)
  return transformers.ViTForImageClassification(cfg).eval()
