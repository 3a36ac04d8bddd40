"""One process among many: `jax.distributed` from flags, the environment or the cluster.

`initialize()` must run before anything touches a jax backend; vit/cli.py `run` calls it for
every entry point, so each trainer is multi-host without code of its own.

- TPU pod slice: every worker runs the same command; JAX reads the coordinator, the process
  count and this worker's id from the TPU metadata.
- SLURM or Open MPI jobs with several tasks: JAX reads them from the scheduler's variables.
- Anything else (several GPU machines, two CPU processes on one host): --coordinator_address
  HOST:PORT --num_processes N --process_id I, or the variables JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID. Flags win over the environment.

CPU processes exchange data over gloo; the other platforms bring their own collectives.
"""
from __future__ import annotations

import glob
import importlib.metadata
import os
from typing import Optional

import jax
from absl import flags

from vit.errors import UserError

_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'HOST:PORT of process 0, for multi-process runs outside a '
    'TPU pod or a SLURM/MPI job (env JAX_COORDINATOR_ADDRESS).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'How many processes take part (env JAX_NUM_PROCESSES).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, "This process's index in [0, num_processes) (env JAX_PROCESS_ID).")


def on_tpu_host() -> bool:
  """TPU chips are visible to this machine (the device files libtpu opens)."""
  return bool(glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'))


def _gpu_plugin_installed() -> bool:
  names = (d.metadata['Name'] or '' for d in importlib.metadata.distributions())
  return any(n.lower().replace('_', '-').startswith(('jax-cuda', 'jax-rocm')) for n in names)


def choose_platform() -> None:
  """Without TPU chips or a GPU plugin, run on the CPU without asking libtpu first.

  libtpu is installed for vit.plan; left alone it probes for TPU metadata at every start
  (seconds, and lines of warnings) before JAX falls back to the CPU. An explicit
  JAX_PLATFORMS is always obeyed.
  """
  if os.environ.get('JAX_PLATFORMS') or jax.config.jax_platforms:
    return
  if not on_tpu_host() and not _gpu_plugin_installed():
    jax.config.update('jax_platforms', 'cpu')


def _setting(flag, env: str, cast):
  if flags.FLAGS.is_parsed() and flag.value is not None:  # Library use: no flags parsed.
    return flag.value
  value = os.environ.get(env)
  if value in (None, ''):
    return None
  try:
    return cast(value)
  except ValueError:
    raise UserError(f'{env}={value!r}: not a valid value') from None


def _managed_cluster() -> bool:
  """A scheduler JAX knows how to read started several tasks."""
  def count(name):
    try:
      return int(os.environ.get(name, '1'))
    except ValueError:
      return 1
  return (count('SLURM_NTASKS') > 1 and 'SLURM_JOB_ID' in os.environ) or \
      count('OMPI_COMM_WORLD_SIZE') > 1


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
  """Joins the job described by the arguments, the flags or the environment, if any."""
  choose_platform()
  if jax.distributed.is_initialized():
    return
  address = coordinator_address or _setting(_COORDINATOR, 'JAX_COORDINATOR_ADDRESS', str)
  count = num_processes if num_processes is not None else _setting(
      _NUM_PROCESSES, 'JAX_NUM_PROCESSES', int)
  index = process_id if process_id is not None else _setting(
      _PROCESS_ID, 'JAX_PROCESS_ID', int)
  if count is not None or index is not None:
    _check(address, count, index)
    if count == 1:
      return
    # Harmless on GPU and TPU hosts: it only concerns arrays on the CPU backend.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(address, count, index)
  elif on_tpu_host() or _managed_cluster():
    jax.distributed.initialize()


def _check(address, count, index) -> None:
  if count is None or index is None:
    raise UserError('--num_processes and --process_id go together (or JAX_NUM_PROCESSES and '
                    'JAX_PROCESS_ID); set both')
  if count < 1:
    raise UserError(f'--num_processes={count}: must be at least 1')
  if not 0 <= index < count:
    raise UserError(f'--process_id={index}: must be in [0, {count}) for --num_processes={count}')
  if count > 1 and (not address or ':' not in address):
    raise UserError(f'--coordinator_address={address!r}: set HOST:PORT of process 0 for a '
                    f'{count}-process run')
