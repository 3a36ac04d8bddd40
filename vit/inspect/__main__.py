"""`python -m vit.inspect --init SPEC --out DIR [--images FILE.npy|DIR]`: the §4.5 figures.

Writes to DIR: attention_distance.png, attention_rollout.png, posemb_similarity.png (not for
a model without a per-patch position embedding), embedding_filters.png (not for a hybrid), and
the numbers behind them in inspect.json (summary) and inspect.npz (every array). SPEC is a
fine-tuning init spec: mpp:DIR, mae:DIR, simmim:DIR, supervised:DIR, vit_jax:FILE.npz, hf:DIR
or timm:DIR. Without --images the Fashion-MNIST test split is used.
"""
from __future__ import annotations

import json
import os

from absl import flags

from vit import cli
from vit.errors import UserError
from vit.evaluators import fewshot
from vit.inspect import report

_INIT = flags.DEFINE_string('init', None, 'The model: mpp:DIR | mae:DIR | simmim:DIR | '
                            'supervised:DIR | vit_jax:FILE.npz | hf:DIR | timm:DIR.',
                            required=True)
_OUT = flags.DEFINE_string('out', None, 'Directory for the PNGs, inspect.json and inspect.npz.',
                           required=True)
_IMAGES = flags.DEFINE_string('images', None, 'uint8 .npy [N, H, W(, C)] or a directory of '
                              'image files; default: the Fashion-MNIST test split.')
_MAX_IMAGES = flags.DEFINE_integer('max_images', 128, 'Images read (the first ones) and '
                                   'averaged over for the attention distances.')
_SHOW = flags.DEFINE_integer('show', 8, 'Images shown in the attention rollout figure, 8 per '
                             'row.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Images per forward pass.')
_REPRESENTATION = flags.DEFINE_enum(
    'representation', 'auto', fewshot.REPRESENTATIONS,
    "The token row the rollout reads, as few-shot's flag: 'auto' the mean of the patch tokens "
    "of an mpp:, mae: or simmim: encoder, else the class token; 'pooled' or 'patch_mean' "
    'whatever the format (an encoder exported to vit_jax, hf or timm).')


def main(argv):
  """`python -m vit.inspect`: writes the figures and numbers of `report.inspect` into --out, then
  prints the figures' paths and a JSON summary (model, images, mean attention distance in
  pixels). A count flag below 1, a word after the flags, or an --out that is the --images
  folder, a run's workdir, inside its checkpoints or the --init checkpoint's own file or folder
  (`report.check_out`) is one line and exit status 2, before the model loads."""
  del argv  # A word after the flags: refused by vit.cli.run.
  for flag in (_MAX_IMAGES, _SHOW, _BATCH):
    if flag.value < 1:
      raise UserError(f'--{flag.name}={flag.value}: must be a positive integer')
  report.check_out(_OUT.value, _IMAGES.value, _INIT.value)
  summary = report.inspect(_INIT.value, _OUT.value, images=_IMAGES.value,
                           max_images=_MAX_IMAGES.value, show=_SHOW.value,
                           batch_size=_BATCH.value, representation=_REPRESENTATION.value)
  for name in summary['figures']:
    print(os.path.join(_OUT.value, name))
  print(json.dumps({k: summary[k] for k in ('model', 'images', 'mean_attention_distance_px')}))


if __name__ == '__main__':
  cli.run(main)
