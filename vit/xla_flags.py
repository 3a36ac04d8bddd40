"""XLA flags every entry point starts with, unless the user's XLA_FLAGS already sets them.

XLA reads XLA_FLAGS once, when the first backend starts, so `apply_defaults()` must run before
any array is made (`vit.cli.run` calls it first thing; benchmark workers do too).
Only CPU flags so far: GPUs and TPUs ignore them.
"""
from __future__ import annotations

import os
from typing import Mapping, MutableMapping, Optional

# Measured in docs/performance.md (run J): ViT-Ti/16 and tiny-28 train steps on the 2-core
# AVX-512 CI machine, jax 0.10.2.
DEFAULTS = {
    # XLA's CPU backend hands dots and element-wise chains to YNNPACK by default. A ViT step then
    # runs at 0.85x the images/s of XLA's own emitters and needs 1.5x the memory (Ti/16): the
    # library fusions cut XLA's own fusions apart and more buffers are materialised.
    'xla_cpu_experimental_ynn_fusion_type': '',
    # Orders ops to keep fewer activations alive at once: Ti/16 1412 vs 1577 MiB and 1.04x the
    # speed; tiny-28 0.95x. Kept for the memory.
    'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED',
}

# XLA:CPU runs each op on the calling thread: the study's workers (study/run.py), one per core,
# which together train more images/s than one process whose ops use every core.
SINGLE_THREAD = '--xla_cpu_multi_thread_eigen=false'


def _names(xla_flags: str) -> set[str]:
  return {part.lstrip('-').split('=', 1)[0] for part in xla_flags.split()}


def with_defaults(xla_flags: str, defaults: Optional[Mapping[str, str]] = None) -> str:
  """`xla_flags` plus each of `defaults` (name -> value; DEFAULTS when None) it does not set
  already (the user's value wins)."""
  given = _names(xla_flags)
  defaults = DEFAULTS if defaults is None else defaults
  extra = [f'--{name}={value}' for name, value in defaults.items() if name not in given]
  return ' '.join([xla_flags.strip()] + extra).strip()


def apply_defaults(environ: MutableMapping[str, str] = os.environ,
                   defaults: Optional[Mapping[str, str]] = None) -> None:
  """Adds `defaults` (DEFAULTS when None) to environ['XLA_FLAGS'] (`with_defaults`); call
  before JAX starts a backend."""
  environ['XLA_FLAGS'] = with_defaults(environ.get('XLA_FLAGS', ''), defaults)
