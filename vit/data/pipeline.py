"""Assembles grain datasets from the config: sources, transforms, sharding, batching."""
from __future__ import annotations

from typing import Iterator

import grain
import jax
import ml_collections
import numpy as np

from vit.data import fashion_mnist, transforms
from vit.errors import ConfigError, UserError


def make_source(config: ml_collections.ConfigDict, split: str):
  """A random-access source of {'image': uint8 [H, W, C], 'label': int32} records."""
  source = config.data.source
  if source == 'fashion_mnist':
    return fashion_mnist.ArraySource(*fashion_mnist.load(split, config.data.data_dir))
  raise ConfigError('data.source', source, "unknown source; use 'fashion_mnist'")


def per_process_batch(global_batch: int, key: str = 'batch_size') -> int:
  count = jax.process_count()
  if global_batch % count:
    raise ConfigError(key, global_batch, f'not divisible by the {count} processes')
  return global_batch // count


def _train_transforms(config):
  size, data = config.image_size, config.data
  ops = [transforms.ToChannels(data.channels)]
  ops.append(transforms.InceptionCrop(size) if data.inception_crop else transforms.Resize(size))
  if data.flip:
    ops.append(transforms.RandomFlip())
  return ops


def _eval_transforms(config):
  return [transforms.ToChannels(config.data.channels), transforms.CentralCrop(config.image_size)]


def train_dataset(config: ml_collections.ConfigDict, source=None) -> grain.IterDataset:
  """Shuffled (reshuffled every epoch), augmented, repeated, batched per process.

  Each process reads only its shard; grain derives every random choice from (seed, index), so
  the batches are the same whatever the worker count, and the iterator state is checkpointable.
  """
  source = make_source(config, config.data.train_split) if source is None else source
  seed = config.data.shuffle_seed if config.data.shuffle_seed is not None else config.seed
  ds = grain.MapDataset.source(source)
  ds = ds[jax.process_index()::jax.process_count()]
  ds = ds.shuffle(seed=seed).repeat()
  for op in _train_transforms(config):
    ds = ds.random_map(op, seed=seed) if isinstance(op, grain.transforms.RandomMap) else ds.map(op)
  ds = ds.batch(per_process_batch(config.batch_size), drop_remainder=True)
  iter_ds = ds.to_iter_dataset()
  if config.data.worker_count > 0:
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.worker_count))
  return iter_ds


def eval_batches(config: ml_collections.ConfigDict, source=None, split: str | None = None
                 ) -> Iterator[dict]:
  """Every example exactly once; the last batch is padded and carries a `mask` of valid rows."""
  source = make_source(config, split or config.data.eval_split) if source is None else source
  batch = per_process_batch(config.eval_batch_size, 'eval_batch_size')
  ds = grain.MapDataset.source(source)[jax.process_index()::jax.process_count()]
  for op in _eval_transforms(config):
    ds = ds.map(op)
  ds = ds.map(lambda r: {**r, 'mask': np.bool_(True)})
  n = len(ds)
  steps = -(-len(source) // config.eval_batch_size)  # Same count on every process.
  for start in range(0, steps * batch, batch):
    rows = [ds[i] for i in range(start, min(start + batch, n))]
    if not rows:
      rows = [{**ds[0], 'mask': np.bool_(False)}]
    while len(rows) < batch:
      rows.append({**rows[0], 'mask': np.bool_(False)})
    yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    raise UserError(f'{where}: label {labels[bad[0]]} at index {bad[0]} is outside '
                    f'[0, {num_classes}) (config.model.num_classes={num_classes})')
