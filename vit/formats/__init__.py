"""Published checkpoint formats, one module per format, each with its reader and writer.

Every reader returns a `Read`: the official ViT parameter tree (nested dicts named as in
`vit/models/vit.py`, float32 numpy arrays) and what the files state beyond shapes. Every
writer takes that tree and the resolved model dict (vit.config) and refuses, in one line, a
model its format cannot express without changing the function.

* `vit_jax`: the .npz of google-research/vision_transformer and of big_vision, every layout.
* `hf`: a Hugging Face transformers ViT directory (config.json, safetensors, processor).
* `timm`: a timm VisionTransformer `model.safetensors` (+ timm's config.json).

Nothing here unpickles: .npz files are read with `allow_pickle=False` and torch weights only
from safetensors.
"""
