"""The features of the tiny TFDS datasets that tests build in a temporary directory: images
with an `id`, so that a decoded record names the example it came from."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds


def info(builder: tfds.core.DatasetBuilder, classes: Optional[Sequence[str]] = None
         ) -> tfds.core.DatasetInfo:
  """What a test builder's `_info` returns: 'image' (uint8 [H, W, 3] of any size, encoded as
  PNG, so a pixel value comes back exactly), 'label' (a ClassLabel of `classes`, or a plain
  int64 when None, which also writes a label no class names) and 'id' (int64)."""
  label = tfds.features.ClassLabel(names=list(classes)) if classes is not None else (
      tfds.features.Scalar(np.int64))
  return tfds.core.DatasetInfo(builder=builder, features=tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(None, None, 3)), 'label': label,
      'id': tfds.features.Scalar(np.int64)}))
