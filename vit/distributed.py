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

import atexit
import errno
import glob
import importlib.metadata
import os
import re
import socket
import sys
import threading
import time
from typing import Optional

import jax
from absl import flags
# The coordination service's client, which jax does not export (as in vit/save_barrier.py).
from jax._src import distributed as jax_distributed

from vit.errors import UserError

_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'HOST:PORT of process 0, for multi-process runs outside a '
    'TPU pod or a SLURM/MPI job (env JAX_COORDINATOR_ADDRESS).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'How many processes take part (env JAX_NUM_PROCESSES).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, "This process's index in [0, num_processes) (env JAX_PROCESS_ID).")
_LOST_AFTER = flags.DEFINE_float(
    'lost_process_after', 60.0, 'In a multi-process job: seconds without a sign of life from '
    'another process before this one stops with one line naming it (0: never; jax\'s own '
    'heartbeat timeout then aborts the job).')
# Shown by every trainer's --help (vit.cli.define_config_flags with an objective).
FLAG_NAMES = ('coordinator_address', 'num_processes', 'process_id', 'lost_process_after')


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
    _join(address, count, index)
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
  port = _port(address)
  if count > 1 and (not address or ':' not in address or port is None):
    raise UserError(f'--coordinator_address={address!r}: set HOST:PORT of process 0 for a '
                    f'{count}-process run')
  if count > 1 and not (port.isdigit() and 1 <= int(port) <= 65535):
    # jax would raise a traceback ('Failed to start RPC server') or wait without a word.
    raise UserError(f'--coordinator_address={address!r}: the port {port!r} is not a number in '
                    '[1, 65535]')


def _port(address: Optional[str]) -> Optional[str]:
  """The PORT of a 'HOST:PORT' coordinator address as written, unchecked: what follows its last
  ':' (an IPv6 '[::1]:1234' has colons in its host); '' for no address, None for a bracketed
  IPv6 host with no port ('[::1]': its last ':' is the host's, '1]' no port)."""
  if not address:
    return ''
  port = address.rpartition(':')[2]
  return None if ']' in port else port


# How long the processes of a job wait for each other to join. jax's own limit (300 s by
# default) ends every waiting process in an abort with a C++ stack dump; ours comes first, as
# one line, and jax's is set later so that it never fires.
_JOIN_S = 300.0


def _port_taken(port: int) -> Optional[str]:
  """Why the coordinator could not bind `port` on every address, as jax's server does ('[::]'
  with SO_REUSEPORT, so a port a launcher holds for it the same way stays usable), or None."""
  for family, host in ((socket.AF_INET6, '::'), (socket.AF_INET, '0.0.0.0')):
    try:
      probe = socket.socket(family, socket.SOCK_STREAM)
    except OSError:  # No IPv6 on this host: try IPv4 alone.
      continue
    with probe:
      probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
      try:
        probe.bind((host, port))
      except OSError as e:
        return 'in use by another program' if e.errno == errno.EADDRINUSE else e.strerror
    return None
  return None


def _join(address: str, count: int, index: int) -> None:
  """jax.distributed.initialize, with its failures as one line and exit 2 (`exit_now`): a
  coordinator port already taken (process 0), or processes that did not all join within
  `_JOIN_S` (a process not started, or started with another --coordinator_address or
  --num_processes)."""
  if index == 0 and not os.environ.get('JAX_COORDINATOR_BIND_ADDRESS'):
    port = _port(address)  # A number in [1, 65535]: _check came first.
    taken = _port_taken(int(port))
    if taken:  # jax's server would fail on it with a traceback, or crash (SIGSEGV) now and then.
      exit_now(f'--coordinator_address={address}: process 0 cannot start the coordinator there '
               f'(port {port}: {taken}); give every process another port')
  joined = threading.Event()

  def give_up():
    if not joined.wait(_JOIN_S):
      exit_now(f'--coordinator_address={address}: the {count} processes of this job did not all '
               f'join within {_JOIN_S:.0f} s (this is process {index}); start every process '
               'with the same --coordinator_address and --num_processes')

  threading.Thread(target=give_up, name='vit-join-timeout', daemon=True).start()
  try:
    jax.distributed.initialize(address, count, index,
                               initialization_timeout=int(_JOIN_S) + 60)
  except Exception as e:  # E.g. the port was taken after _port_taken looked.
    # Not a UserError: Python's exit after this half-made start crashes now and then (SIGSEGV).
    said = ' '.join(str(e).split())[:200]
    exit_now(f'--coordinator_address={address}: process {index} could not join the job there '
             f'({said})' if index else
             f'--coordinator_address={address}: process 0 could not start the coordinator there '
             f'({said}); is the port taken by another job? give every process another port')
  finally:
    joined.set()


# What gloo and the coordination service say when a process of the job is gone (killed, crashed,
# its machine lost): its sockets closed under a collective, or its heartbeats stopped.
_LOST = ('Connection reset by peer', 'Connection closed by peer', 'Socket closed',
         'heartbeat timeout', 'Broken pipe')
# A process that has published no sign of life for this long is taken for gone. jax's own
# heartbeat timeout, 100 s, would end the survivors later, with an abort and a stack dump;
# a process's signs come from a thread of its own, every _BEAT_S, even while it compiles.
_SILENT_S = 60.0
_BEAT_S = 2.0
# Set when this process ends (normally, or by an error of its own): the watch stops before jax's
# exit handler shuts the client down, which the watch would take for a lost coordinator.
_ENDING = threading.Event()


def _stopped(who: str, said: str, workdir: Optional[str]) -> str:
  count, index = jax.process_count(), jax.process_index()
  where, again = '', 'to resume'
  if workdir:
    folder = os.path.join(workdir, 'checkpoints')
    steps = [int(n) for n in (os.listdir(folder) if os.path.isdir(folder) else ())
             if n.isdigit()]
    where = (f'the last complete checkpoint is {folder}/{max(steps)}; ' if steps else
             f'no complete checkpoint is in {folder}; ')
    again = again if steps else 'to start again'  # From step 0: nothing to resume.
  return (f'{who} of this {count}-process job is gone ({said}); process {index} stopped; '
          f'{where}restart every process with the same command {again}')


def lost_process(e: BaseException, workdir: Optional[str] = None) -> Optional[str]:
  """The one line for an error that says another process of this job is gone, else None.

  The survivors learn of it at their next collective (gloo's connection to the dead process
  closes); jax's own exit would then wait at the coordination service's shutdown barrier for
  the dead process until its heartbeat timeout and abort with a stack dump, so the caller exits
  at once after this line (vit/cli.py)."""
  if not jax.distributed.is_initialized() or jax.process_count() < 2:
    return None
  chain, seen = [], set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    chain.append(e)
    e = e.__cause__ or e.__context__
  said = next((' '.join(str(x).split()) for x in chain if any(w in str(x) for w in _LOST)), None)
  if said is None:
    return None
  said = re.sub(r'\[[^\]]*\.cc:\d+\] ', '', said.split(' [type.googleapis')[0])[:200]
  other = f'process {1 - jax.process_index()}' if jax.process_count() == 2 else 'a process'
  return _stopped(other, said, workdir)


def exit_now(line: str) -> None:
  """Prints `error: LINE` and ends this process with status 2 at once: not through jax's exit,
  which would wait for a lost process at the coordination service's shutdown barrier."""
  print(f'error: {line}', file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(2)


def watch_processes(workdir: Optional[str] = None, silent_s: Optional[float] = None) -> None:
  """In a job of several processes, a daemon thread that ends this process with one line once
  another has shown no sign of life for `silent_s` (default --lost_process_after; 0: no
  watch) seconds (killed with SIGKILL, crashed, its host lost), or the coordinator cannot be
  reached: otherwise a survivor waits at the next collective, or at a barrier of a checkpoint
  save, until jax's heartbeat timeout aborts it.

  Each process publishes a counter on the coordination service's key-value store every
  `_BEAT_S`; process 0, which hosts that service, reads them all, and a process that ended
  normally publishes `done` (`finished`) and is no longer watched. The others learn of a loss
  when process 0 stops, and the service with it: reads grow with the number of processes, not
  with its square (a pod slice of many hosts)."""
  if silent_s is None:
    silent_s = _LOST_AFTER.value if flags.FLAGS.is_parsed() else _SILENT_S
  if silent_s < 0:
    raise UserError(f'--lost_process_after={silent_s}: must be 0 (never) or a number of seconds')
  if not silent_s or not jax.distributed.is_initialized() or jax.process_count() < 2:
    return
  client, index, count = jax_distributed.global_state.client, jax.process_index(), \
      jax.process_count()

  def watch():
    beat, seen = 0, {}
    while True:
      now = time.monotonic()
      try:
        client.key_value_set(f'vit_alive/{index}', str(beat), allow_overwrite=True)
        signs = dict(client.key_value_dir_get('vit_alive/')) if index == 0 else {}
      except Exception as e:  # The coordination service (in process 0) is gone.
        if index != 0 and not _ENDING.is_set():
          exit_now(_stopped('process 0, the coordinator,', ' '.join(str(e).split())[:200],
                            workdir))
        return
      beat += 1
      if _ENDING.is_set():
        return
      # Process 0 watches every other process; the others watch only process 0 (above).
      for p in (range(count) if index == 0 else ()):
        sign = signs.get(f'vit_alive/{p}')
        if p == index or sign == 'done':
          continue
        if p not in seen or seen[p][0] != sign:
          seen[p] = (sign, now)
        elif now - seen[p][1] > silent_s:
          exit_now(_stopped(f'process {p}', f'no sign of life for {silent_s:.0f} s: killed, '
                            f'crashed or its host lost', workdir))
      if _ENDING.wait(_BEAT_S):
        return

  atexit.register(_ENDING.set)  # Runs before jax's own handler, registered earlier.
  threading.Thread(target=watch, name='vit-watch-processes', daemon=True).start()


def finished() -> None:
  """This process ended its work normally: the others stop watching it, and it them."""
  _ENDING.set()
  if jax.distributed.is_initialized() and jax.process_count() > 1:
    try:
      jax_distributed.global_state.client.key_value_set(
          f'vit_alive/{jax.process_index()}', 'done', allow_overwrite=True)
    except Exception:  # The others are gone already: nothing to tell them.
      pass
