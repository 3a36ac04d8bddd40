"""TPU pod planning by ahead-of-time compilation: will a config fit a slice, and how fast.

    python -m vit.plan --config configs/mpp/imagenet21k_vit_b16.py --topology v5p:4x4x4 \\
        [--config.x=...]

libtpu describes a pod slice on any host (`jax.experimental.topologies`); the train step that
the trainers run (the same Task pieces, `sharded.create_state`, `sharded.jit_train_step`) is
compiled for it from shapes alone, and XLA's own numbers are reported: HBM per device (arguments,
outputs, temporaries) against the chip's, FLOPs per step, and a roofline step time:
max(FLOPs / peak FLOP/s, HBM bytes / HBM bandwidth) per device. Communication is not in the
roofline, so the step time is a lower bound and the MFU an upper bound.

A fine-tuning config's `config.init` is read as supervised.finetune reads it: the checkpoint is
loaded on this host and its backbone planned with the config's head (its sizes are the
checkpoint's, which such a config leaves unset); a pretraining objective refuses an init, as
its trainer does.

`--search` tries meshes from the least communication to the most and reports the first that
fits: plain data parallelism, then fsdp=2, 4, ... (state split ZeRO-3 style), then the same
with `model.remat=True`; each try is one compile, so a search costs a few.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import flags
from jax.experimental import topologies
from ml_collections import config_flags

from vit import cli, config as config_lib, init_spec, objective as objective_lib, sharding
from vit.errors import UserError
from vit.models import factory
from vit.models.spec import ModelSpec
from vit.training import optimizers, sharded

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip numbers (cloud.google.com/tpu/docs/<version>, "system architecture")."""
  hbm_bytes: int
  peak_bf16_flops: float  # FLOP/s; float32 matmuls run as several bf16 passes, slower.
  hbm_bandwidth: float    # bytes/s


CHIPS = {
    'v4': Chip(32 * GiB, 275e12, 1228e9),
    'v5e': Chip(16 * GiB, 197e12, 819e9),
    'v5p': Chip(95 * GiB, 459e12, 2765e9),
    'v6e': Chip(32 * GiB, 918e12, 1640e9),
}

_CONFIG, _ = cli.define_config_flags(None, workdir=False)
_TOPOLOGY = flags.DEFINE_string('topology', None, 'Required: the TPU slice as VERSION:AxBxC, '
                                'e.g. v5p:4x4x4 (64 chips), v5e:16x16, v4:4x4x4; versions: '
                                + ', '.join(CHIPS))
_OBJECTIVE = flags.DEFINE_string('objective', None,
                                 'The objective whose step to compile: its package (one of '
                                 f'{", ".join(objective_lib.available())}) or module '
                                 '(vit.objective.resolve); default: read from the config, the '
                                 'objective whose section it carries (config.mpp: mpp), '
                                 'supervised for a config of none (a classifier). A config of '
                                 'no section is planned as this objective with its default '
                                 'section; one that carries another objective\'s section is '
                                 'refused.')
_JSON = flags.DEFINE_bool('json', False, 'Print the report as one JSON object.')
_SEARCH = flags.DEFINE_bool('search', False,
                            'Try data parallel, then fsdp=2,4,..., then each with remat, and '
                            'report the first mesh that fits (config.mesh is then ignored).')
_MARKDOWN = flags.DEFINE_bool('markdown', False,
                              'Print the report as a Markdown table row (with its header); '
                              'not with --json.')
# Each is a whole output format: both printed the JSON alone, the row silently dropped.
flags.mark_bool_flags_as_mutual_exclusive(['json', 'markdown'])


def topology_devices(topology: str) -> tuple[list, Chip]:
  """(devices, chip) of a slice described by libtpu, one device per chip; UserError if unknown.

  v4 and v5p run two TensorCores per chip as one device ("megacore"), as on a real pod; hosts
  hold 2x2x1 chips, so the devices carry the process indices of the real slice.
  """
  match = re.fullmatch(r'(v\w+):(\d+(?:x\d+)*)', topology or '')
  if not match or match.group(1) not in CHIPS:
    raise UserError(f'--topology={topology!r}: expected VERSION:AxB[xC] with VERSION one of '
                    f'{", ".join(CHIPS)}, e.g. v5p:4x4x4')
  megacore = match.group(1) in ('v4', 'v5p')
  dims = [int(d) for d in match.group(2).split('x')] + [1, 1]
  per_host = tuple(min(d, h) for d, h in zip(dims, (2, 2, 1)))  # Smaller slices: one host.
  try:
    with _quiet_stderr():
      devices = topologies.get_topology_desc(
          topology, 'tpu', chip_config_name='megacore' if megacore else 'default',
          chips_per_host_bounds=per_host, num_slices=1).devices
  except Exception as e:  # libtpu says INVALID_ARGUMENT for shapes it does not know.
    raise UserError(f'--topology={topology!r}: libtpu cannot describe this slice: '
                    f'{_first_line(str(e))}') from None
  return list(devices), CHIPS[match.group(1)]


@contextlib.contextmanager
def _quiet_stderr():
  """libtpu logs, from C++, that this host is no TPU worker: true and beside the point here."""
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')  # No metadata server to wait for.
  # libtpu locks /tmp/libtpu_lockfile to keep a TPU to one process; compiling touches no
  # TPU, and two plans (or a plan and the tests) may run at once.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, 'w') as null:
      os.dup2(null.fileno(), 2)
      yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def objective_pieces(config, m: ModelSpec, objective: str):
  """(init_params, loss_fn) exactly as the objective's trainer builds its Task.

  `objective` names the package that defines it (`vit.objective.resolve`: 'mpp',
  'supervised', or a module path), so vit/ itself imports no objective.
  """
  obj = objective_lib.resolve(objective).build(config, m)
  return obj.init_params, obj.loss


def compile_step(config, devices, objective: str):
  """The trainers' jitted step, lowered and compiled for `devices`; (compiled, mesh, params)."""
  config = objective_lib.with_section(config, objective_lib.resolve(objective))
  m = config_lib.validate(config, num_devices=len(devices))
  # The target is a TPU, whatever this host is: its attention and LayerNorm, not this host's.
  if m.attention_kernel == 'auto':
    m = m.replace(attention_kernel='xla')
  if m.layer_norm == 'auto':
    m = m.replace(layer_norm=config_lib.layer_norm(m, 'tpu'))
  init_params, loss_fn = objective_pieces(config, m, objective)
  task = sharded.Task(init_params=init_params, loss_fn=loss_fn, train_data=None)
  mesh = sharding.make_mesh(config.mesh, devices)
  tx, schedule = optimizers.build(config.optimizer, config.total_steps)
  make_state, shardings = sharded.create_state(task, tx, config, mesh)
  step = sharded.jit_train_step(loss_fn, tx, schedule, config, shardings, mesh)
  shaped = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
  state = jax.tree.map(shaped, jax.eval_shape(make_state), shardings)
  rows = sharding.batch_sharding(mesh)
  size, channels, batch = config.image_size, config.data.channels, config.batch_size
  # The records every pipeline yields (vit/data): uint8 images, int32 labels.
  batch = {'image': jax.ShapeDtypeStruct((batch, size, size, channels), jnp.uint8, sharding=rows),
           'label': jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=rows)}
  params = sum(x.size for x in jax.tree.leaves(nn.unbox(jax.eval_shape(init_params,
                                                                         jax.random.key(0)))))
  with jax.set_mesh(mesh):
    return step.lower(state, batch).compile(), mesh, params


def with_init(config, objective: str):
  """`config` with the backbone of its config.init written into config.model and the init
  cleared (a copy; `config` itself without one): the model that supervised.finetune trains
  from it, whose sizes the checkpoint gives and a fine-tuning config leaves unset. The
  checkpoint is loaded on this host (vit.init_spec.load). UserError for an init that does not
  load or disagrees with the config (vit.init_spec.adopt_backbone), and for one under an
  objective whose trainer starts from a random initialisation (vit.config.check_no_init), and
  supervised.finetune's for a classifier's config that sets neither an init nor any model size
  (a fine-tuning config without its init; vit.init_spec.require_init)."""
  name = objective_lib.resolve(objective).name
  if not config.get('init'):
    model = config.model
    if name == 'supervised' and all(x is None for x in (
        model.get('name'), model.patches.size, model.hidden_size)):
      init_spec.require_init(config)  # Was: model.patches.size not set, not the real problem.
    return config
  if name != 'supervised':
    config_lib.check_no_init(config, trainer=f'the {name} objective')
  ckpt = init_spec.load_init(config)
  config = config.copy_and_resolve_references()
  init_spec.adopt_backbone(config, ckpt.model, ckpt.channels, config.init)
  config.init = None
  return config


def model_label(config) -> str | None:
  """`model.name`, with the config's own sizes that override the preset (none: the name)."""
  overrides = factory.preset_overrides(config)
  if not overrides:
    return config.model.name
  return f'{config.model.name} with ' + ', '.join(f'{key}={value}' for key, value, _ in overrides)


def plan(config, topology: str, objective: str) -> dict:
  """The report as plain data (see the module docstring); a config.init is read first
  (`with_init`)."""
  config = with_init(config, objective)
  devices, chip = topology_devices(topology)
  hbm, peak, bandwidth = chip.hbm_bytes, chip.peak_bf16_flops, chip.hbm_bandwidth
  report = dict(topology=topology, objective=objective, devices=len(devices),
                model=model_label(config), dtype=config.model.dtype, remat=config.model.remat,
                global_batch=config.batch_size,
                accumulation_steps=config.optimizer.accumulation_steps,
                hbm_per_device_gib=hbm / GiB)
  start = time.perf_counter()
  try:
    compiled, mesh, params = compile_step(config, devices, objective)
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    # XLA refuses to compile a program that cannot fit: that is the answer.
    report.update(fits=False, error=_first_line(str(e)),
                  compile_seconds=time.perf_counter() - start)
    return report
  report['compile_seconds'] = time.perf_counter() - start
  mem = compiled.memory_analysis()
  used = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  flops, moved = _cost(compiled, config, devices, objective)  # Per device.
  compute_s, memory_s = flops / peak, moved / bandwidth
  step_s = max(compute_s, memory_s)
  data_parallel = mesh.shape['data'] * mesh.shape['fsdp']
  report.update(
      mesh=dict(mesh.shape), params=params,
      per_device_micro_batch=config.batch_size // config.optimizer.accumulation_steps
      // data_parallel,
      arguments_gib=mem.argument_size_in_bytes / GiB, outputs_gib=mem.output_size_in_bytes / GiB,
      aliased_gib=mem.alias_size_in_bytes / GiB, temporaries_gib=mem.temp_size_in_bytes / GiB,
      used_gib=used / GiB, fits=used <= hbm,
      flops_per_step=flops * len(devices), hbm_bytes_per_device=moved,
      bound='compute' if compute_s >= memory_s else 'memory',
      step_seconds=step_s, images_per_second=config.batch_size / step_s,
      mfu=compute_s / step_s)
  return report


def candidates(devices: int) -> list[dict]:
  """(mesh, remat) settings in the order a search tries them: least communication first.

  Data parallelism all-reduces the gradients once per step; fsdp=k adds an all-gather of every
  weight (forward and backward) and a reduce-scatter, over k devices; remat recomputes each
  block's forward pass (a third more FLOPs) and is tried only once no mesh fits without it.
  Tensor parallelism is not tried: it only pays once one layer does not fit, beyond ViT-H.
  """
  splits = [k for k in (2 ** i for i in range(devices.bit_length())) if devices % k == 0]
  return [dict(mesh=dict(data=devices // k, fsdp=k, tensor=1), remat=remat)
          for remat in (False, True) for k in splits]


def search(config, topology: str, objective: str, log=None) -> dict:
  """The report of the first candidate that fits, with every try listed under 'search'."""
  config = with_init(config, objective)  # Once: each candidate's plan finds it read.
  devices = len(topology_devices(topology)[0])
  tried, report = [], None
  for candidate in candidates(devices):
    trial = config.copy_and_resolve_references()
    trial.mesh.update(candidate['mesh'])
    trial.model.remat = candidate['remat']
    try:
      report = plan(trial, topology, objective)
    except config_lib.ConfigError as e:  # e.g. a width that fsdp does not divide.
      tried.append(dict(candidate, fits=False, error=str(e)))
      continue
    tried.append(dict(candidate, fits=report['fits'], used_gib=report.get('used_gib'),
                      error=report.get('error')))
    if log:
      log(f'{candidate["mesh"]}, remat={candidate["remat"]}: '
          + (f'{report["used_gib"]:.2f} GiB' if 'used_gib' in report else report['error'])
          + (' fits' if report['fits'] else ' does not fit'))
    if report['fits']:
      return dict(report, search=tried)
  if report is None:
    raise UserError(f'--search: no candidate mesh is valid for this config on {topology} '
                    f'({tried[0]["error"]})')
  return dict(report, search=tried)


MARKDOWN_HEADER = ('| model | objective | slice | mesh (data, fsdp, tensor) | remat | images per '
                   'chip | HBM used per chip | fits | FLOPs per step | roofline step | images/s '
                   '| MFU at most |\n|' + '---|' * 12)


def markdown_row(r: dict) -> str:
  """One line of docs/scaling.md's table."""
  head = (f'| {r["model"] or "custom"} | {r["objective"]} | {r["topology"]} ({r["devices"]} '
          f'chips) |')
  if 'mesh' not in r:
    return head + f' - | {r["remat"]} | - | - | no: {r["error"]} | - | - | - | - |'
  m = r['mesh']
  return head + (
      f' {m["data"]}, {m["fsdp"]}, {m["tensor"]} | {r["remat"]} | {r["per_device_micro_batch"]}'
      f' | {r["used_gib"]:.2f} of {r["hbm_per_device_gib"]:.0f} GiB | '
      f'{"yes" if r["fits"] else "no"} | {r["flops_per_step"]:.2e} | '
      f'{_milliseconds(r["step_seconds"])} ms ({r["bound"]}) | {r["images_per_second"]:,.0f} | '
      f'{r["mfu"]:.0%} |')


def _milliseconds(seconds: float) -> str:
  """Whole milliseconds from 10 ms up (docs/scaling.md's rows), two significant digits below:
  a 0.4 ms step was '0 ms' and a 0.5 ms one '1 ms'."""
  ms = seconds * 1e3
  return f'{ms:.0f}' if ms >= 10 else f'{ms:.2g}'


def _cost(compiled, config, devices, objective: str) -> tuple[float, float]:
  """(FLOPs, HBM bytes) per device per step.

  XLA's cost analysis counts a loop body once, and micro-batches are a lax.scan: with
  accumulation the cost is that of a step on one micro-batch, times the micro-batches (which
  also counts the optimiser update that many times: a few FLOPs per parameter, negligible).
  With model.scan_layers the blocks are a loop too: the cost is read from the same step with
  the blocks unrolled (the same arithmetic; only memory differs, read from `compiled`).
  """
  accum = config.optimizer.accumulation_steps
  if accum > 1 or config.model.get('scan_layers'):
    micro = config.copy_and_resolve_references()
    micro.batch_size //= accum
    micro.optimizer.accumulation_steps = 1
    micro.model.scan_layers = False
    compiled = compile_step(micro, devices, objective)[0]
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops']) * accum, float(cost['bytes accessed']) * accum


def _count(params: int) -> str:
  """'86.6M', '31.5k' or '840': a tiny model's count is not rounded to '0.0M'."""
  if params >= 1e6:
    return f'{params / 1e6:.1f}M'
  return f'{params / 1e3:.1f}k' if params >= 1e3 else str(params)


def _first_line(text: str) -> str:
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  return next((l for l in lines if 'memory' in l.lower()), lines[0] if lines else text)


def format_report(r: dict) -> str:
  """The text report of a `plan` or `search` result `r`: the slice, objective, model and batch;
  then the mesh, HBM per device and the roofline step time, or DOES NOT FIT and the error when
  no mesh compiled."""
  head = (f'{r["topology"]}: {r["devices"]} chips, {r["hbm_per_device_gib"]:.1f} GiB HBM '
          f'each; {r["objective"]} '
          f'{r["model"] or "custom model"} ({r["dtype"]}, remat={r["remat"]}), global batch '
          f'{r["global_batch"]} in {r["accumulation_steps"]} micro-batch(es)')
  if 'mesh' not in r:
    return f'{head}\nDOES NOT FIT: {r["error"]}'
  return '\n'.join([
      head,
      f'mesh {r["mesh"]}, {r["per_device_micro_batch"]} images per device per micro-batch, '
      f'{_count(r["params"])} parameters',
      f'HBM per device: arguments {r["arguments_gib"]:.2f} GiB, outputs '
      f'{r["outputs_gib"]:.2f} GiB ({r["aliased_gib"]:.2f} aliased to arguments), '
      f'temporaries {r["temporaries_gib"]:.2f} GiB -> {r["used_gib"]:.2f} of '
      f'{r["hbm_per_device_gib"]:.1f} GiB: {"fits" if r["fits"] else "DOES NOT FIT"}',
      f'FLOPs per step {r["flops_per_step"]:.3e}; roofline ({r["bound"]}-bound, no '
      f'communication): {r["step_seconds"] * 1e3:.1f} ms per step, '
      f'{r["images_per_second"]:.0f} images/s, MFU <= {r["mfu"]:.0%}',
  ])


def config_objective(config, source: str) -> str:
  """The objective a config trains, read from its contents, wherever the file lies: the one
  whose section it carries (config.mpp: 'mpp'; vit.config.sections), 'supervised' for a
  classifier's config, which carries none and sets config.model.num_classes.

  Raises UserError, one line naming `source` (the config file) and the keys looked for, for a
  config without the keys of vit.config.defaults() (a study's, say), one with several sections,
  or one with none and no config.model.num_classes (neither a pretraining nor a
  classification config: --objective says which to plan).
  """
  config_lib.check_core_keys(config, source=source)
  found = sorted(config_lib.sections(config))
  if len(found) > 1:
    raise UserError(f'--config {source}: carries config.{found[0]} and config.{found[1]}, the '
                    'sections of two objectives; keep one, or pass --objective')
  if found:
    return found[0]
  if config.model.get('num_classes') is None:
    sectioned = [name for name in objective_lib.available()
                 if objective_lib.resolve(name).section is not None]
    raise UserError(f'--config {source}: no objective section (config.'
                    f'{", config.".join(sectioned)}) and no config.model.num_classes for a '
                    'classifier, so no objective to plan; add one, or pass --objective')
  return 'supervised'


def check_objective(name: str, config=None, source: str = '--config') -> None:
  """UserError listing the objectives (vit.objective.available) when `name` names none, and,
  given the `config` (read from the file `source`), the trainers' one line when it carries
  another objective's section (vit.config.check_objective): that section would be ignored and
  the objective planned with its defaults. A config with no section is planned with the
  objective's defaults (a classifier's config as MPP, say)."""
  try:
    definition = objective_lib.resolve(name)
  except ValueError:
    raise UserError(f'--objective {name}: no such objective; one of '
                    f'{", ".join(objective_lib.available())} (or a module that defines one, '
                    f'vit.objective.resolve)') from None
  if config is not None and config_lib.sections(config):
    config_lib.check_objective(config, definition, source=source,
                               trainer=f'vit.plan --objective {name}',
                               hint='drop --objective to plan the objective of the config')


def main(argv):
  """`python -m vit.plan --config FILE --topology VERSION:AxBxC`: plans the config on the slice
  and prints the report (text, --json or a --markdown row); --search tries meshes until one
  fits. A user error (a word after the flags among them) is one line and exit status 2."""
  del argv  # A word after the flags: refused by vit.cli.run.
  # vit.cli.run turns on JAX's persistent compilation cache, but a step compiled for a slice
  # described by libtpu (no TPU client) is written there and cannot be read back: the next
  # plan of the same config warned 'Error reading persistent compilation cache entry'.
  # Before the first compile: JAX decides once per process whether the cache is used.
  jax.config.update('jax_enable_compilation_cache', False)
  if _TOPOLOGY.value is None:
    raise UserError('--topology is required, e.g. --topology v5p:4x4x4')
  path = config_flags.get_config_filename(flags.FLAGS['config'])
  objective = _OBJECTIVE.value or config_objective(_CONFIG.value, path)
  check_objective(objective, _CONFIG.value, path)
  if _SEARCH.value:
    report = search(_CONFIG.value, _TOPOLOGY.value, objective,
                    log=lambda line: print(line, file=sys.stderr, flush=True))
  else:
    report = plan(_CONFIG.value, _TOPOLOGY.value, objective)
  if _JSON.value:
    print(json.dumps(report))
  elif _MARKDOWN.value:
    print(MARKDOWN_HEADER + '\n' + markdown_row(report))
  else:
    print(format_report(report))


if __name__ == '__main__':
  cli.run(main)
