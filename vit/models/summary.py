"""Parameter table, parameter count and FLOPs of a model, without allocating it.

  python -m vit.models.summary --model ViT-B/16 --num_classes 1000 [--image_size 384]
"""
from __future__ import annotations

import collections
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import flags

from vit import cli, config as config_lib
from vit.errors import ConfigError, UserError
from vit.models import presets

_MODEL = flags.DEFINE_string('model', 'ViT-B/16',
                             f'Preset name, one of {", ".join(presets.PRESETS)}.')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 1000, 'Classes of the head (0: no head).',
                                    lower_bound=0)
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Square input resolution in pixels.',
                                   lower_bound=1)
_REPRESENTATION = flags.DEFINE_integer('representation_size', None,
                                       'Width of the pre-logits layer (none by default).',
                                       lower_bound=1)
_DEPTH = flags.DEFINE_integer('depth', 2, 'Module nesting shown in the table.', lower_bound=1)
# The config key each flag sets, so that a refusal names the flag the user typed.
_FLAGS_OF_KEYS = {'model.name': _MODEL, 'model.num_classes': _NUM_CLASSES,
                  'model.representation_size': _REPRESENTATION, 'image_size': _IMAGE_SIZE}


def abstract_params(model: nn.Module, image_size: int, channels: int = 3):
  """The unboxed parameter tree of `model`, jax.ShapeDtypeStruct leaves, for square images of
  `image_size` pixels and `channels` channels (jax.eval_shape: nothing allocated)."""
  images = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  return nn.unbox(variables['params'])


def count(params) -> int:
  """The number of parameters: the sum of the leaves' sizes."""
  return sum(x.size for x in jax.tree.leaves(params))


def module_table(params, depth: int) -> list[tuple[str, int]]:
  """(module path truncated to `depth`, parameter count), ordered by path with numbers compared
  as numbers (encoderblock_2 before encoderblock_10)."""
  totals: dict[str, int] = collections.OrderedDict()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    names = [str(k.key) for k in path]
    module = '/'.join((names[:-1] or names)[:depth])  # A module, not its kernel/bias leaves.
    totals[module] = totals.get(module, 0) + leaf.size
  natural = lambda name: [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name)]
  return sorted(totals.items(), key=lambda row: natural(row[0]))


def forward_flops(model: nn.Module, params, image_size: int, channels: int = 3) -> float:
  """XLA's count of floating-point operations for one image's forward pass (a multiply-add
  counts as 2), from the lowered, uncompiled program: nothing is allocated."""
  images = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
  lowered = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False)).lower(params, images)
  return float(lowered.cost_analysis()['flops'])


def validated_config():
  """(config, ModelSpec) of the flags, through `vit.config.validate`.

  Raises UserError '--FLAG=VALUE: PROBLEM' naming the flag, not the config key it sets
  (`config.image_size=30` was the line for --image_size=30), for what validate refuses."""
  config = config_lib.defaults()
  config.model.name = _MODEL.value
  config.model.num_classes = _NUM_CLASSES.value or None
  config.model.representation_size = _REPRESENTATION.value
  config.image_size = _IMAGE_SIZE.value
  try:
    return config, config_lib.validate(config, num_devices=1)
  except ConfigError as e:
    flag = _FLAGS_OF_KEYS.get(e.key)
    if flag is None:
      raise
    raise UserError(f'--{flag.name}={flag.value}: {e.problem}') from None


def main(argv):
  """`python -m vit.models.summary`: prints a preset's parameters per module, the total, its
  patch grid and its forward GFLOPs per image. A model that `vit.config.validate` refuses is
  one line naming the flag, and exit status 2, as is a word after the flags."""
  del argv  # A word after the flags: refused by vit.cli.run.
  config, m = validated_config()
  model = config_lib.build_model(m)
  params = abstract_params(model, config.image_size)
  rows = module_table(params, _DEPTH.value)
  width = max(len(name) for name, _ in rows)
  print(f'{"module":<{width}}  {"parameters":>14}')
  for name, n in rows:
    print(f'{name:<{width}}  {n:>14,}')
  total = count(params)
  grid = config_lib.token_grid(config, m)
  print(f'{"total":<{width}}  {total:>14,}')
  print(f'model {_MODEL.value} at {config.image_size}px: {grid[0]}x{grid[1]} patches, '
        f'{total:,} parameters, '
        f'{forward_flops(model, params, config.image_size) / 1e9:.2f} GFLOPs per image (forward)')


if __name__ == '__main__':
  cli.run(main)
