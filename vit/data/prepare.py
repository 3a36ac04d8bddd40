"""Converts images once into a TFDS ArrayRecord dataset that the pipeline reads at random.

  python -m vit.data.prepare --source folder:PATH --out DIR [--overwrite]
  python -m vit.data.prepare --source fashion_mnist --out DIR

`folder:PATH` holds one sub-folder per class (image files, nested folders allowed), or
`train/`, `validation/` (or `val/`, `valid/`), `test/` sub-folders that each hold the class
folders; split folders beside class folders are refused. Labels are the
indices of the sorted class names; the names are kept in the dataset's metadata (a TFDS
ClassLabel). The result is a real TFDS dataset, DIR/prepared_images/1.0.0/, so training reads it
with `--config.data.source=array_record:DIR` (or `tfds:prepared_images` with
`--config.data.data_dir=DIR`), TFDS split syntax included (`train[:99%]`).

Scanning: hidden entries (`.ipynb_checkpoints/`, `.DS_Store`, `._x.jpg`, `__MACOSX/`) are
skipped at every level and listed, as are files without an image extension; links to folders
and files are followed, and a link back to a folder already scanned (a loop) is listed and not
followed; a class folder without images is listed (and keeps its label). The class list, with
each class's label and image count per split, is printed before the conversion starts, and again
after it when `--skip_bad` skipped files, counting what was written.

Every image is decoded once here (`vit.data.decoding`, the rules training and predict use), so
a damaged file is reported by name now rather than as a record index mid-training. JPEG and PNG
files that decode as stored (L or RGB, opaque, upright) are kept byte for byte; others are
stored as a PNG of their decoded pixels. `--overwrite` builds beside the old dataset and
replaces it only when the new one is complete.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import io
import logging
import os
import signal
import sys
from typing import Iterator, Sequence

import numpy as np
from absl import flags
from PIL import Image
from tqdm import tqdm

from vit import atomic_write, cli, user_paths
from vit.data import decoding, fashion_mnist
from vit.errors import UserError, counted

logger = logging.getLogger(__name__)

NAME = 'prepared_images'
# Folder name -> split name: the spellings in use (ImageNet's `val/`, Roboflow's `valid/`).
SPLIT_FOLDERS = {'train': 'train', 'validation': 'validation', 'val': 'validation',
                 'valid': 'validation', 'test': 'test'}


@dataclasses.dataclass
class Split:
  """The examples of one split: file paths (folders) or uint8 arrays (Fashion-MNIST)."""
  items: Sequence  # str paths or np.ndarray images
  labels: Sequence[int]


@dataclasses.dataclass
class Scan:
  """What `scan_folder` found, and what it left out (each a list of paths, for the report)."""
  splits: dict[str, Split]
  class_names: tuple[str, ...]
  hidden: list[str] = dataclasses.field(default_factory=list)
  not_followed: list[str] = dataclasses.field(default_factory=list)  # 'LINK -> TARGET (why)'
  empty: list[str] = dataclasses.field(default_factory=list)  # 'FOLDER (what is in it)'
  not_images: list[str] = dataclasses.field(default_factory=list)  # other extensions

  def report(self) -> list[str]:
    """Lines for the user: what was skipped, then the classes with their images per split."""
    lines = ([f'skipped {counted(len(self.hidden), "hidden entry", "hidden entries")}: '
              f'{_some(self.hidden)}'] if self.hidden else [])
    lines += ([f'skipped {counted(len(self.not_images), "file", "files")} without an image '
               f'extension ({" ".join(decoding.IMAGE_SUFFIXES)}): {_some(self.not_images)}']
              if self.not_images else [])
    lines += [f'not followed: {x}' for x in self.not_followed]
    lines += [f'class folder without images: {x}' for x in self.empty]
    return lines + class_table(self.splits, self.class_names)


def _some(paths: Sequence[str], shown: int = 3) -> str:
  return ', '.join(paths[:shown]) + (f', ... ({len(paths) - shown} more)' if len(paths) > shown
                                     else '')


def class_table(splits: dict[str, Split], class_names: Sequence[str]) -> list[str]:
  """'label  train  test  class' rows: the label each class name gets and its image counts."""
  counts = {name: np.bincount(np.asarray(split.labels, np.int64), minlength=len(class_names))
            for name, split in splits.items()}
  header = ['label'] + list(splits)
  widths = [max(len(h), 5) for h in header]
  row = lambda cells: '  '.join(str(c).rjust(w) for c, w in zip(cells, widths))
  lines = [f'{len(class_names)} classes:', row(header) + '  class']
  for label, name in enumerate(class_names):
    lines.append(row([label] + [int(counts[s][label]) for s in splits]) + f'  {name}')
  return lines


def _walk_images(folder: str, scan: Scan) -> list[str]:
  """Image files under `folder`, sorted, files before sub-folders. Links are followed; a link
  to the folder it is in or one above it (a loop), or to a folder already scanned, is reported
  in `scan.not_followed` instead."""
  found, others, visited = [], [], set()

  def walk(directory: str):
    here = os.path.realpath(directory)
    visited.add(here)
    subfolders = []
    for entry in sorted(_listing(directory, os.scandir), key=lambda e: e.name):
      if decoding.is_hidden(entry.name):
        scan.hidden.append(entry.path)
      elif entry.is_dir():  # Follows links.
        subfolders.append(entry.path)
      elif entry.is_symlink() and not os.path.exists(entry.path):
        scan.not_followed.append(f'{entry.path} -> {os.readlink(entry.path)} (a dangling link)')
      elif entry.name.lower().endswith(decoding.IMAGE_SUFFIXES):
        found.append(entry.path)
      else:
        others.append(entry.name)
        scan.not_images.append(entry.path)
    for sub in subfolders:
      real = os.path.realpath(sub)
      if here == real or here.startswith(real.rstrip(os.sep) + os.sep):
        scan.not_followed.append(f'{sub} -> {real} (a link loop)')
      elif real in visited:
        scan.not_followed.append(f'{sub} -> {real} (already scanned through another path)')
      else:
        walk(sub)

  walk(folder)
  if not found:
    scan.empty.append(f'{folder} ({len(others)} other file'
                      f'{"s" * (len(others) != 1)}: {_some(others)})' if others
                      else f'{folder} (empty)')
  return found


def _listing(folder: str, lister=os.listdir) -> list:
  try:
    return list(lister(folder))
  except OSError as e:
    raise UserError(f'{folder}: cannot list the folder ({e.strerror or e})') from None


def _subfolders(path: str, scan: Scan) -> list[str]:
  """Sorted names of the folders in `path` (links followed); hidden entries go to scan.hidden."""
  names = sorted(_listing(path))
  scan.hidden += [os.path.join(path, d) for d in names if decoding.is_hidden(d)]
  return [d for d in names if not decoding.is_hidden(d) and os.path.isdir(os.path.join(path, d))]


def scan_folder(path: str) -> Scan:
  """The splits and sorted class names of an image folder (see the module docstring).

  Hidden entries (`decoding.is_hidden`) are skipped and listed in `Scan.hidden`; links are
  followed; a class folder without images keeps its label and is listed in `Scan.empty`.
  Raises UserError for a missing folder, no class folders, loose images, or no images at all.
  """
  if not os.path.isdir(path):
    raise UserError(f'--source folder:{path}: ' + ('is a file, not a directory of class folders'
                                                   if os.path.exists(path) else
                                                   'no such directory'))
  scan = Scan({}, ())
  top = _subfolders(path, scan)
  split_folders = [d for d in top if d in SPLIT_FOLDERS]
  if split_folders and len(split_folders) < len(top):
    raise UserError(f'--source folder:{path}: mixes split folders ({", ".join(split_folders)}) '
                    f'with class folders ({", ".join(d for d in top if d not in SPLIT_FOLDERS)});'
                    f' put every class folder inside the split folders, or use no split folders')
  if split_folders:
    split_roots = {}
    for d in top:
      split = SPLIT_FOLDERS[d]
      if split in split_roots:
        raise UserError(f'--source folder:{path}: both {os.path.basename(split_roots[split])}/ '
                        f'and {d}/ are the {split} split; keep one')
      split_roots[split] = os.path.join(path, d)
    split_classes = {s: _subfolders(root, scan) for s, root in split_roots.items()}
  else:
    split_classes, split_roots = {'train': top}, {'train': path}
  class_names = tuple(sorted({c for names in split_classes.values() for c in names}))
  if not class_names:
    raise UserError(f'--source folder:{path}: no class sub-folders; put the images of each '
                    f'class in PATH/CLASS_NAME/')
  scan.class_names = class_names
  for split, root in split_roots.items():
    loose, _ = decoding.images_in(root)
    if loose:
      found = counted(len(loose), 'image file', 'image files')
      raise UserError(f'{os.path.join(root, loose[0])}: images must be inside a class '
                      f'sub-folder ({found} found directly in {root})')
    items, labels = [], []
    for label, name in enumerate(class_names):
      folder = os.path.join(root, name)
      files = _walk_images(folder, scan) if os.path.isdir(folder) else []
      items += files
      labels += [label] * len(files)
    if not items:
      raise UserError(f'{root}: no images ({", ".join(decoding.IMAGE_SUFFIXES)}) in its class '
                      f'sub-folders')
    scan.splits[split] = Split(items, labels)
  return scan


def encode_file(path: str) -> bytes:
  """What the dataset stores for an image file: its own bytes when they are JPEG or PNG that
  `decoding` reads as stored (L or RGB, opaque, upright), else a PNG of `decoding.to_array`'s
  pixels, so that the pipeline decodes exactly what predict decodes from the file."""
  hint = '; pass --skip_bad to skip such files'
  data = decoding.read_bytes(path, hint)
  try:
    with Image.open(io.BytesIO(data)) as pil:
      pil.load()
      if pil.format in ('JPEG', 'PNG') and decoding.is_plain(pil):
        return data
      image = decoding.to_array(pil)
  except (OSError, ValueError, TypeError, Image.DecompressionBombError) as e:
    raise UserError(f'{path}: cannot decode the image ({decoding.reason(e)}){hint}') from None
  return encode_array(image)


def encode_array(image: np.ndarray) -> bytes:
  """A uint8 [H, W, 1 or 3] image as PNG bytes (greyscale or RGB): what the dataset stores for an
  array (Fashion-MNIST) or for a file that is not kept as stored (`encode_file`)."""
  out = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(out, format='PNG')
  return out.getvalue()


@functools.cache
def _builder_class():
  import tensorflow_datasets as tfds  # Imports TensorFlow (seconds): only a build needs it.

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

    # TFDS' own messages would name the staging folder (and talk of downloads); prepare()
    # prints where the dataset ends up.
    def _log_download_bytes(self):
      pass

    def _log_download_done(self):
      pass

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
  split = builder._splits[split_name]
  encoded = _encoded(split.items, builder._skip_bad)
  for i, data in enumerate(tqdm(encoded, total=len(split.items), desc=split_name, unit='img',
                                mininterval=0.5)):
    if isinstance(data, UserError):
      builder.skipped.append(split.items[i])
      continue
    yield i, {'image': data, 'label': split.labels[i]}


def _without(splits: dict[str, Split], skipped: Sequence[str]) -> dict[str, Split]:
  """`splits` less the file paths in `skipped`: what the dataset holds after --skip_bad."""
  skipped = set(skipped)
  kept = {name: [(item, label) for item, label in zip(split.items, split.labels)
                 if item not in skipped] for name, split in splits.items()}
  return {name: Split([item for item, _ in pairs], [label for _, label in pairs])
          for name, pairs in kept.items()}


def fashion_mnist_splits(limit: int | None) -> dict[str, Split]:
  """Fashion-MNIST's 'train' and 'test' splits, uint8 [28, 28, 1] images and int labels, at most
  `limit` of each (None: all)."""
  splits = {}
  for split in ('train', 'test'):
    images, labels = fashion_mnist.load(split)
    splits[split] = Split(images[:limit], [int(x) for x in labels[:limit]])
  return splits


def prepare(source: str, out: str, *, overwrite: bool = False, skip_bad: bool = False,
            limit: int | None = None) -> str:
  """Writes the dataset to OUT/prepared_images/1.0.0/ and returns that directory.

  Refuses a non-empty `out` without `overwrite`. The dataset is built in a hidden folder in
  `out` and replaces OUT/prepared_images only once complete: a build that stops (a bad file,
  Ctrl-C) leaves the previous dataset as it was. Raises UserError naming the bad input: a
  `limit` that is not a positive integer, an `out` inside the source folder (a rerun would scan
  it as a class), a bad folder (`scan_folder`).
  """
  if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
    raise UserError(f'--max_per_split={limit}: must be a positive integer (images per split)')
  if source.startswith('folder:') and source[len('folder:'):]:
    root = os.path.realpath(source[len('folder:'):])
    if os.path.realpath(out) == root or os.path.realpath(out).startswith(root.rstrip(os.sep)
                                                                          + os.sep):
      raise UserError(f'--out {out}: is inside --source {source}; a later run would read it as '
                      f'a class folder, so write the dataset elsewhere')
  if source == 'fashion_mnist':
    splits, class_names, channels = fashion_mnist_splits(limit), fashion_mnist.CLASS_NAMES, 1
    report = class_table(splits, class_names)
  elif source.startswith('folder:') and source[len('folder:'):]:
    scan = scan_folder(source[len('folder:'):])
    scan.splits = {k: Split(v.items[:limit], v.labels[:limit]) for k, v in scan.splits.items()}
    splits, class_names, channels, report = scan.splits, scan.class_names, 3, scan.report()
  else:
    raise UserError(f"--source {source!r}: use 'folder:PATH' or 'fashion_mnist'")
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f'--out {out}: exists and is not a directory')
  dataset = os.path.join(out, NAME)
  leftovers = f'.{NAME}-'  # atomic_write's hidden temporaries, e.g. of a killed run.
  if (os.path.isdir(out) and not overwrite
      and any(not n.startswith(leftovers) for n in os.listdir(out))):
    raise UserError(f'--out {out}: exists and is not empty; pass --overwrite to replace the '
                    f'dataset in it')
  logger.info('\n'.join(report))
  import tensorflow_datasets as tfds  # Imports TensorFlow (seconds): only a build needs it.
  tfds.disable_progress_bar()  # Ours counts images; TFDS' own bars would interleave with it.
  made_out = not os.path.exists(out)
  try:
    with atomic_write.staging_dir(dataset) as staging:
      builder = _builder_class()(splits=splits, class_names=class_names, channels=channels,
                                 source=source, skip_bad=skip_bad, data_dir=staging,
                                 file_format='array_record')
      builder.download_and_prepare(download_dir=os.path.join(staging, 'downloads'))
      atomic_write.replace_dir(os.path.join(staging, NAME), dataset)
  except BaseException:
    if made_out:  # The folder this build made, empty once its staging is gone: not left.
      with contextlib.suppress(OSError):
        os.rmdir(out)
    raise
  version_dir = os.path.join(dataset, str(builder.version))
  if builder.skipped:
    logger.info('skipped %s: %s', counted(len(builder.skipped), 'undecodable file',
                                          'undecodable files'), _some(builder.skipped))
    # The table printed before the build counted the skipped files too (found only while
    # encoding); this one counts what the dataset holds, and says so in its first line (the
    # 'N classes:' of the first one would make the two look alike).
    table = class_table(_without(splits, builder.skipped), class_names)[1:]
    logger.info('\n'.join(['written, after skipping the undecodable files:'] + table))
  counts = ', '.join(f'{k} {v.num_examples}' for k, v in builder.info.splits.items())
  logger.info('wrote %s: %s images, %d classes; train with --config.data.source=array_record:%s',
              version_dir, counts, len(class_names), out)
  return version_dir


_SOURCE = flags.DEFINE_string('source', None, "'folder:PATH' or 'fashion_mnist'",
                              required=True)
_OUT = flags.DEFINE_string('out', None, 'Output directory of the TFDS dataset', required=True)
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace a dataset already in --out (the '
                                'new one is built beside it and replaces it once complete)')
_SKIP_BAD = flags.DEFINE_bool('skip_bad', False, 'Skip undecodable image files (and count '
                              'them) instead of stopping at the first')
_LIMIT = flags.DEFINE_integer('max_per_split', None, 'Keep at most this many images per split, a '
                              'positive integer (quick trials)')


class _Terminated(KeyboardInterrupt):
  """SIGTERM (a job's time limit, `kill`), taken as Ctrl-C is: Python's default ended the
  process at once, without a word, leaving its partial dataset in --out."""


def _terminate(signum, frame):
  del signum, frame
  raise _Terminated


def main(argv):
  """`python -m vit.data.prepare`: writes --source as a TFDS ArrayRecord dataset under --out
  (`prepare`). A user error is one line and exit status 2; Ctrl-C (SIGTERM) says which dataset
  is left as it was, removes the partial one and exits with status 130 (143)."""
  del argv
  out = _OUT.value  # A leading ~ is expanded in it (vit.cli), and in folder:~/PATH here.
  source = user_paths.expand_spec(_SOURCE.value, '--source')
  existed = os.path.isdir(os.path.join(out, NAME))
  signal.signal(signal.SIGTERM, _terminate)
  try:
    prepare(source, out, overwrite=_OVERWRITE.value, skip_bad=_SKIP_BAD.value,
            limit=_LIMIT.value)
  except KeyboardInterrupt as e:
    # Otherwise cli.run prints the trainers' message about unsaved steps.
    how = 'stopped (SIGTERM)' if isinstance(e, _Terminated) else 'interrupted'
    print(f'{how}; the previous dataset at {os.path.join(out, NAME)} is unchanged'
          if existed else f'{how}; no dataset was written to {out}', file=sys.stderr)
    sys.exit(143 if isinstance(e, _Terminated) else 130)


if __name__ == '__main__':
  cli.run(main)
