"""study.segments: a run's wall and CPU time summed over the processes that worked on it."""
import json
import os
import time

import pytest

from study import segments

MACHINE = {'cpu': 'test', 'cpus': 2}


def _read(rundir):
  with open(os.path.join(rundir, segments.FILE)) as f:
    return json.load(f)


def test_a_resumed_run_counts_every_segment(tmp_path):
  with segments.Ledger(str(tmp_path), 'a' * 40, MACHINE) as first:
    sum(i * i for i in range(200_000))  # Some CPU time.
  assert len(_read(tmp_path)) == 1 and _read(tmp_path)[0]['cpu_s'] > 0
  with segments.Ledger(str(tmp_path), 'b' * 40, MACHINE) as second:  # The resume.
    pass
  saved = _read(tmp_path)
  assert [s['commit'] for s in saved] == ['a' * 40, 'b' * 40]
  assert saved == second.segments
  wall, cpu = second.totals()
  assert wall == pytest.approx(sum(s['wall_s'] for s in saved))
  assert cpu == pytest.approx(first.totals()[1] + saved[1]['cpu_s'])


def test_the_account_is_on_disk_while_the_run_goes_on(tmp_path):
  """A segment killed without warning (kill -9, a lost machine) keeps what the last beat
  wrote."""
  with segments.Ledger(str(tmp_path), None, MACHINE, every_s=0.01):
    deadline = time.time() + 60
    while _read(tmp_path)[0]['wall_s'] == 0.0 and time.time() < deadline:
      time.sleep(0.02)
    assert _read(tmp_path)[0]['wall_s'] > 0.0


def test_a_damaged_file_is_one_line_and_a_fresh_account(tmp_path, capsys):
  (tmp_path / segments.FILE).write_text('[{"commit": "a", "wall_')
  with segments.Ledger(str(tmp_path), 'c' * 40, MACHINE) as ledger:
    pass
  assert capsys.readouterr().out == (
      f'study: {tmp_path / segments.FILE}: unreadable (JSONDecodeError); the run\'s earlier '
      'segments are not counted\n')
  assert [s['commit'] for s in ledger.segments] == ['c' * 40] == [
      s['commit'] for s in _read(tmp_path)]
