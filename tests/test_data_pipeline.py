"""The grain pipeline on real tiny TFDS ArrayRecord datasets built in a temporary directory.

Each image is filled with its example id (lossless PNG), so a decoded pixel names the record it
came from: sharding, padding and skipping are checked by the ids that come out.
"""
import json
import logging
import re

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vit import config as config_lib
from vit.data import fashion_mnist, pipeline
from vit.errors import BadRecordError, ConfigError, UserError
from vit.testing import tfds_images

NUM_TRAIN, NUM_TEST = 24, 10
BAD_IMAGE_ID, BAD_LABEL_ID = 5, 9


def _examples(n, offset=0, bad=False):
  for i in range(offset, offset + n):
    image = np.full((12, 10, 3), i, np.uint8)
    image[0, :, 1] = np.arange(10)  # Not flip-symmetric, so a flip shows in the pixels.
    if bad and i == BAD_IMAGE_ID:
      image = b'\xff\xd8 this is not a jpeg'
    label = 7 if bad and i == BAD_LABEL_ID else i % 3
    yield i, {'image': image, 'label': label, 'id': i}


class VitTestImages(tfds.core.GeneratorBasedBuilder):
  """24 train and 10 test images of 3 classes."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds_images.info(self, ['a', 'b', 'c'])

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(NUM_TRAIN),
            'test': self._generate_examples(NUM_TEST, offset=100)}

  def _generate_examples(self, n, offset=0):
    return _examples(n, offset)


class VitTestBadImages(tfds.core.GeneratorBasedBuilder):
  """12 records: #5 does not decode, #9 has label 7 (a plain integer feature, no ClassLabel)."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds_images.info(self)  # No class names: label 7 is written as it is.

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    return _examples(12, bad=True)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tfds'))
  for cls in (VitTestImages, VitTestBadImages):
    cls(data_dir=path, file_format='array_record').download_and_prepare()
  return path


def make_config(data_dir, name='vit_test_images', **data):
  config = config_lib.defaults()
  config.image_size = 8
  config.batch_size = 4
  config.eval_batch_size = 4
  config.model.num_classes = 3
  config.data.source = f'tfds:{name}'
  config.data.data_dir = data_dir
  config.data.read_threads = 2
  for key, value in data.items():
    config.data[key] = value
  return config


def ids(batch):
  return batch['image'][:, -1, -1, 0].astype(int).tolist()


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _record_order(data_dir, name='vit_test_bad_images'):
  """Ids in on-disk order: TFDS shuffles examples by key when it writes them."""
  records = tfds.data_source(name, data_dir=data_dir, split='train',
                             decoders={'image': tfds.decode.SkipDecoding()}, download=False)
  return [int(r['id']) for r in records]


def assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_records_decode_to_uint8_with_labels_and_class_names(data_dir):
  config = make_config(data_dir, train_split='train[:50%]')
  source = pipeline.make_source(config, 'train[:50%]')
  assert len(source) == NUM_TRAIN // 2 and source.class_names == ('a', 'b', 'c')
  batch = next(iter(pipeline.train_dataset(config)))
  assert batch['image'].shape == (4, 8, 8, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].dtype == np.int32
  assert set(batch.keys()) == {'image', 'label'}
  np.testing.assert_array_equal(batch['label'], np.array(ids(batch)) % 3)


def test_same_seed_same_batches_whatever_the_worker_count(data_dir):
  config = make_config(data_dir, inception_crop=True, flip=True)
  reference = take(iter(pipeline.train_dataset(config)), 8)  # 32 > 24: crosses an epoch.
  epoch1 = sorted(i for b in reference[:6] for i in ids(b))
  assert epoch1 == list(range(NUM_TRAIN))
  for workers in (1, 2):
    config.data.worker_count = workers
    iterator = iter(pipeline.train_dataset(config))
    assert_same(take(iterator, 8), reference)
    iterator.close()
  config.data.worker_count, config.seed = 0, 1
  other = take(iter(pipeline.train_dataset(config)), 2)
  assert ids(other[0]) + ids(other[1]) != ids(reference[0]) + ids(reference[1])


def test_reshuffles_every_epoch(data_dir):
  config = make_config(data_dir, train_split='train[:8]')
  batches = take(iter(pipeline.train_dataset(config)), 4)
  epochs = [ids(batches[0]) + ids(batches[1]), ids(batches[2]) + ids(batches[3])]
  assert sorted(epochs[0]) == sorted(epochs[1]) and len(set(epochs[0])) == 8
  assert epochs[0] != epochs[1]


@pytest.mark.parametrize('workers, ahead', [(0, 2), (1, 2), (0, 0)])
def test_iterator_state_restores_the_exact_next_batches(data_dir, workers, ahead):
  config = make_config(data_dir, inception_crop=True, flip=True, worker_count=workers,
                       prefetch_batches=ahead)
  iterator = iter(pipeline.train_dataset(config))
  take(iterator, 3)
  state = json.loads(json.dumps(iterator.get_state()))  # What the checkpoint stores.
  expected = take(iterator, 4)
  restored = iter(pipeline.train_dataset(config))
  restored.set_state(state)
  assert_same(take(restored, 4), expected)
  if workers:
    iterator.close()
    restored.close()


def test_prefetching_hands_out_the_same_batches(data_dir):
  ahead, none = (take(iter(pipeline.train_dataset(make_config(
      data_dir, flip=True, prefetch_batches=n))), 5) for n in (3, 0))
  assert_same(ahead, none)


def test_iterator_state_carries_to_another_layout(data_dir):
  """2 processes -> 1 -> 2 -> another worker count: the position in epochs is kept, each new
  layout continuing exactly as if it had read that far itself (vit/data/iterator_state.py)."""
  config = make_config(data_dir)
  config.batch_size = 6  # 24 records: 2 shards of 12, or 1 of 24; 3 a batch from each shard.

  source = pipeline.make_source(config, config.data.train_split)

  def layout(processes, workers=0, skip=0, shards=None):
    config.data.worker_count = workers
    iterators = [iter(pipeline.train_dataset(config, source, grain.sharding.ShardOptions(
        i, processes, drop_remainder=True))) for i in shards or range(processes)]
    for it in iterators:
      take(it, skip)
    return iterators

  def saved(iterators):
    return [json.loads(json.dumps(it.get_state())) for it in iterators]  # As checkpointed.

  two = layout(2, skip=3)  # 9 records of each 12-record shard: 0.75 epochs.
  one, = layout(1)
  one.resume_from(saved(two))
  assert one.resume_note == (
      'the data iterator was saved by 2 processes x 0 data workers, this run has 1 process x 0 '
      "data workers: input position re-derived for it: epoch 0, record 18 of the 24 in this "
      "process's shard; the sample order from here on differs from the saved layout's")
  assert_same(take(one, 4), take(layout(1, skip=3)[0], 4))  # Into epoch 1: 18 + 24 = 42.

  again = layout(2)
  for it in again:
    it.resume_from(saved([one]))  # 1.75 epochs: record 9 of 12 in epoch 1 of each shard.
  assert 'epoch 1, record 9 of the 12' in again[0].resume_note
  state = saved(again)[0]
  fresh = layout(2, skip=7)  # 7 batches of 3 = 21 = 12 + 9.
  assert [ids(next(it)) for it in again] == [ids(next(it)) for it in fresh]

  workers, = layout(2, workers=2, shards=[0])  # Record 21: worker 0 read 11, worker 1 10.
  try:
    workers.set_state(state)
    assert workers.resume_note.endswith('x 2 data workers: input position re-derived for it: '
                                        "epoch 1, record 9 of the 12 in this process's shard; "
                                        'the sample order is unchanged')
    assert_same(take(workers, 3), take(layout(2, skip=7, shards=[0])[0], 3))
  finally:
    workers.close()


def test_each_process_reads_a_disjoint_shard(data_dir):
  config = make_config(data_dir)
  config.batch_size = 6
  order, seen = _record_order(data_dir, 'vit_test_images'), []
  for index in range(3):
    shard = grain.sharding.ShardOptions(index, 3, drop_remainder=True)
    batches = take(iter(pipeline.train_dataset(config, shard=shard)), 4)  # One shard epoch.
    assert all(b['image'].shape[0] == 2 for b in batches)  # Global 6 over 3 processes.
    shard_ids = sorted(i for b in batches for i in ids(b))
    assert shard_ids == sorted(order[8 * index:8 * index + 8])  # grain's contiguous split
    seen.append(set(shard_ids))
  assert set.union(*seen) == set(range(NUM_TRAIN)) and sum(map(len, seen)) == NUM_TRAIN


def test_global_batch_must_divide_over_processes(data_dir):
  config = make_config(data_dir, batch_size=4)
  with pytest.raises(ConfigError, match=r'config.batch_size=4: not divisible by the 3 process'):
    pipeline.train_dataset(config, shard=grain.sharding.ShardOptions(0, 3))


def test_eval_pads_and_counts_every_example_once(data_dir):
  config = make_config(data_dir)
  config.eval_batch_size = 4
  seen, batches = [], []
  for index in range(2):  # 10 examples, 2 processes of 5, per-process batches of 2.
    shard = grain.sharding.ShardOptions(index, 2)
    batches.append(list(pipeline.eval_batches(config, shard=shard)))
    for b in batches[-1]:
      assert b['image'].shape == (2, 8, 8, 3)
      seen += [i for i, m in zip(ids(b), b['mask']) if m]
  assert len(batches[0]) == len(batches[1]) == 3
  assert sorted(seen) == list(range(100, 100 + NUM_TEST))
  assert [b['mask'].tolist() for b in batches[0]] == [[True, True]] * 2 + [[True, False]]
  single = list(pipeline.eval_batches(config))
  assert sum(int(b['mask'].sum()) for b in single) == NUM_TEST and len(single) == 3
  config.data.worker_count = 1
  assert_same(list(pipeline.eval_batches(config)), single)


def test_tfds_split_syntax(data_dir):
  config = make_config(data_dir)
  head = pipeline.make_source(config, 'train[:75%]')
  tail = pipeline.make_source(config, 'train[75%:]')
  assert len(head) == 18 and len(tail) == 6


@pytest.mark.parametrize('source, data_dir_name, key, message', [
    ('tfds:vit_no_such_dataset', None, 'data.source', 'no TFDS dataset of that name'),
    ('tfds:vit_test_images', 'missing', 'data.data_dir', 'no such directory'),
    ('array_record:/nonexistent/prepared', None, 'data.source', 'no such directory'),
    ('array_record:{tmp}', None, 'data.source', 'no prepared dataset'),
    ('imagenet', None, 'data.source', 'unknown source'),
])
def test_bad_sources_name_the_key(data_dir, tmp_path, source, data_dir_name, key, message):
  config = make_config(data_dir)
  config.data.source = source.format(tmp=tmp_path)
  if data_dir_name:
    config.data.data_dir = str(tmp_path / data_dir_name)
  with pytest.raises(ConfigError, match=message) as error:
    pipeline.make_source(config, 'train')
  assert error.value.key == key


def test_unknown_split_lists_the_splits(data_dir):
  config = make_config(data_dir, train_split='valid')
  with pytest.raises(ConfigError, match=r"config.data.train_split='valid'.*splits: train, test"):
    pipeline.train_dataset(config)


def test_tfds_dataset_not_prepared_in_data_dir(tmp_path, caplog):
  config = make_config(str(tmp_path))
  with pytest.raises(UserError, match=r'tfds:vit_test_images: not prepared under'):
    pipeline.make_source(config, 'train')
  # TFDS' own 'Variant folder ... has no dataset_info.json' warning no longer comes first.
  assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize('bad_id, message', [
    (BAD_IMAGE_ID, r"split 'train\[{p}:{q}\]': record 0: key 'image': cannot decode the image "
                   r'\(not a recognised image format\); set config.data.skip_bad_records'),
    (BAD_LABEL_ID, r"split 'train\[{p}:{q}\]': record 0: key 'label': 7 is outside \[0, 3\) "
                   r'\(config.model.num_classes=3\)'),
])
def test_bad_records_are_named(data_dir, bad_id, message):
  p = _record_order(data_dir).index(bad_id)
  config = make_config(data_dir, 'vit_test_bad_images', eval_split=f'train[{p}:{p + 1}]')
  with pytest.raises(UserError, match=message.format(p=p, q=p + 1)):
    list(pipeline.eval_batches(config))


def test_bad_record_error_names_its_index_in_the_split(data_dir):
  order = _record_order(data_dir)
  config = make_config(data_dir, 'vit_test_bad_images')
  config.model.num_classes = None  # MPP-style: labels unchecked, so only the image is bad.
  with pytest.raises(UserError, match=rf"record {order.index(BAD_IMAGE_ID)}: key 'image'"):
    take(iter(pipeline.train_dataset(config)), 3)


def test_a_bad_record_of_a_class_subset_is_named_by_its_place_in_the_split(data_dir):
  """It was named by its place in the data.classes view: 'record 1' of classes (2,) was
  another record of the split, or none."""
  order = _record_order(data_dir)
  in_subset = [i for i in order if i % 3 == 2 and i != BAD_LABEL_ID].index(BAD_IMAGE_ID)
  assert in_subset != order.index(BAD_IMAGE_ID)  # Else this test tells nothing.
  config = make_config(data_dir, 'vit_test_bad_images', eval_split='train', classes=(2,))
  with pytest.raises(BadRecordError, match=rf"split 'train' \(classes \(2,\)\): record "
                                           rf"{order.index(BAD_IMAGE_ID)}: key 'image'"):
    list(pipeline.eval_batches(config))


def test_a_bad_record_is_named_by_its_place_in_the_split_in_every_epoch(data_dir, caplog):
  """A repeated dataset numbers the records of its later epochs past the split's end (epoch *
  size + position): a class subset's lookup of its split positions failed there with an
  IndexError (a traceback in `make demo`'s pretraining), and the whole split's was named
  'record 17' of a 12-record split. Three epochs of a class subset and of the split, skipping."""
  order = _record_order(data_dir)
  for classes, good in (((2,), 3), (None, 10)):
    config = make_config(data_dir, 'vit_test_bad_images', skip_bad_records=True,
                         prefetch_batches=0, classes=classes)
    config.batch_size = 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      take(iter(pipeline.train_dataset(config)), 3 * good)
    named = {re.search(r'record (\d+):', r.getMessage()).group(1) for r in caplog.records
             if 'skipped so far' in r.getMessage() and "key 'image'" in r.getMessage()}
    assert named == {str(order.index(BAD_IMAGE_ID))}, classes
    assert sum("key 'image'" in r.getMessage() for r in caplog.records) >= 2  # Epochs 1 and 2.


def test_skip_bad_records_skips_and_counts(data_dir, caplog):
  # No batches made ahead: a prefetching thread would already be counting the next epoch's.
  config = make_config(data_dir, 'vit_test_bad_images', skip_bad_records=True,
                       prefetch_batches=0)
  config.batch_size = 5
  with caplog.at_level(logging.WARNING):
    batches = take(iter(pipeline.train_dataset(config)), 2)  # One epoch: 10 good records.
  assert sorted(i for b in batches for i in ids(b)) == [
      i for i in range(12) if i not in (BAD_IMAGE_ID, BAD_LABEL_ID)]
  counts = [r.getMessage() for r in caplog.records if 'skipped so far' in r.getMessage()]
  assert len(counts) == 2 and '(1 bad record skipped so far' in counts[0]
  assert '(2 bad records skipped so far' in counts[-1]
  assert any(f"record {_record_order(data_dir).index(BAD_IMAGE_ID)}: key 'image'" in c
             for c in counts)
  config.data.eval_split = 'train'
  evaluated = list(pipeline.eval_batches(config))
  assert sum(int(b['mask'].sum()) for b in evaluated) == 10 and len(evaluated) == 3


def test_skipping_stops_when_every_record_is_bad():
  config = make_config(None, skip_bad_records=True)
  source = fashion_mnist.ArraySource([b'junk'] * 6, np.zeros(6, np.int32), description='junk')
  with pytest.raises(UserError, match=r"junk: all 3 records of this process are bad, e.g. junk: "
                                      r"record [0-5]: key 'image'"):
    next(iter(pipeline.train_dataset(config, source=source,
                                     shard=grain.sharding.ShardOptions(1, 2))))


def test_fashion_mnist_labels_checked_before_training():
  config = config_lib.defaults()
  config.image_size, config.batch_size, config.model.num_classes = 28, 8, 10
  source = fashion_mnist.ArraySource(*fashion_mnist.load('test'), description='fm test')
  batch = next(iter(pipeline.train_dataset(config, source=source)))
  assert batch['image'].shape == (8, 28, 28, 3)
  np.testing.assert_array_equal(batch['image'][..., 0], batch['image'][..., 2])
  config.model.num_classes = 9
  with pytest.raises(ConfigError, match=r'model.num_classes=9: fm test has 10 classes'):
    pipeline.train_dataset(config, source=source)
  source.class_names = None
  first_bad = int(np.flatnonzero(source.labels == 9)[0])
  with pytest.raises(UserError, match=rf'fm test: label 9 at index {first_bad} is outside'):
    pipeline.train_dataset(config, source=source)


def test_thread_count_follows_the_records_and_counts_are_validated(data_dir):
  config = make_config(data_dir)
  config.data.read_threads = None
  arrays = fashion_mnist.ArraySource(np.zeros((4, 2, 2, 1), np.uint8), np.zeros(4, np.int32))
  assert pipeline._read_threads(config, arrays) == 0  # Nothing to decode.
  assert pipeline._read_threads(config, pipeline.make_source(config, 'train')) == 16
  for key, value in (('worker_count', -1), ('read_threads', -2), ('prefetch_batches', -1)):
    bad = make_config(data_dir, **{key: value})
    with pytest.raises(ConfigError, match=rf'config.data.{key}={value}: must be an integer >= 0'):
      pipeline.train_dataset(bad)
