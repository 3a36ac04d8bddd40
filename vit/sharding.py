"""Device mesh, logical-axis rules and the shardings of parameters and batches.

The model names logical axes only (vit/models/vit.py); this table is the one place that maps
them onto mesh axes: weights are split along `embed` over fsdp (ZeRO-3 style) and along the
MLP and head dimensions over tensor (Megatron style); the batch over data and fsdp.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vit.errors import ConfigError

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')

LOGICAL_RULES = (
    ('batch', BATCH_AXES),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv', None),
    ('classes', None),
    ('tokens', None),
    ('channels', None),
)


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """Axis sizes from `config.mesh`; at most one axis may be -1 (the devices left over).
  ConfigError naming the mesh key that does not fit the devices or the processes."""
  sizes = _sizes(mesh_config, num_devices)
  rows, processes = sizes['data'] * sizes['fsdp'], jax.process_count()
  if processes > 1 and rows % processes:
    # Each process feeds rows of its own (vit/data/pipeline.py), so the batch must be split
    # at least once per process.
    raise ConfigError('mesh', dict(sizes), f'splits the batch {rows} ways (data x fsdp), '
                      f'not a multiple of the {processes} processes')
  return tuple(sizes[a] for a in MESH_AXES)


def batch_shards(mesh_config: ml_collections.ConfigDict, num_devices: int) -> int:
  """The devices a batch's rows are split over (data x fsdp) on `num_devices`; starts no JAX
  backend (config validation runs before the platform is chosen). ConfigError as
  `mesh_shape`'s for a mesh that does not fit the devices."""
  sizes = _sizes(mesh_config, num_devices)
  return sizes['data'] * sizes['fsdp']


def _sizes(mesh_config: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
  sizes = {a: int(mesh_config[a]) for a in MESH_AXES}
  unknown = set(mesh_config.keys()) - set(MESH_AXES)
  if unknown:
    raise ConfigError(f'mesh.{sorted(unknown)[0]}', None, f'mesh axes are {MESH_AXES}')
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ConfigError(f'mesh.{free[1]}', -1, 'only one mesh axis may be -1')
  for a, s in sizes.items():
    if s == 0 or s < -1:
      raise ConfigError(f'mesh.{a}', s, 'must be a positive size or -1')
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if num_devices % fixed:
      raise ConfigError('mesh', dict(sizes), f'fixed axes ({fixed}) do not divide the '
                        f'{num_devices} devices')
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ConfigError('mesh', dict(sizes),
                      f'has {math.prod(sizes.values())} devices but there are {num_devices}')
  return sizes


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
  """The mesh of `config.mesh` over `devices` (default: all), axes MESH_AXES of Auto type;
  ConfigError naming the mesh key that does not fit the devices (`mesh_shape`)."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  # Auto axes: shardings are stated on inputs and outputs and XLA propagates them inside.
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, devices=devices, axis_types=auto)


def logical_shardings(boxed_tree: Any, mesh: Mesh) -> Any:
  """NamedShardings for a tree whose leaves may be `nn.LogicallyPartitioned`."""
  specs = nn.get_partition_spec(boxed_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)
  _check_divisible(nn.unbox(boxed_tree), shardings, mesh)
  return shardings


def _check_divisible(shapes: Any, shardings: Any, mesh: Mesh) -> None:
  """jit refuses a dimension its mesh axes do not divide; say which parameter and axis."""
  for (path, leaf), s in zip(jax.tree_util.tree_leaves_with_path(shapes),
                             jax.tree.leaves(shardings)):
    for size, axes in zip(leaf.shape, s.spec):
      axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
      ways = math.prod(mesh.shape[a] for a in axes)
      if size % ways:
        name = '/'.join(_names(path))
        raise ConfigError(f'mesh.{axes[-1]}', mesh.shape[axes[-1]],
                          f'{name} has a dimension of {size} split over mesh axes {axes} '
                          f'({ways} ways), which does not divide it')


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """A batch's sharding: its leading (batch) dimension split over the data and fsdp axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  """A whole copy on every device of `mesh`."""
  return NamedSharding(mesh, P())


def like_params(tree: Any, params: Any, params_shardings: Any, mesh: Mesh) -> Any:
  """Shardings for a tree (an optimiser state) whose param-shaped subtrees follow the params.

  optax states hold copies of the parameter tree (Adam's mu and nu): a leaf whose key path ends
  with a parameter's path, and has its shape, gets that parameter's sharding; others replicate.
  """
  by_path = {}
  for (path, p), s in zip(jax.tree_util.tree_leaves_with_path(params),
                          jax.tree.leaves(params_shardings)):
    by_path[_names(path)] = (p.shape, s)

  def pick(path, leaf):
    names = _names(path)
    for start in range(len(names)):
      shape, sharding = by_path.get(names[start:], (None, None))
      if sharding is not None and shape == getattr(leaf, 'shape', None):
        return sharding
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(pick, tree)


def _names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Each process's rows -> one global jax.Array per key, sharded over data and fsdp."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
