"""Classify images with any checkpoint that has a classification head:
`python -m supervised.predict --init SPEC --images FILE.npy|DIR --output OUT.npy|OUT.json`.

SPEC is supervised:DIR (a supervised.train or supervised.finetune workdir), vit_jax:FILE.npz,
hf:DIR or timm:DIR; an mpp:, mae: or simmim: run has no head: fine-tune it first.

Images (uint8 [B, H, W, C] in a .npy, or image files in a directory) are resized to the model
resolution (the checkpoint's: a Hugging Face processor's or timm's input size, else its position
embeddings' grid; a timm checkpoint's stated view, crop_pct and interpolation, is applied as
timm's eval transform applies it) and normalised as the checkpoint states (a Hugging Face
processor's rescale, mean and std; timm's mean and std; else x / 127.5 - 1, as in training).
`--resolution` runs the model at another resolution, interpolating the position embeddings
exactly as fine-tuning does; it is also the size of a checkpoint that states none (a big_vision
sincos2d vit_jax:FILE.npz without @SIZE).
Output: raw float32 logits [B, classes] (.npy) or the top-5 classes with names and softmax
probabilities (.json).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Optional, Sequence

import jax
import numpy as np
from absl import flags

from vit import atomic_write, checkpoints, cli, config as config_lib, init_spec
from vit.data import decoding, transforms
from vit.errors import UserError, counted
from vit.preprocess import input_fn

logger = logging.getLogger(__name__)

TOP_K = 5


def read_images(path: str) -> tuple[list[np.ndarray], list[str]]:
  """uint8 [H, W, C] images and their names (file names, or indices into the .npy)."""
  if os.path.isdir(path):
    return _read_directory(path)
  images = decoding.read_npy(path, f'--images {path}')
  return list(images), [str(i) for i in range(len(images))]


def _read_directory(path: str) -> tuple[list[np.ndarray], list[str]]:
  names, hidden = decoding.images_in(path)
  if hidden:
    skipped = counted(len(hidden), 'hidden entry', 'hidden entries')
    logger.info(f'--images {path}: skipped {skipped} ({", ".join(hidden[:3])}'
                f'{", ..." if len(hidden) > 3 else ""})')
  others = sorted(set(os.listdir(path)) - set(names) - set(hidden))
  folders = [n for n in others if os.path.isdir(os.path.join(path, n))]
  files = [n for n in others if n not in folders]
  if others:  # Only the images directly in DIR are read.
    skipped = ([counted(len(folders), 'sub-folder', 'sub-folders')] if folders else []) + (
        [f'{counted(len(files), "file", "files")} without an image extension'] if files else [])
    logger.info(f'--images {path}: skipped {" and ".join(skipped)} '
                f'({", ".join(_printable(n) for n in others[:3])}'
                f'{", ..." if len(others) > 3 else ""})')
  if not names:
    raise UserError(f'--images {path}: no image files ({", ".join(decoding.IMAGE_SUFFIXES)})')
  images = [decoding.read_file(os.path.join(path, name)) for name in names]
  return images, names


def prepare_images(images: Sequence[np.ndarray], size: int, channels: int,
                   view: Optional[dict] = None) -> np.ndarray:
  """The model's input view: channels matched, resized to size x size (or the checkpoint's
  stated evaluation view, e.g. timm's crop_pct and interpolation, at that size); uint8."""
  resize = transforms.EvalView(size, **view) if view else transforms.Resize(size)
  ops = [transforms.ToChannels(channels), resize]
  out = []
  for image in images:
    record = {'image': image}
    for op in ops:
      record = op.map(record)
    if record['image'].shape[-1] != channels:
      raise UserError(f'images have {record["image"].shape[-1]} channels; the model takes '
                      f'{channels}')
    out.append(record['image'])
  return np.stack(out)


def load_classifier(spec: str, resolution: Optional[int] = None):
  """(apply_fn(uint8 batch) -> logits, checkpoint, resolution) for a checkpoint with a head."""
  ckpt = init_spec.load(spec, image_size=resolution, size_flag='--resolution')
  init_spec.warn_if_unfinished(spec, ckpt)
  model = ckpt.model
  if model.num_classes is None:
    raise UserError(f'--init {spec}: has no classification head (a backbone pretrained '
                    'without labels, by MPP, MAE or SimMIM, or saved without its head); '
                    'fine-tune it with supervised.finetune first')
  size = resolution or ckpt.image_size
  stride = init_spec.patch_stride(model)
  if size % stride:
    raise UserError(f'--resolution {size}: not a multiple of the model\'s patch stride {stride}')
  net = config_lib.build_model(model)
  target = init_spec.abstract_params(model, size, ckpt.channels)
  grid = init_spec.grid_at(model, size)
  params = init_spec.adapt_params(ckpt.params, target, grid, drop=(), what=f'--init {spec}')
  to_input = input_fn(model)  # The checkpoint's own normalisation (HF, timm) or x/127.5-1.
  logits = jax.jit(lambda p, x: net.apply({'params': p}, to_input(x), train=False))
  params = jax.device_put(params)
  return (lambda batch: np.asarray(logits(params, batch))), ckpt, size


def predict(apply_fn, images: np.ndarray, batch_size: int) -> np.ndarray:
  """Logits of every image; the last batch is padded so one compiled shape serves all."""
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - len(chunk) if len(images) > batch_size else 0
    padded = np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)]) if pad else chunk
    out.append(apply_fn(padded)[:len(chunk)])
  return np.concatenate(out).astype(np.float32)


def _printable(name: str) -> str:
  """A file name as valid Unicode: bytes that are not UTF-8 (kept by os.listdir as lone
  surrogates, which JSON encoders write as invalid text) become \\xNN escapes."""
  return os.fsencode(name).decode('utf-8', 'backslashreplace')


def top_k(logits: np.ndarray, names: Sequence[str], class_names: Optional[Sequence[str]],
          k: int = TOP_K) -> list[dict]:
  """The rows of the .json output: per image its printable name and its `k` most probable
  classes, [{'label', 'name', 'probability'}], by softmax of `logits` [B, classes], most
  probable first (ties: the lower label). Without `class_names` a name is its label as text."""
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  rows = []
  for name, p in zip(names, probs):
    best = np.argsort(-p, kind='stable')[:k]
    rows.append({'image': _printable(name), 'top': [
        {'label': int(c), 'name': class_names[c] if class_names else str(int(c)),
         'probability': float(p[c])} for c in best]})
  return rows


def check_output(output: str, images: str, init: str) -> None:
  """UserError naming --output, before any image or checkpoint is read, when it is no .npy or
  .json name, an existing directory (it was refused only once the model had run, as 'not
  written (... is a directory)'), the --images file itself, inside a run's checkpoints, or a
  file of the --init checkpoint (init_spec.refuse_writing_over: `--output RUN/class_names.json`
  of `--init supervised:RUN` replaced the run's label names)."""
  if not output.endswith(('.npy', '.json')):
    raise UserError(f'--output {output}: must end in .npy (logits) or .json (top-5)')
  ext = os.path.splitext(output)[1]
  if os.path.isdir(output):
    raise UserError(f'--output {output}: an existing directory; name a file to write (e.g. '
                    f'{os.path.join(output, {".npy": "logits.npy", ".json": "top5.json"}[ext])})')
  if os.path.isfile(images) and os.path.isfile(output) and os.path.samefile(images, output):
    raise UserError(f'--output {output}: the --images file itself; the predictions would '
                    'replace the images: name another file')
  checkpoints.refuse_inside_checkpoints(output, 'write it elsewhere', os.path.basename(output),
                                        flag='--output')
  init_spec.refuse_writing_over(init, output, flag='--output')


def _define_flags():
  flags.DEFINE_string('init', None,
                      'a checkpoint with a classification head: supervised:DIR | '
                      'vit_jax:FILE.npz | hf:DIR | timm:DIR (an mpp:, mae: or simmim: encoder '
                      'has none: fine-tune it with supervised.finetune first)',
                      required=True)
  flags.DEFINE_string('images', None, 'uint8 [B, H, W, C] .npy ([B, H, W]: grayscale), or a '
                      'directory of image files', required=True)
  flags.DEFINE_string('output', None, 'OUT.npy (float32 logits) or OUT.json (top-5 classes)',
                      required=True)
  flags.DEFINE_integer('resolution', None, 'run at this resolution (default: the '
                       'checkpoint\'s), interpolating position embeddings')
  flags.DEFINE_integer('batch_size', 64, 'images per forward pass')


def main(argv):
  """`python -m supervised.predict`: classifies --images with the --init checkpoint and writes
  their logits (.npy) or top-5 classes (.json), replacing --output only once complete. A bad
  flag, a checkpoint without a head, or non-finite logits for a .json output (nothing is then
  written) is one line and exit status 2."""
  del argv
  f = flags.FLAGS
  check_output(f.output, f.images, f.init)
  if f.resolution is not None and f.resolution <= 0:
    raise UserError(f'--resolution {f.resolution}: must be positive')
  if f.batch_size <= 0:
    raise UserError(f'--batch_size {f.batch_size}: must be positive')
  raw, names = read_images(f.images)
  apply_fn, ckpt, size = load_classifier(f.init, f.resolution)
  logits = predict(apply_fn, prepare_images(raw, size, ckpt.channels, ckpt.view), f.batch_size)
  bad = [name for name, row in zip(names, logits) if not np.isfinite(row).all()]
  if bad and f.output.endswith('.json'):  # JSON has no NaN; a reader would choke on one.
    raise UserError(f'--output {f.output}: the model gave non-finite logits for {len(bad)} of '
                    f'{len(logits)} images (first: {_printable(bad[0])}); nothing was written')
  with atomic_write.file(f.output) as partial:  # A previous output stays until this is whole.
    if f.output.endswith('.npy'):
      np.save(partial, logits)
    else:
      with open(partial, 'w') as out:
        json.dump(top_k(logits, names, ckpt.class_names), out, indent=1, allow_nan=False)
  logger.info('%d images at %spx -> %s', len(logits), size, f.output)


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
