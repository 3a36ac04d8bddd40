"""Does cuDNN's fused attention compute what XLA's does? (`model.attention_kernel`, NVIDIA GPUs)

    python -m benchmarks.attention_kernels [--model ViT-B/16] [--image 224] [--batch 8]

Builds the model twice in bfloat16, with `attention_kernel='xla'` and `'cudnn'` (same
parameters), and prints as JSON the largest differences of the encoded tokens and of the
gradient of a loss on them, each relative to the largest magnitude of the XLA result.
bfloat16 keeps 8 bits of mantissa, so agreement is about 1e-2, not 1e-6. Run it before timing
`--variants=bf16_cudnn`.
"""
from __future__ import annotations

import argparse
import json

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit import config as config_lib


def compare(model_name: str, image: int, batch: int) -> dict:
  config = config_lib.defaults()
  config.image_size = image
  config.model.name = model_name
  config.model.dtype = 'bfloat16'
  models = {}
  for kernel in ('xla', 'cudnn'):
    config.model.attention_kernel = kernel
    models[kernel] = config_lib.build_model(config_lib.validate(config, num_devices=1),
                                            num_classes=None, classifier='unpooled')
  images = jax.random.uniform(jax.random.key(0), (batch, image, image, 3), minval=-1, maxval=1)
  params = nn.unbox(models['xla'].init(jax.random.key(1), images[:1], train=False)['params'])

  def loss(params, model):
    encoded = model.apply({'params': params}, images, train=False).astype(jnp.float32)
    return jnp.mean(jnp.square(encoded)), encoded

  out = {}
  for kernel, model in models.items():
    grad_fn = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    grads, encoded = grad_fn(params, model)
    out[kernel] = (encoded, jnp.concatenate([g.ravel().astype(jnp.float32)
                                            for g in jax.tree.leaves(grads)]))
  rel = lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
  return {'model': model_name, 'image': image, 'batch': batch,
          'device': jax.devices()[0].device_kind,
          'encoded_max_rel_diff': rel(out['xla'][0], out['cudnn'][0]),
          'grads_max_rel_diff': rel(out['xla'][1], out['cudnn'][1])}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--model', default='ViT-B/16')
  p.add_argument('--image', type=int, default=224)
  p.add_argument('--batch', type=int, default=8)
  args = p.parse_args(argv)
  print(json.dumps(compare(args.model, args.image, args.batch)))


if __name__ == '__main__':
  main()
