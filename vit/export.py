"""Export a checkpoint to a published format:
`python -m vit.export --checkpoint DIR --format vit_jax|hf --out PATH`.

`vit_jax`: the official .npz (flat '/'-joined parameter names), loadable by the official
vision_transformer code and by `--config.init=vit_jax:PATH`. `hf`: a directory with
config.json + model.safetensors that `transformers.ViTForImageClassification.from_pretrained`
loads with the same logits (`ViTModel` for a headless MPP backbone). The Polyak-averaged
parameters are exported when the run kept them (--noema for the raw ones). An MPP
checkpoint exports its ViT backbone; the MPP prediction head is not part of either format.
`--checkpoint` also takes an init spec (e.g. hf:DIR -> --format vit_jax). The export is written
beside `--out` and replaces what is there only once complete (other files in an hf directory
stay), so a failed export never leaves a broken file where a good one stood.
"""
from __future__ import annotations

import os

from absl import flags

from vit import atomic_write, cli, init_spec, interop
from vit.errors import UserError

FORMATS = ('vit_jax', 'hf')


def export(checkpoint: str, fmt: str, out: str, *, use_ema: bool = True) -> init_spec.Checkpoint:
  if fmt not in FORMATS:
    raise UserError(f'--format {fmt}: must be one of {", ".join(FORMATS)}')
  prefix, sep, _ = checkpoint.partition(':')
  if sep and prefix in init_spec.FORMATS:
    ckpt = init_spec.load(checkpoint, use_ema=use_ema)
  else:
    ckpt = init_spec.load_workdir(checkpoint, use_ema=use_ema)
  if fmt == 'vit_jax':
    if not out.endswith('.npz'):
      raise UserError(f'--out {out}: a vit_jax export is a .npz file')
    with atomic_write.file(out) as partial:
      interop.save_vit_jax(ckpt.params, partial)
  else:
    if os.path.isfile(out):
      raise UserError(f'--out {out}: an hf export is a directory, and this is a file')
    with atomic_write.staging_dir(out) as staging:  # Its files replace their namesakes in out.
      interop.save_hf(ckpt.params, ckpt.model, staging, class_names=ckpt.class_names)
      atomic_write.move_files(staging, out)
  return ckpt


def main(argv):
  del argv
  f = flags.FLAGS
  ckpt = export(f.checkpoint, f.format, f.out, use_ema=f.ema)
  print(f'exported {f.checkpoint} ({init_spec.describe(ckpt)}) as {f.format} to {f.out}',
        flush=True)


if __name__ == '__main__':
  flags.DEFINE_string('checkpoint', None, 'a trainer workdir (or an init spec FORMAT:PATH)',
                      required=True)
  flags.DEFINE_enum('format', None, list(FORMATS), 'vit_jax (.npz) or hf (a directory)',
                    required=True)
  flags.DEFINE_string('out', None, 'output .npz file (vit_jax) or directory (hf)',
                      required=True)
  flags.DEFINE_bool('ema', True, 'export the Polyak-averaged parameters when present')
  cli.run(main)
