"""Random-access sources of {'image', 'label'} records read from TFDS ArrayRecord datasets.

Two spellings of `config.data.source` land here: `tfds:NAME` (any TFDS dataset prepared in the
ArrayRecord format under `config.data.data_dir`, e.g. with `tfds build NAME
--file_format=array_record`) and `array_record:DIR` (what `python -m vit.data.prepare` wrote).
Both go through TFDS' own reader, so TFDS split syntax (`train[:99%]`) works for both.

Images are read still encoded (`SkipDecoding`) and decoded by the pipeline's `Preprocess`
transform: it runs in grain's threads or worker processes, and a record that fails to decode is
reported with its index (or skipped) instead of failing deep inside TFDS.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
from typing import Any, Optional, Sequence

from vit.errors import ConfigError, UserError


@dataclasses.dataclass
class RecordSource:
  """A grain random-access source with a name for error messages and optional class names."""
  records: Sequence[Any]
  description: str
  class_names: Optional[tuple[str, ...]] = None

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict:
    return self.records[index]


def _tfds():
  import tensorflow_datasets as tfds  # Imports TensorFlow (seconds); Fashion-MNIST runs need none.
  return tfds


def _skip_image_decoding(features) -> dict:
  """Every top-level Image feature stays encoded: only 'image' is decoded, by the pipeline."""
  tfds = _tfds()
  return {k: tfds.decode.SkipDecoding() for k, f in features.items()
          if isinstance(f, tfds.features.Image)}


def _open_split(builder, split: str, description: str, split_key: str) -> RecordSource:
  features = builder.info.features
  missing = [k for k in ('image', 'label') if k not in features]
  if missing:
    raise UserError(f'{description}: has features {", ".join(features)}; the pipeline needs '
                    f'{" and ".join(repr(k) for k in missing)}')
  try:
    records = builder.as_data_source(split=split, decoders=_skip_image_decoding(features))
  except NotImplementedError:
    raise UserError(f'{description}: not stored as ArrayRecord; rebuild it with '
                    f'`tfds build ... --file_format=array_record`') from None
  except (ValueError, KeyError, AssertionError) as e:
    known = ', '.join(builder.info.splits) or 'none'
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(f'data.{split_key}', split,
                      f'not a split of {description} (splits: {known}; {first})') from None
  names = getattr(features['label'], 'names', None)
  return RecordSource(records, f'{description} split {split!r}', tuple(names) if names else None)


def open_tfds(name: str, data_dir: Optional[str], split: str, split_key: str) -> RecordSource:
  """`tfds:NAME`: a dataset TFDS knows by name (registered or prepared under `data_dir`)."""
  tfds = _tfds()
  if data_dir is not None and not os.path.isdir(data_dir):
    raise ConfigError('data.data_dir', data_dir, 'no such directory')
  # TFDS warns 'Variant folder DIR has no dataset_info.json' of a dataset not prepared: the
  # line below says that and what to do, so its warnings are shown only when it goes on.
  try:
    with _held_logs('absl') as held:
      builder = tfds.builder(name, data_dir=data_dir)
      prepared = builder.is_prepared()
  except tfds.core.registered.DatasetNotFoundError:
    # Unset, the key is no folder to name ('config.data.data_dir=None'): TFDS' default is.
    where = (f'config.data.data_dir={data_dir!r}' if data_dir is not None else
             f"TFDS' default data_dir {tfds.core.constants.get_default_data_dir()}; set "
             'config.data.data_dir to the folder it was prepared in')
    raise ConfigError('data.source', f'tfds:{name}',
                      f'no TFDS dataset of that name, registered or prepared under '
                      f'{where}') from None
  if not prepared:
    raise UserError(f'tfds:{name}: not prepared under {builder.data_dir}; prepare it with '
                    f'`tfds build {name} --data_dir=DIR --file_format=array_record` and set '
                    f'config.data.data_dir=DIR')
  for record in held:
    logging.getLogger(record.name).handle(record)
  return _open_split(builder, split, f'tfds:{name}', split_key)


@contextlib.contextmanager
def _held_logs(name: str):
  """Keeps the records logged to logger `name` itself (not its children) inside the block, in a
  list, instead of emitting them: the caller emits them (`logger.handle`) or drops them."""
  held: list[logging.LogRecord] = []

  class Hold(logging.Filter):

    def filter(self, record: logging.LogRecord) -> bool:
      held.append(record)
      return False

  logger, hold = logging.getLogger(name), Hold()
  logger.addFilter(hold)
  try:
    yield held
  finally:
    logger.removeFilter(hold)


def find_prepared(directory: str) -> str:
  """The version directory (NAME/VERSION/dataset_info.json) that `prepare` wrote in it."""
  if not os.path.isdir(directory):
    raise ConfigError('data.source', f'array_record:{directory}', 'no such directory')
  if os.path.exists(os.path.join(directory, 'dataset_info.json')):
    return directory
  found = sorted(glob.glob(os.path.join(directory, '*', '*', 'dataset_info.json')))
  if len(found) != 1:
    problem = ('no prepared dataset (NAME/VERSION/dataset_info.json) in it; write one with '
               '`python -m vit.data.prepare`' if not found else
               f'{len(found)} prepared datasets in it; name one version directory: '
               + ', '.join(os.path.dirname(f) for f in found))
    raise ConfigError('data.source', f'array_record:{directory}', problem)
  return os.path.dirname(found[0])


def open_prepared(directory: str, split: str, split_key: str) -> RecordSource:
  """`array_record:DIR`: a dataset written by `python -m vit.data.prepare --out DIR`."""
  tfds = _tfds()
  path = find_prepared(directory)
  try:
    builder = tfds.builder_from_directory(path)
  except Exception as e:  # TFDS raises several types for a damaged dataset_info.json.
    raise UserError(f'{path}/dataset_info.json: not readable as a TFDS dataset ({e})') from None
  return _open_split(builder, split, f'array_record:{directory}', split_key)
