"""vit.huge_pages: training entry points restart once with glibc's huge-page tunable."""
import os
import subprocess
import sys

import pytest

from vit import huge_pages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_restart_adds_the_tunable_to_the_users_tunables():
  env = huge_pages.restart_environment({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2', 'A': '1'},
                                       'madvise', (2, 36))
  assert env == {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1', 'A': '1'}
  assert huge_pages.restart_environment({}, 'madvise', (2, 36)) == {
      'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}


@pytest.mark.parametrize('environ, thp_mode, glibc', [
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, 'madvise', (2, 36)),  # The user's choice.
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}, 'madvise', (2, 36)),  # Already restarted.
    ({}, 'always', (2, 36)),   # Huge pages already, for every mapping.
    ({}, 'never', (2, 36)),    # None to be had.
    ({}, 'madvise', (2, 31)),  # glibc before 2.35 has no such tunable.
    ({}, 'madvise', ()),       # Not glibc.
])
def test_no_restart_where_it_gains_nothing(environ, thp_mode, glibc):
  assert huge_pages.restart_environment(environ, thp_mode, glibc) is None


_PROBE = ('from vit import huge_pages; huge_pages.restart_with_huge_pages(); import os; '
          'print(os.getpid(), os.environ.get("GLIBC_TUNABLES", "-"))')


def test_a_restarted_process_keeps_its_pid_and_has_the_tunable_once():
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  env['PYTHONPATH'] = ROOT
  proc = subprocess.Popen([sys.executable, '-c', _PROBE], env=env, stdout=subprocess.PIPE,
                          text=True)
  out, _ = proc.communicate(timeout=60)
  pid, tunables = out.split()
  assert proc.returncode == 0 and int(pid) == proc.pid  # The same process, re-executed.
  expected = huge_pages.environment_for_this_machine(env)  # What this machine calls for.
  assert tunables == (expected['GLIBC_TUNABLES'] if expected else '-')
  # The user's own setting is never overridden.
  env['GLIBC_TUNABLES'] = 'glibc.malloc.hugetlb=0'
  run = subprocess.run([sys.executable, '-c', _PROBE], env=env, capture_output=True, text=True,
                       timeout=60, check=True)
  assert run.stdout.split()[1] == 'glibc.malloc.hugetlb=0'
