"""Single transforms: decoding, label checks, channels, crops, flips."""
import io
import pickle

import numpy as np
import pytest
from PIL import Image

from vit.data import transforms
from vit.errors import BadRecordError


def encode(array, fmt='PNG', mode=None):
  out = io.BytesIO()
  Image.fromarray(array, mode).save(out, format=fmt)
  return out.getvalue()


def test_decode_keeps_gray_and_rgb_and_converts_the_rest():
  rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
  np.testing.assert_array_equal(transforms.decode_image(encode(rgb)), rgb)
  gray = rgb[..., 0]
  np.testing.assert_array_equal(transforms.decode_image(encode(gray)), gray[..., None])
  rgba = np.dstack([rgb, np.full((4, 5), 255, np.uint8)])
  np.testing.assert_array_equal(transforms.decode_image(encode(rgba)), rgb)
  assert transforms.decode_image(encode(rgb, 'JPEG')).shape == (4, 5, 3)


def test_truncated_and_foreign_bytes_are_bad_records():
  jpeg = encode(np.full((64, 64, 3), 7, np.uint8), 'JPEG')
  with pytest.raises(transforms.BadRecord, match=r"key 'image': cannot decode the image"):
    transforms.decode_image(jpeg[:len(jpeg) // 2])
  with pytest.raises(transforms.BadRecord, match=r'not a recognised image format'):
    transforms.decode_image(b'GIF89a? no')
  with pytest.raises(transforms.BadRecord, match=r'float32 \(2, 2\) is not uint8'):
    transforms.decode_image(np.zeros((2, 2), np.float32))


def test_labels_must_be_integers_in_range():
  assert transforms.check_label(np.int64(2), 3) == 2
  assert transforms.check_label(7, None) == 7  # No num_classes (MPP): not range-checked.
  with pytest.raises(transforms.BadRecord, match=r"key 'label': 3 is outside \[0, 3\)"):
    transforms.check_label(3, 3)
  with pytest.raises(transforms.BadRecord, match=r"key 'label': 1.5 is not an integer"):
    transforms.check_label(1.5, 3)


def test_channels_both_ways():
  gray = {'image': np.arange(6, dtype=np.uint8).reshape(2, 3, 1), 'label': 0}
  rgb = transforms.ToChannels(3).map(gray)['image']
  assert rgb.shape == (2, 3, 3) and (rgb == gray['image']).all()
  back = transforms.ToChannels(1).map({'image': rgb, 'label': 0})['image']
  np.testing.assert_array_equal(back, gray['image'])  # Equal channels: luminance is exact.


def test_central_crop_and_inception_crop_shapes_and_flip():
  image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
  record = {'image': image, 'label': 1}
  assert transforms.CentralCrop(32).map(record)['image'].shape == (32, 32, 3)
  rng = np.random.default_rng(1)
  crops = [transforms.InceptionCrop(16).random_map(record, rng)['image'] for _ in range(3)]
  assert all(c.shape == (16, 16, 3) for c in crops) and not np.array_equal(crops[0], crops[1])
  flips = [transforms.RandomFlip().random_map(record, np.random.default_rng(s))['image']
           for s in range(8)]
  assert any(np.array_equal(f, image[:, ::-1]) for f in flips)
  assert any(np.array_equal(f, image) for f in flips)


def test_preprocess_names_the_record_or_marks_it_skipped():
  op = transforms.Preprocess((transforms.Resize(4),), 'set X', num_classes=2)
  good = op.random_map({'image': np.zeros((8, 8, 3), np.uint8), 'label': 1, 'index': 3}, None)
  assert good['image'].shape == (4, 4, 3) and good['label'] == 1 and 'index' not in good
  bad = {'image': b'junk', 'label': 1, 'index': 12}
  with pytest.raises(BadRecordError, match=r"set X: record 12: key 'image': cannot decode") as e:
    op.random_map(bad, None)
  # A data fault, told from a checkpoint's by its type (the few-shot CLI blamed --init); raised
  # in a grain worker process it is pickled to the main one, where it was a TypeError.
  again = pickle.loads(pickle.dumps(e.value))
  assert type(again) is BadRecordError and str(again) == str(e.value)
  assert (again.where, again.skippable) == ('set X', True)
  skipping = transforms.Preprocess((), 'set X', num_classes=2, skip_bad=True)
  assert skipping.random_map({**bad, 'label': 5}, None) == {
      'skipped': "set X: record 12: key 'image': cannot decode the image "
                 '(not a recognised image format)'}


def test_pad_crop_is_a_random_translation_within_the_padding():
  image = np.random.default_rng(0).integers(1, 256, (28, 28, 1), dtype=np.uint8)
  padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
  offsets = set()
  for seed in range(40):
    out = transforms.RandomPadCrop(2).random_map({'image': image, 'label': 3},
                                                 np.random.default_rng(seed))
    assert out['image'].shape == image.shape and out['label'] == 3
    found = [(t, l) for t in range(5) for l in range(5)
             if np.array_equal(padded[t:t + 28, l:l + 28], out['image'])]
    assert len(found) == 1
    offsets.add(found[0])
  assert len(offsets) > 15  # Of the 25 offsets in [-2, 2]^2.
