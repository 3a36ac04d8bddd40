"""Converts images once into a TFDS ArrayRecord dataset that the pipeline reads at random.

  python -m vit.data.prepare --source folder:PATH --out DIR [--overwrite]
  python -m vit.data.prepare --source fashion_mnist --out DIR

`folder:PATH` holds one sub-folder per class (JPEG/PNG files, nested folders allowed), or
`train/`, `validation/`, `test/` sub-folders that each hold the class folders. Labels are the
indices of the sorted class names; the names are kept in the dataset's metadata (a TFDS
ClassLabel). The result is a real TFDS dataset, DIR/prepared_images/1.0.0/, so training reads it
with `--config.data.source=array_record:DIR` (or `tfds:prepared_images` with
`--config.data.data_dir=DIR`), TFDS split syntax included (`train[:99%]`).

Every image is decoded once here, so a damaged file is reported by name now rather than as a
record index mid-training; JPEG and PNG files in RGB or grayscale are stored byte for byte.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import io
import os
import shutil
import tempfile
from typing import Iterator, Sequence

import numpy as np
from absl import flags
from PIL import Image

from vit import cli
from vit.data import fashion_mnist, transforms
from vit.errors import UserError

NAME = 'prepared_images'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
SPLIT_FOLDERS = ('train', 'validation', 'test')


@dataclasses.dataclass
class Split:
  """The examples of one split: file paths (folders) or uint8 arrays (Fashion-MNIST)."""
  items: Sequence  # str paths or np.ndarray images
  labels: Sequence[int]


def _images_under(folder: str) -> list[str]:
  found = []
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    found += [os.path.join(root, f) for f in sorted(files)
              if f.lower().endswith(IMAGE_EXTENSIONS)]
  return found


def _subfolders(path: str) -> list[str]:
  return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))


def scan_folder(path: str) -> tuple[dict[str, Split], tuple[str, ...]]:
  """The splits and sorted class names of an image folder (see the module docstring)."""
  if not os.path.isdir(path):
    raise UserError(f'--source folder:{path}: no such directory')
  top = _subfolders(path)
  split_roots = ({s: os.path.join(path, s) for s in top} if top and set(top) <= set(SPLIT_FOLDERS)
                 else {'train': path})
  class_names = tuple(sorted({c for root in split_roots.values() for c in _subfolders(root)}))
  if not class_names:
    raise UserError(f'--source folder:{path}: no class sub-folders; put the images of each '
                    f'class in PATH/CLASS_NAME/')
  splits = {}
  for split, root in split_roots.items():
    loose = [f for f in os.listdir(root) if f.lower().endswith(IMAGE_EXTENSIONS)]
    if loose:
      raise UserError(f'{os.path.join(root, loose[0])}: images must be inside a class '
                      f'sub-folder ({len(loose)} image files found directly in {root})')
    items, labels = [], []
    for label, name in enumerate(class_names):
      files = _images_under(os.path.join(root, name)) if os.path.isdir(
          os.path.join(root, name)) else []
      items += files
      labels += [label] * len(files)
    if not items:
      raise UserError(f'{root}: no images ({", ".join(IMAGE_EXTENSIONS)}) in its class '
                      f'sub-folders')
    splits[split] = Split(items, labels)
  return splits, class_names


def encode_file(path: str) -> bytes:
  """The file's bytes when they are JPEG/PNG in L or RGB; otherwise re-encoded as RGB."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    with Image.open(io.BytesIO(data)) as pil:
      pil.load()
      if pil.format in ('JPEG', 'PNG') and pil.mode in ('L', 'RGB'):
        return data
      out = io.BytesIO()
      fmt = 'JPEG' if pil.format == 'JPEG' else 'PNG'
      pil.convert('RGB').save(out, format=fmt, **({'quality': 95} if fmt == 'JPEG' else {}))
      return out.getvalue()
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise UserError(f'{path}: cannot decode the image ({transforms.decode_error(e)}); pass '
                    f'--skip_bad to skip such files') from None


def encode_array(image: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(out, format='PNG')
  return out.getvalue()


@functools.cache
def _builder_class():
  import tensorflow_datasets as tfds

  # Unregistered: `tfds.builder('prepared_images', data_dir=DIR)` must then read the files on
  # disk (builder_from_files) rather than try to construct this class without its images.
  class PreparedImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images and class labels written by vit.data.prepare."""
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Written by python -m vit.data.prepare.'}
    # Only TFDS' download checksums live next to the code, and nothing is downloaded; finding
    # the code's package would need `importlib_resources`, which TFDS does not install.
    code_path = None

    def __init__(self, *, splits: dict[str, Split], class_names, channels: int, source: str,
                 skip_bad: bool, **kwargs):
      self._splits, self._class_names, self._channels = splits, class_names, channels
      self._source, self._skip_bad, self.skipped = source, skip_bad, []
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description=f'Images from {self._source}, converted by vit.data.prepare.',
          features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(shape=(None, None, self._channels)),
              'label': tfds.features.ClassLabel(names=list(self._class_names)),
          }),
          supervised_keys=('image', 'label'))

    def _split_generators(self, dl_manager):
      del dl_manager  # Nothing to download: the images are local.
      return {name: self._generate_examples(name) for name in self._splits}

    def _generate_examples(self, split_name: str) -> Iterator:
      return _examples(self, split_name)

  return PreparedImages


def _encode(item, skip_bad: bool):
  """Encoded bytes, or the UserError of an undecodable file when skipping (returned, not raised)."""
  if isinstance(item, np.ndarray):
    return encode_array(item)
  try:
    return encode_file(item)
  except UserError as e:
    if not skip_bad:
      raise
    return e


def _encoded(items: Sequence, skip_bad: bool, chunk: int = 256) -> Iterator:
  """`_encode` of every item, in order, on a thread pool (PIL decodes without the GIL); chunks
  bound the memory when encoding outruns the writer."""
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    for start in range(0, len(items), chunk):
      yield from pool.map(lambda item: _encode(item, skip_bad), items[start:start + chunk])


def _examples(builder, split_name: str) -> Iterator:
  from tqdm import tqdm
  split = builder._splits[split_name]
  encoded = _encoded(split.items, builder._skip_bad)
  for i, data in enumerate(tqdm(encoded, total=len(split.items), desc=split_name, unit='img',
                                mininterval=0.5)):
    if isinstance(data, UserError):
      builder.skipped.append(split.items[i])
      continue
    yield i, {'image': data, 'label': split.labels[i]}


def fashion_mnist_splits(limit: int | None) -> dict[str, Split]:
  splits = {}
  for split in ('train', 'test'):
    images, labels = fashion_mnist.load(split)
    splits[split] = Split(images[:limit], [int(x) for x in labels[:limit]])
  return splits


def prepare(source: str, out: str, *, overwrite: bool = False, skip_bad: bool = False,
            limit: int | None = None) -> str:
  """Writes the dataset; returns its version directory. Never replaces data without overwrite."""
  if source == 'fashion_mnist':
    splits, class_names, channels = fashion_mnist_splits(limit), fashion_mnist.CLASS_NAMES, 1
  elif source.startswith('folder:') and source[len('folder:'):]:
    splits, class_names = scan_folder(source[len('folder:'):])
    splits = {k: Split(v.items[:limit], v.labels[:limit]) for k, v in splits.items()}
    channels = 3
  else:
    raise UserError(f"--source {source!r}: use 'folder:PATH' or 'fashion_mnist'")
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f'--out {out}: exists and is not a directory')
  if os.path.isdir(out) and os.listdir(out):
    if not overwrite:
      raise UserError(f'--out {out}: exists and is not empty; pass --overwrite to replace the '
                      f'dataset in it')
    shutil.rmtree(os.path.join(out, NAME), ignore_errors=True)
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()  # Ours counts images; TFDS' own bars would interleave with it.
  builder = _builder_class()(splits=splits, class_names=class_names, channels=channels,
                             source=source, skip_bad=skip_bad, data_dir=out,
                             file_format='array_record')
  try:
    with tempfile.TemporaryDirectory() as downloads:
      builder.download_and_prepare(download_dir=downloads)
  except BaseException:
    # A half-written dataset would make the next run refuse without --overwrite.
    shutil.rmtree(os.path.join(out, NAME), ignore_errors=True)
    raise
  if builder.skipped:
    print(f'skipped {len(builder.skipped)} undecodable files, e.g. {builder.skipped[0]}')
  counts = ', '.join(f'{k} {v.num_examples}' for k, v in builder.info.splits.items())
  print(f'wrote {builder.data_dir}: {counts} images, {len(class_names)} classes; train with '
        f'--config.data.source=array_record:{out}')
  return builder.data_dir


_SOURCE = flags.DEFINE_string('source', None, "'folder:PATH' or 'fashion_mnist'",
                              required=True)
_OUT = flags.DEFINE_string('out', None, 'Output directory of the TFDS dataset', required=True)
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace a dataset already in --out')
_SKIP_BAD = flags.DEFINE_bool('skip_bad', False, 'Skip undecodable image files (and count '
                              'them) instead of stopping at the first')
_LIMIT = flags.DEFINE_integer('max_per_split', None, 'Keep at most this many images per split '
                              '(quick trials)')


def main(argv):
  del argv
  prepare(_SOURCE.value, _OUT.value, overwrite=_OVERWRITE.value, skip_bad=_SKIP_BAD.value,
          limit=_LIMIT.value)


if __name__ == '__main__':
  cli.run(main)
