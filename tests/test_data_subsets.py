"""Held-out split, class subsets and class-balanced fractions (vit/data/subsets.py)."""
import numpy as np
import pytest

from vit import config as config_lib
from vit.data import fashion_mnist, pipeline, subsets
from vit.errors import ConfigError


def _source(n=100, classes=4):
  labels = (np.arange(n) * 7 % classes).astype(np.int32)  # Every class spread over the split.
  images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
  return fashion_mnist.ArraySource(images, labels, 'toy', tuple('abcd'[:classes]))


def test_holdout_is_the_fixed_tail():
  kept, tail = subsets.holdout_indices(10, 3)
  assert kept.tolist() == list(range(7)) and tail.tolist() == [7, 8, 9]
  with pytest.raises(ConfigError, match=r'config.data.holdout=10: must be an integer in \[0, 10\)'):
    subsets.holdout_indices(10, 10)


def test_class_indices_relabel_in_the_given_order():
  labels = np.array([0, 3, 1, 3, 2, 0])
  indices, new = subsets.class_indices(labels, (3, 0))
  assert indices.tolist() == [0, 1, 3, 5] and new.tolist() == [1, 0, 0, 1]
  with pytest.raises(ConfigError, match='class 7 has no records'):
    subsets.class_indices(labels, (7,))


def test_balanced_fraction_is_balanced_and_seeded():
  labels = np.repeat(np.arange(3), 10)
  a = subsets.balanced_fraction(labels, 4, seed=1)
  assert np.bincount(labels[a]).tolist() == [4, 4, 4]
  assert a.tolist() == subsets.balanced_fraction(labels, 4, seed=1).tolist()
  assert a.tolist() != subsets.balanced_fraction(labels, 4, seed=2).tolist()
  with pytest.raises(ConfigError, match='asks 11 records of class 0, which has 10'):
    subsets.balanced_fraction(labels, 11, seed=0)


def test_select_composes_holdout_classes_and_fraction():
  data = config_lib.defaults().data
  data.update(holdout=20, classes=(2, 1), train_fraction=0.2)
  train = subsets.select(_source(), data, train=True, seed=0)
  held = subsets.select(_source(), data, train=False, held_out=True)
  # Classes 2 and 1 have 25 records each in the whole split: 0.2 of them is 5 per class.
  assert np.bincount(train.labels).tolist() == [5, 5] and train.class_names == ('c', 'b')
  ids = [int(train[i]['image'][0, 0, 0]) for i in range(len(train))]
  assert max(ids) < 80 and [train[i]['label'] for i in range(3)] == train.labels[:3].tolist()
  assert all(_source().labels[i] == (2, 1)[train.labels[k]] for k, i in enumerate(ids))
  held_ids = [int(held[i]['image'][0, 0, 0]) for i in range(len(held))]
  assert min(held_ids) >= 80 and len(held) == np.isin(_source().labels[80:], (1, 2)).sum()
  assert subsets.select(_source(), config_lib.defaults().data, train=True) is not None
  # Too few records left: the error names the fraction set, not the count per class (it said
  # 'config.data.train_fraction=12'), and the held-out records that took them.
  data.update(holdout=90, classes=None, train_fraction=0.5)
  with pytest.raises(ConfigError) as e:
    subsets.select(_source(), data, train=True, seed=0)
  assert str(e.value) == (
      'config.data.train_fraction=0.5: asks 12 records of class 0, which has 3 left by '
      'data.holdout=90 (the fraction counts the whole split, held-out records included)')
  data.update(holdout=0)
  unbalanced = fashion_mnist.ArraySource(np.zeros((6, 2, 2, 1), np.uint8),
                                         np.array([0, 1, 1, 1, 1, 1], np.int32), 'toy')
  with pytest.raises(ConfigError, match=r'^config.data.train_fraction=0.5: asks 2 records of '
                     r'class 0, which has 1$'):
    subsets.select(unbalanced, data, train=True, seed=0)


def test_a_fraction_under_one_record_per_class_keeps_one_and_says_so(caplog):
  data = config_lib.defaults().data
  data.update(classes=(2, 1), train_fraction=0.01)  # 0.25 of a record of each class.
  train = subsets.select(_source(), data, train=True, seed=0)
  assert np.bincount(train.labels).tolist() == [1, 1]
  assert [r.getMessage() for r in caplog.records] == [
      'data.train_fraction=0.01 asks 0.25 records of each class; keeping 1 of each (a fraction '
      'of 0.04)']
  caplog.clear()
  data.train_fraction = 0.2
  subsets.select(_source(), data, train=True, seed=0)
  assert not caplog.records


def test_fashion_mnist_one_percent_is_600_images_whatever_the_holdout():
  config = config_lib.defaults()
  config.data.update(holdout=5000, train_fraction=0.01)
  source = pipeline.make_source(config, 'train')
  assert len(source) == 600 and np.bincount(source.labels).tolist() == [60] * 10
  assert source.indices.max() < 55000
  assert len(pipeline.make_source(config, subsets.HOLDOUT_SPLIT)) == 5000
  assert len(pipeline.make_source(config, 'test')) == 10000  # The fraction is for training.


@pytest.mark.parametrize('key, value, message', [
    ('holdout', -1, 'config.data.holdout=-1: must be an integer >= 0'),
    ('train_fraction', 0.0, 'config.data.train_fraction=0.0: must be in \\(0, 1\\]'),
    ('classes', (1, 1), 'config.data.classes=\\(1, 1\\): lists a class twice'),
])
def test_bad_subset_keys_are_one_line_errors(key, value, message):
  config = config_lib.defaults()
  config.image_size, config.model.name = 28, 'ViT-Ti/16'
  config.model.patches.size = (4, 4)
  config.data[key] = value
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(config)


def test_holdout_split_needs_a_holdout():
  with pytest.raises(ConfigError, match="config.data.holdout=0: must be > 0 to read the 'holdout'"):
    pipeline.make_source(config_lib.defaults(), subsets.HOLDOUT_SPLIT)
