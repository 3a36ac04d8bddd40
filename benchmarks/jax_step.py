"""Our train step, as the trainers run it, for benchmarks/train_step.py.

The step is `vit.training.sharded.jit_train_step` on state from `sharded.create_state`
(sharded init, donated state), with the supervised or MPP objective's own loss: what
`supervised.train` and `mpp.train` execute, minus the input pipeline (the batch is a fixed
device array). Variants change one thing each, to measure what an optimisation gives
(docs/performance.md).
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit import config as config_lib, objective as objective_lib, sharding
from vit.training import optimizers, sharded, step as step_lib

# name -> what it changes. XLA flags are set by the caller before jax is imported.
VARIANTS = {
    'base': 'the trainers\' step',
    'no_donate': 'state not donated (a copy of params and Adam moments every step)',
    'sync_every_step': 'block on every step (what logging each step costs)',
    'einsum_attention': 'two einsums and a softmax instead of jax.nn.dot_product_attention',
    'bf16': 'model.dtype=bfloat16 (params and optimiser state stay float32), attention as '
            'model.attention_kernel=auto picks it (cuDNN on NVIDIA GPUs, else XLA)',
    'bf16_xla': 'bf16 with XLA\'s attention (model.attention_kernel=xla)',
    'bf16_cudnn': 'bf16 with cuDNN fused attention (model.attention_kernel=cudnn; NVIDIA GPUs)',
    'remat': 'model.remat=True (recompute each block in the backward pass)',
    'no_xla_defaults': 'XLA\'s own CPU defaults, without the flags of vit.xla_flags.DEFAULTS',
    'no_heap_trim': 'the heap XLA\'s compiler frees is not handed back (vit.host_memory)',
    'flax_layer_norm': 'flax.linen.LayerNorm (reductions that XLA:CPU runs as reduce-windows) '
                       'instead of vit/models/layer_norm.py (reductions as dots)',
    'corruption_0.75': 'mpp.corruption_rate=0.75 (MPP at MAE\'s masking ratio; the encoder '
                       'still sees every patch)',
    'scan:K': 'K train steps per call: lax.scan of the step over K batches in one jitted, '
              'donated call (Python and dispatch paid once per K steps)',
}


def make_config(shape, variant: str, step: str = 'supervised'):
  """The trainer config of `step` (an objective's name) at `shape` with `variant` applied.

  The objective's section is added before the variant's overrides, so that a variant may set
  a key of it (`corruption_0.75`: mpp.corruption_rate); ValueError when the variant names a
  section `step` does not have.
  """
  config = objective_lib.with_section(config_lib.defaults(), objective_lib.resolve(step))
  config.image_size = shape.image
  config.batch_size = shape.batch
  config.data.channels = shape.channels
  config.model.patches.size = (shape.patch, shape.patch)
  config.model.hidden_size = shape.hidden
  config.model.transformer.num_layers = shape.depth
  config.model.transformer.num_heads = shape.heads
  config.model.transformer.mlp_dim = shape.mlp
  config.model.num_classes = shape.classes
  config.optimizer.weight_decay = 0.1
  config.model.dtype = 'bfloat16' if variant.startswith('bf16') else 'float32'
  config.model.attention_kernel = {'bf16_cudnn': 'cudnn', 'bf16_xla': 'xla'}.get(variant, 'auto')
  config.model.remat = variant == 'remat'
  if variant == 'corruption_0.75':
    if 'mpp' not in config:
      raise ValueError(f'variant corruption_0.75 sets mpp.corruption_rate; step {step!r} has no '
                       'mpp section')
    config.mpp.corruption_rate = 0.75
  return config


class _WithIntermediates:
  """A model whose apply collects 'intermediates': the attention then takes its explicit path."""

  def __init__(self, model):
    self.model = model

  def apply(self, variables, *args, **kwargs):
    out, _ = self.model.apply(variables, *args, mutable=['intermediates'], **kwargs)
    return out

  def __getattr__(self, name):  # init and the hyper-parameters are the model's own.
    return getattr(self.model, name)


def _objective(config, m, step: str, variant: str):
  """(init_params, loss_fn, infer_fn) of the supervised or MPP objective (`step` names it)."""
  obj = objective_lib.resolve(step).build(config, m)
  if variant == 'einsum_attention':
    obj = dataclasses.replace(obj, model=_WithIntermediates(obj.model))
  return obj.init_params, obj.loss, obj.predictions


class JaxStep:
  """The compiled step, its state and a fixed batch; `train(n)` / `infer(n)` time n steps."""

  def __init__(self, shape, step: str, variant: str = 'base'):
    self.steps_per_call = _steps_per_call(variant)
    if variant not in VARIANTS and not variant.startswith('xla:') and not self.steps_per_call:
      raise ValueError(f'unknown variant {variant!r}; known: {", ".join(VARIANTS)}, xla:FLAGS')
    self.variant = variant
    with _layer_norm(variant):  # Everything is traced in here, inference included.
      self._build(shape, step, variant)

  def _build(self, shape, step: str, variant: str) -> None:
    config = make_config(shape, variant, step)
    m = config_lib.validate(config)
    init, loss_fn, infer_fn = _objective(config, m, step, variant)
    self.mesh = sharding.make_mesh(config.mesh)
    tx, schedule = optimizers.build(config.optimizer, config.total_steps)
    task = sharded.Task(init_params=init, loss_fn=loss_fn, train_data=None)
    build, shardings = sharded.create_state(task, tx, config, self.mesh)
    self.state = build()
    rng = np.random.default_rng(0)
    self.batch = jax.device_put(
        {'image': rng.integers(0, 256, (shape.batch, shape.image, shape.image, shape.channels),
                               dtype=np.uint8),
         'label': rng.integers(0, shape.classes, (shape.batch,), dtype=np.int32)},
        sharding.batch_sharding(self.mesh))
    if variant == 'no_donate':
      jitted = jax.jit(step_lib.make_train_step(loss_fn, tx, schedule))
    elif self.steps_per_call:
      one = step_lib.make_train_step(loss_fn, tx, schedule)
      jitted = jax.jit(lambda state, batches: jax.lax.scan(one, state, batches),
                       donate_argnums=0)
      self.batch = jax.tree.map(lambda x: jnp.stack([x] * self.steps_per_call), self.batch)
    else:
      jitted = sharded.jit_train_step(loss_fn, tx, schedule, config, shardings, self.mesh)
    start = time.perf_counter()
    with jax.set_mesh(self.mesh):
      self.jitted = jitted
      self.step = jitted.lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - start
    infer_batch = jax.tree.map(lambda x: x[0], self.batch) if self.steps_per_call else self.batch
    self.infer_fn = jax.jit(infer_fn).lower(self.state.params, infer_batch).compile()
    self.params_count = sum(x.size for x in jax.tree.leaves(self.state.params))

  def info(self) -> dict:
    mem = self.step.memory_analysis()
    peak = None
    if mem is not None:
      # Arguments (the donated state and the batch) live through the step; outputs alias the
      # donated state; temporaries come on top.
      peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
              - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
    return {'params': int(self.params_count), 'compile_s': self.compile_s,
            'step_memory_bytes': peak, 'versions': {'jax': jax.__version__}}

  def peak_device_bytes(self):
    """The allocator's high-water mark on an accelerator; None on CPU (which keeps no stats)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get('peak_bytes_in_use')

  def train(self, n: int) -> float:
    """Seconds for n steps (with K steps per call: for ceil(n / K) calls, scaled to n)."""
    k = self.steps_per_call or 1
    calls = -(-n // k)
    start = time.perf_counter()
    for _ in range(calls):
      self.state, metrics = self.step(self.state, self.batch)
      if self.variant == 'sync_every_step':
        jax.block_until_ready(metrics)
    jax.block_until_ready((self.state, metrics))
    return (time.perf_counter() - start) * n / (calls * k)

  def infer(self, n: int) -> float:
    start = time.perf_counter()
    batch = jax.tree.map(lambda x: x[0], self.batch) if self.steps_per_call else self.batch
    for _ in range(n):
      out = self.infer_fn(self.state.params, batch)
    jax.block_until_ready(out)
    return time.perf_counter() - start


class _FlaxLayerNorm(nn.LayerNorm):
  implementation: Optional[str] = None  # Ours chooses its arithmetic; flax's has only one.


@contextlib.contextmanager
def _layer_norm(variant: str):
  """The model's LayerNorm for this variant: flax's own for 'flax_layer_norm'."""
  if variant != 'flax_layer_norm':
    yield
    return
  from vit.models import vit as vit_model
  ours, vit_model.LayerNorm = vit_model.LayerNorm, _FlaxLayerNorm
  try:
    yield
  finally:
    vit_model.LayerNorm = ours


def _steps_per_call(variant: str) -> int:
  """K of a 'scan:K' variant; 0 for any other."""
  name, _, k = variant.partition(':')
  if name != 'scan':
    return 0
  if not k.isdigit() or int(k) < 1:
    raise ValueError(f'variant {variant!r}: K must be a positive integer, as in scan:4')
  return int(k)


def device_kind() -> str:
  return jax.devices()[0].device_kind


def matmul_gflops(n: int = 2048, repeats: int = 5, dtype: str = 'float32') -> float:
  """Best n x n matmul rate of XLA on this device now: the peak a step is judged by."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32), dtype)
  dot = jax.jit(jnp.dot)
  dot(a, a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best / 1e9
