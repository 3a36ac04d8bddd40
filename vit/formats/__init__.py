"""Published checkpoint formats, one module per format, each with its reader and writer.

Every format module keeps one contract (`vit.formats.registry.Format`; the registry's
`FORMATS` names them for `vit.export` and init specs):

* `load(path) -> Read`: the official ViT parameter tree (nested dicts named as in
  `vit/models/vit.py`, float32 numpy arrays) and what the files state beyond shapes (model
  keys in `config.model`'s nested layout, which `vit.init_spec` upgrades into the spec);
* `check_expressible(params, model)`: refuses, in one line, a model (a
  `vit.models.ModelSpec`; None: the official defaults) the format cannot express without
  changing the function (`registry.check_expressible` adds which other formats hold it);
* `save(params, out, model=None, *, class_names=None, image_size=None, view=None)`: writes
  what `load` reads back bitwise, after `check_expressible` (a learned_2d, sincos_2d or none
  position embedding as the learned 1D table it adds at the model's grid:
  `tree.as_learned_1d`);
* `SUFFIX`: '.npz' for a one-file format, None for a directory.

A format whose names differ from the official ones is one table (`table.Row`: official path,
foreign name, transform, inverse) from which both its reader and its writer follow:

* `vit_jax`: the .npz of google-research/vision_transformer and of big_vision, every layout
  (the official names themselves: its reader's work is telling the layouts apart).
* `hf`: a Hugging Face transformers ViT directory (config.json, safetensors, processor);
  `hf.ROWS`.
* `timm`: a timm VisionTransformer `model.safetensors` (+ timm's config.json); `timm.ROWS`.

Helpers: `tree` (flat names, `Read`, pixels), `table` (rows, read, write), `torch_layout`
(torch against flax layouts), `safetensors_dir` (the weights and JSON files of hf and timm).
Nothing here unpickles: .npz files are read with `allow_pickle=False` and torch weights only
from safetensors.
"""
