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
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks import train_step
from vit import config as config_lib
from vit.errors import UserError


def specs(model_name: str, image: int) -> dict:
  """The encoder's validated ModelSpec in bfloat16 for each attention kernel: {'xla': spec,
  'cudnn': spec}. Starts no JAX backend. Raises UserError (vit.errors) for an unknown preset
  or an image its patch does not divide."""
  config = config_lib.defaults()
  config.image_size = image
  config.model.name = model_name
  config.model.dtype = 'bfloat16'
  out = {}
  for kernel in ('xla', 'cudnn'):
    config.model.attention_kernel = kernel
    out[kernel] = config_lib.validate(config, num_devices=1)
  return out


def compare(model_name: str, image: int, batch: int) -> dict:
  models = {kernel: config_lib.build_model(spec, num_classes=None, classifier='unpooled')
            for kernel, spec in specs(model_name, image).items()}
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


def _no_cudnn_reason() -> str | None:
  """Why cuDNN's kernel cannot run here (no CUDA backend starts), or None when it can. Asks
  for CUDA alone unless JAX_PLATFORMS is set, so that a CPU host with libtpu installed does
  not probe for a TPU first (pages of libtpu's log)."""
  platforms = train_step.jax_platforms('gpu')
  jax.config.update('jax_platforms', platforms)  # The environment was read at import.
  try:
    backend = jax.default_backend()
  except Exception as e:  # JAX 0.10 raises a bare AssertionError without the CUDA plugin.
    return (str(e).strip() and f'no JAX backend could start: {e}'
            or train_step.no_backend(platforms, type(e).__name__))
  if backend != 'gpu':
    return f'cuDNN attention needs an NVIDIA GPU; JAX\'s backend here is {backend}'
  return None


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--model', default='ViT-B/16', help='a preset name (default: ViT-B/16)')
  p.add_argument('--image', type=train_step.positive, default=224,
                 help='image side in pixels (default: 224)')
  p.add_argument('--batch', type=train_step.positive, default=8, help='images (default: 8)')
  args = p.parse_args(argv)
  try:
    specs(args.model, args.image)  # The flags' mistakes first, on any machine.
  except UserError as e:
    p.error(str(e))
  reason = _no_cudnn_reason()
  if reason:
    print(f'error: {reason}', file=sys.stderr)
    sys.exit(2)
  print(json.dumps(compare(args.model, args.image, args.batch)))


if __name__ == '__main__':
  main()
