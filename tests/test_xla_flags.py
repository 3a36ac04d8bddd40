"""vit.xla_flags: entry points start XLA with our CPU defaults, and the user's XLA_FLAGS win."""
import os
import subprocess
import sys

import pytest

from vit import xla_flags

YNN = 'xla_cpu_experimental_ynn_fusion_type'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_defaults_follow_the_users_flags():
  flags = xla_flags.with_defaults('--xla_force_host_platform_device_count=8')
  assert flags.startswith('--xla_force_host_platform_device_count=8 ')
  for name, value in xla_flags.DEFAULTS.items():
    assert f'--{name}={value}' in flags.split()


def test_a_flag_the_user_sets_keeps_the_users_value():
  flags = xla_flags.with_defaults(f'--{YNN}=dot')
  assert flags.split().count(f'--{YNN}=dot') == 1
  assert f'--{YNN}=' not in flags.split()
  assert xla_flags.with_defaults(flags) == flags  # Applying twice (child processes) adds nothing.


def test_apply_defaults_sets_the_environment():
  environ = {}
  xla_flags.apply_defaults(environ)
  assert environ['XLA_FLAGS'] == xla_flags.with_defaults('')


# An entry point (vit.cli.run) compiling a dense layer: do YNNPACK fusions appear in the program?
_PROBE = """
import jax, jax.numpy as jnp
from vit import cli

def main(argv):
  f = jax.jit(lambda w, x: jnp.tanh(x @ w) * 2.0)
  text = f.lower(jnp.ones((256, 256)), jnp.ones((64, 256))).compile().as_text()
  print('ynn' if 'ynn_fusion' in text else 'xla')

cli.run(main)
"""


@pytest.mark.parametrize('user_flags, compiled_by', [
    ('', 'xla'),                  # Our default: XLA's own emitters.
    (f'--{YNN}=dot', 'ynn'),      # The user's choice is what XLA gets.
])
def test_entry_points_start_xla_with_the_defaults(user_flags, compiled_by):
  env = dict(os.environ, XLA_FLAGS=user_flags, JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR='',
             PYTHONPATH=ROOT)
  result = subprocess.run([sys.executable, '-c', _PROBE], env=env, capture_output=True,
                          text=True, timeout=900, cwd=ROOT)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split()[-1] == compiled_by
