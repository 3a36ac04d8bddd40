"""Assembles grain datasets from the config: sources, transforms, sharding, batching.

Order of a training pipeline (per process):

  source -> index -> this process's shard -> shuffle (new order every epoch) -> repeat
    -> Preprocess (decode, check, augment; seeded by (seed, position))   [grain threads/workers]
    -> drop and count bad records -> batch                               [main process]
    -> `data.prefetch_batches` batches made ahead              [a background thread]

Batching happens after `mp_prefetch`, in the main process: grain hands each worker every n-th
element, so batching inside the workers would make the batches depend on the worker count.
"""
from __future__ import annotations

import ctypes
import logging
import signal
import sys
from typing import Iterator, Optional

import grain
import jax
import ml_collections
import numpy as np
from absl import flags

from vit import user_paths
from vit.data import fashion_mnist, iterator_state, sources, subsets, transforms
from vit.errors import BadRecordError, ConfigError, UserError

logger = logging.getLogger(__name__)

SOURCES = "'fashion_mnist', 'tfds:NAME' or 'array_record:DIR'"


def make_source(config: ml_collections.ConfigDict, split: str):
  """A random-access source of {'image': uint8 [H, W, C] or encoded bytes, 'label'} records.

  `split` may be 'holdout': the last data.holdout records of data.train_split, which the train
  split then lacks. data.classes and data.train_fraction select within it (vit/data/subsets.py).
  """
  held_out = split == subsets.HOLDOUT_SPLIT
  split = config.data.train_split if held_out else split
  train = split == config.data.train_split
  seed = config.data.get('subset_seed')
  return subsets.select(_open(config, split, train), config.data, train=train,
                        held_out=held_out, seed=config.seed if seed is None else seed)


def _open(config: ml_collections.ConfigDict, split: str, train: bool):
  # A leading ~ is the home directory (vit.user_paths): bash leaves it in --config.a.b=~/x.
  source, data_dir = config.data.source, user_paths.expand_key('data.data_dir',
                                                               config.data.data_dir)
  split_key = 'train_split' if train else 'eval_split'
  if source == 'fashion_mnist':
    if split not in fashion_mnist.SPLITS:
      raise ConfigError(f'data.{split_key}', split, f'not a split of fashion_mnist (splits: '
                        f'{", ".join(fashion_mnist.SPLITS)})')
    return fashion_mnist.ArraySource(*fashion_mnist.load(split, data_dir),
                                     description=f'fashion_mnist split {split!r}')
  kind, _, arg = str(source).partition(':')
  if kind == 'tfds' and arg:
    return sources.open_tfds(arg, data_dir, split, split_key)
  if kind == 'array_record' and arg:
    directory = user_paths.expand_key('data.source', source, spec=True)
    return sources.open_prepared(directory, split, split_key)
  raise ConfigError('data.source', source, f'unknown source; use {SOURCES}')


def per_process_batch(global_batch: int, key: str = 'batch_size',
                      processes: Optional[int] = None) -> int:
  """The rows of a `global_batch` that each of `processes` processes (default:
  jax.process_count()) feeds; ConfigError naming `key` (the config key of that batch size)
  when they do not divide it."""
  count = jax.process_count() if processes is None else processes
  if global_batch % count:
    raise ConfigError(key, global_batch, f'not divisible by the {count} processes')
  return global_batch // count


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
  """UserError naming `where`, the first label of `labels` (int [N]) outside [0, num_classes) and
  its index."""
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    raise UserError(f'{where}: label {labels[bad[0]]} at index {bad[0]} is outside '
                    f'[0, {num_classes}) (config.model.num_classes={num_classes})')


class SkipBadRecords(grain.transforms.Filter):
  """Drops the records Preprocess marked as bad, logging each with a running count.

  Stops once a whole shard has gone by without one good record: a repeated training dataset
  would otherwise look for one forever.
  """

  def __init__(self, where: str, shard_size: int):
    self.where, self.shard_size, self.count, self.good = where, shard_size, 0, 0

  def filter(self, record) -> bool:
    if 'skipped' not in record:
      self.good += 1
      return True
    self.count += 1
    logger.warning('skipped %s (%d bad record%s skipped so far in %s)', record['skipped'],
                   self.count, '' if self.count == 1 else 's', self.where)
    if not self.good and self.count >= self.shard_size:
      raise BadRecordError(self.where, f'all {self.shard_size} records of this process are '
                           f'bad, e.g. {record["skipped"]}', skippable=False)
    return False


def _describe(source) -> str:
  return getattr(source, 'description', type(source).__name__)


def _check_source(config, source) -> None:
  """Label checks that need no decoding, done before the first step rather than mid-epoch."""
  num_classes = config.model.get('num_classes')
  if num_classes is None or config.data.skip_bad_records:
    return
  names = getattr(source, 'class_names', None)
  if names and len(names) > num_classes:
    raise ConfigError('model.num_classes', num_classes,
                      f'{_describe(source)} has {len(names)} classes')
  if isinstance(getattr(source, 'labels', None), np.ndarray):
    check_labels(source.labels, num_classes, _describe(source))


def split_positions(source) -> Optional[np.ndarray]:
  """The positions in its split of the records of a view of it (subsets.Subset, few-shot's
  draw: a `source` with `indices` into its own `.source`), through views of views; None for the
  split itself. An error names a record by its position in the split, where a user finds it."""
  positions = None
  while hasattr(source, 'indices') and hasattr(source, 'source'):
    inner = np.asarray(source.indices)
    positions = inner if positions is None else inner[positions]
    source = source.source
  return positions


def _shard(source, shard: grain.sharding.ShardOptions) -> grain.MapDataset:
  """This process's contiguous slice of the indexed records (grain's even split)."""
  n, count, index = len(source), shard.shard_count, shard.shard_index
  per, extra = divmod(n, count)
  if shard.drop_remainder:
    start, end = per * index, per * (index + 1)
  else:
    start, end = per * index + min(index, extra), per * (index + 1) + min(index + 1, extra)
  index = transforms.AddIndex(n, split_positions(source))
  return grain.MapDataset.source(source).map_with_index(index)[start:end]


def _preprocess(config, ops, where: str) -> transforms.Preprocess:
  return transforms.Preprocess(tuple(ops), where, config.model.get('num_classes'),
                               bool(config.data.skip_bad_records))


def _read_threads(config, source) -> int:
  """Threads pay off for decoding (PIL releases the GIL); for in-memory arrays the hand-off
  between threads costs more than the work (4x slower on 2 cores for Fashion-MNIST)."""
  threads = config.data.read_threads
  if threads is None:
    return 0 if len(source) and isinstance(source[0]['image'], np.ndarray) else 16
  if not isinstance(threads, int) or threads < 0:
    raise ConfigError('data.read_threads', threads, 'must be an integer >= 0')
  return threads


def _parallel(config, ds: grain.MapDataset, source, shard_size: int, where: str
              ) -> grain.IterDataset:
  """Per-record work on grain's threads or worker processes."""
  workers = config.data.worker_count
  if not isinstance(workers, int) or workers < 0:
    raise ConfigError('data.worker_count', workers, 'must be an integer >= 0')
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=_read_threads(config, source)))
  if workers > 0:
    if not flags.FLAGS.is_parsed():
      # grain's worker processes read its absl flags; outside an absl app (notebooks, tests,
      # benchmarks) nobody parsed them, so take their defaults.
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers),
                        worker_init_fn=_init_worker)
  return it.filter(SkipBadRecords(where, shard_size))


def _init_worker(worker_index: int, worker_count: int) -> None:
  """Input workers leave signals to the trainer and die with it.

  Ctrl-C and a scheduler's SIGTERM reach the whole process group: the trainer must finish its
  step and save (vit/checkpoints.py), which needs its workers alive until it exits. After a
  kill -9 of the trainer, PR_SET_PDEATHSIG ends the workers instead of leaving orphans.
  """
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  if sys.platform.startswith('linux'):
    pr_set_pdeathsig = 1
    ctypes.CDLL('libc.so.6', use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _train_transforms(config):
  size, data = config.image_size, config.data
  ops = [transforms.ToChannels(data.channels)]
  ops.append(transforms.InceptionCrop(size) if data.inception_crop else transforms.Resize(size))
  if data.get('crop_padding', 0):
    ops.append(transforms.RandomPadCrop(data.crop_padding))
  if data.flip:
    ops.append(transforms.RandomFlip())
  return ops


def _eval_transforms(config):
  crop = transforms.CentralCrop(config.image_size, config.data.eval_crop_fraction)
  return [transforms.ToChannels(config.data.channels), crop]


def train_dataset(config: ml_collections.ConfigDict, source=None,
                  shard: Optional[grain.sharding.ShardOptions] = None) -> grain.IterDataset:
  """Shuffled (reshuffled every epoch), augmented, repeated, batched per process.

  Each process reads only its shard (`shard`, by default grain's JAX-process sharding); grain
  derives every random choice from (seed, position), so the batches are the same whatever the
  worker count. The iterator state is checkpointable and carries over to another process or
  worker count (vit/data/iterator_state.py).
  """
  source = make_source(config, config.data.train_split) if source is None else source
  shard = shard or grain.sharding.ShardByJaxProcess(drop_remainder=True)
  batch = per_process_batch(config.batch_size, processes=shard.shard_count)
  _check_source(config, source)
  where = _describe(source)
  ds = _shard(source, shard)
  shard_size = len(ds)
  if shard_size == 0:
    raise UserError(f'{where}: no records for process {shard.shard_index} of '
                    f'{shard.shard_count}')
  seed = config.data.shuffle_seed if config.data.shuffle_seed is not None else config.seed
  ds = ds.shuffle(seed=seed).repeat()
  ds = ds.random_map(_preprocess(config, _train_transforms(config), where), seed=seed)
  ds = _parallel(config, ds, source, shard_size, where).batch(batch, drop_remainder=True)
  return iterator_state.LayoutDataset(_prefetch(config, ds), workers=config.data.worker_count,
                                      processes=shard.shard_count,
                                      process_index=shard.shard_index, records=len(source))


def _prefetch(config, ds: grain.IterDataset) -> grain.IterDataset:
  """Batches made on a background thread while the step runs: the records' Python work then
  overlaps the step instead of adding to it (the step releases the GIL while XLA computes).
  The state handed on is grain's state after the last batch handed out, so checkpoints are
  exact."""
  ahead = config.data.prefetch_batches
  if not isinstance(ahead, int) or isinstance(ahead, bool) or ahead < 0:
    raise ConfigError('data.prefetch_batches', ahead, 'must be an integer >= 0')
  return grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=ahead) \
      if ahead else ds


def _padded(records: Iterator[dict], batch: int, steps: int, template: dict) -> Iterator[dict]:
  rows = []
  for record in records:
    rows.append({**record, 'mask': np.bool_(True)})
    if len(rows) == batch:
      yield _stack(rows)
      steps, rows = steps - 1, []
  while steps > 0:
    rows += [template] * (batch - len(rows))
    yield _stack(rows)
    steps, rows = steps - 1, []


def _stack(rows: list[dict]) -> dict:
  return {k: np.stack([r[k] for r in rows]) for k in ('image', 'label', 'mask')}


def note_eval_examples(config: ml_collections.ConfigDict, key: str, examples: int,
                       source=None) -> None:
  """Logs a note when the config key `key` asks for more held-out images (`examples`) than
  data.eval_split holds: the evaluators score every image then, and the metric's `examples`
  says how many; the note says why it is fewer than asked, before the first step. `source`:
  that split's, when already open (make_source's otherwise)."""
  source = make_source(config, config.data.eval_split) if source is None else source
  if examples > len(source):
    held = f'{len(source):,}'
    logger.info('note: %s=%d is more than the %s images of data.eval_split %r: all %s are '
                'scored', key, examples, held, config.data.eval_split, held)


def eval_batches(config: ml_collections.ConfigDict, source=None, split: str | None = None,
                 shard: Optional[grain.sharding.ShardOptions] = None) -> Iterator[dict]:
  """Every example exactly once; the last batches are padded and carry a `mask` of valid rows.

  Every process yields the same number of batches (from the largest shard), so collective
  operations in the evaluation step line up across hosts.
  """
  source = make_source(config, split or config.data.eval_split) if source is None else source
  shard = shard or grain.sharding.ShardByJaxProcess(drop_remainder=False)
  batch = per_process_batch(config.eval_batch_size, 'eval_batch_size', shard.shard_count)
  _check_source(config, source)
  where = _describe(source)
  ds = _shard(source, shard)
  largest_shard = -(-len(source) // shard.shard_count)
  steps = -(-largest_shard // batch)
  ds = ds.random_map(_preprocess(config, _eval_transforms(config), where), seed=0)
  size, channels = config.image_size, config.data.channels
  template = {'image': np.zeros((size, size, channels), np.uint8), 'label': np.int32(0),
              'mask': np.bool_(False)}
  records = iter(_parallel(config, ds, source, len(ds), where))
  try:
    yield from _padded(records, batch, steps, template)
  finally:
    records.close()  # Stops worker processes now rather than at garbage collection.
    # With data.worker_count > 0 Python may still say at exit 'resource_tracker: There appear
    # to be N leaked shared_memory objects to clean up at shutdown', N about workers x passes
    # since the last garbage collection, after a bad record's one error line too. grain's own,
    # and harmless: the StopIteration that ends each worker's stream (or the error that stops
    # it) is re-raised from a local in grain's thread prefetch (`raise err`), a frame-traceback
    # cycle that keeps its producer thread's frame, and with it that worker's last record in
    # shared memory, until the cyclic garbage collector runs (it frees them during a run); at
    # exit that is too late for grain's unlink, and the tracker unlinks them itself (/dev/shm is
    # left as it was). Nothing here holds them: closing does not reach that frame; only a
    # gc.collect() per pass would, a full collection for a warning's sake.
