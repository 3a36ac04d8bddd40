"""Input pipeline throughput, as JSON: is the data ever the bottleneck of a CPU training step?

  python -m benchmarks.input_pipeline [--workers=0,1,2] [--images=256] [--batches=20]

Measures the training pipeline (`vit.data.pipeline.train_dataset`, images/s of finished
per-process batches after a warm-up batch) on
  * Fashion-MNIST (28 px, the embedded data; grayscale -> RGB, no resize), and
  * a 224-px JPEG ArrayRecord dataset this script writes with `vit.data.prepare` (smooth
    synthetic photographs of ~10-20 KB each; Inception crop + flip to 224, as in pretraining),
at each worker count; then the images/s of the real CPU train step (ViT-Ti/16 at 224, batch 8,
Adam, the supervised objective's loss as `vit.training.loop` compiles it) and each pipeline's
ratio to it. The issue's goal is a ratio of at least 5.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

import numpy as np
from absl import logging
from PIL import Image

if __package__ in (None, ''):  # Run by its path: make the repository importable.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import train_step  # noqa: E402


def synthetic_photo(rng: np.random.Generator, size: int = 224) -> Image.Image:
  """Low-frequency colour fields plus mild noise: JPEG sizes like natural photographs'."""
  coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
  image = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.float32)
  image += rng.normal(0, 6, image.shape)
  return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def write_jpeg_set(root: str, count: int) -> str:
  from vit.data import prepare
  rng = np.random.default_rng(0)
  folder = os.path.join(root, 'images')
  for i in range(count):
    os.makedirs(os.path.join(folder, f'class_{i % 10}'), exist_ok=True)
    synthetic_photo(rng).save(os.path.join(folder, f'class_{i % 10}', f'{i}.jpg'), quality=90)
  out = os.path.join(root, 'array_record')
  with contextlib.redirect_stdout(sys.stderr):  # Keep stdout for the JSON.
    prepare.prepare(f'folder:{folder}', out)
  return out


def pipeline_rate(config, batches: int) -> float:
  from vit.data import pipeline
  iterator = iter(pipeline.train_dataset(config))
  first = next(iterator)  # Worker start-up and the first fill are not throughput.
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  elapsed = time.perf_counter() - start
  if hasattr(iterator, 'close'):
    iterator.close()
  return batches * len(first['label']) / elapsed


def base_config(image_size: int, batch: int, **data):
  from vit import config as config_lib
  config = config_lib.defaults()
  config.image_size, config.batch_size, config.model.num_classes = image_size, batch, 10
  for key, value in data.items():
    config.data[key] = value
  return config


def train_step_rate(steps: int, batch: int = 8) -> float:
  """Images/s of the shared loop's jitted step for ViT-Ti/16 at 224 on this machine's CPU."""
  import jax
  from vit import config as config_lib, objective as objective_lib, sharding
  from vit.training import loop, optimizers
  config = base_config(224, batch)
  config.model.name, config.model.num_classes = 'ViT-Ti/16', 1000
  m = config_lib.validate(config)
  obj = objective_lib.resolve('supervised').build(config, m)  # As benchmarks/jax_step.py.
  task = loop.Task(init_params=obj.init_params, loss_fn=obj.loss, train_data=None)
  mesh = sharding.make_mesh(config.mesh)
  tx, schedule = optimizers.build(config.optimizer, config.total_steps)
  build, shardings = loop.create_state(task, tx, config, mesh)
  rng = np.random.default_rng(0)
  batch_np = {'image': rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8),
              'label': rng.integers(0, 1000, (batch,), dtype=np.int32)}
  with jax.set_mesh(mesh):
    state = build()
    step = loop.jit_train_step(task.loss_fn, tx, schedule, config, shardings, mesh)
    device_batch = sharding.global_batch(batch_np, mesh)
    state, metrics = step(state, device_batch)  # Compilation.
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, device_batch)
    jax.block_until_ready(metrics)
  return steps * batch / (time.perf_counter() - start)


def worker_counts(text: str) -> list[int]:
  """An argparse type: comma-separated grain worker counts, each >= 0 (0: in this process)."""
  try:
    return [train_step.non_negative(w) for w in text.split(',')]
  except argparse.ArgumentTypeError:
    raise argparse.ArgumentTypeError(
        f'expected comma-separated integers >= 0, got {text!r}') from None


def parse_args(argv=None):
  """Every count checked here, before the JPEG set is written or a worker started: 0 images left
  `prepare` an empty folder to fail on, -1 workers reached grain as a ConfigError, and 0 timed
  batches gave 0 images/s as if measured."""
  p = train_step.parser(__doc__, 'benchmarks.input_pipeline', results='docs/guides/data.md')
  p.add_argument('--workers', type=worker_counts, default=[0, 1, 2],
                 help='grain worker counts to measure (default: 0,1,2)')
  p.add_argument('--images', type=train_step.positive, default=256,
                 help='JPEG images to write for the 224-px set (default: 256)')
  p.add_argument('--batches', type=train_step.positive, default=20,
                 help='timed batches per measurement (default: 20)')
  p.add_argument('--train_steps', type=train_step.non_negative, default=3,
                 help='timed ViT-Ti/16 steps; 0 skips the step (default: 3)')
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  logging.set_verbosity(logging.WARNING)  # TFDS logs every dataset_info.json it reads.
  workers = args.workers
  results = {'cpu_count': os.cpu_count(), 'load_average_1m': os.getloadavg()[0],
             'fashion_mnist_28px': {}, 'jpeg_224px_inception_crop': {}}
  for w in workers:
    config = base_config(28, 128, worker_count=w)
    results['fashion_mnist_28px'][f'workers_{w}'] = round(pipeline_rate(config, args.batches), 1)
  with tempfile.TemporaryDirectory() as root:
    directory = write_jpeg_set(root, args.images)
    for w in workers:
      config = base_config(224, 32, source=f'array_record:{directory}', inception_crop=True,
                           flip=True, worker_count=w)
      rate = pipeline_rate(config, args.batches)
      results['jpeg_224px_inception_crop'][f'workers_{w}'] = round(rate, 1)
  if args.train_steps > 0:
    step = train_step_rate(args.train_steps)
    results['vit_ti16_224_cpu_train_step_images_per_s'] = round(step, 2)
    results['ratio_to_train_step'] = {
        name: {k: round(v / step, 1) for k, v in rates.items()}
        for name, rates in results.items() if name.endswith(('28px', 'inception_crop'))}
  print(json.dumps(results, indent=2))


if __name__ == '__main__':
  main()
