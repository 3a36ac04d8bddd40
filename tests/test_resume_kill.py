"""kill -9 at random moments (inside steps and inside asynchronous checkpoint writes), then the
same command again: the final train state equals an uninterrupted run's bit for bit.

Real `python -m supervised.train` subprocesses, through benchmarks/chaos.py (the same trials
the benchmark runs, kept short here: one trial of two kills)."""
import os
import time

from benchmarks import chaos


def test_kill_9_and_rerun_ends_bitwise_identical(tmp_path):
  seed = int(time.time())  # Random kill points; the seed is in the failure message.
  # A kill is sent a random delay after a step's line; on a loaded machine the run may end
  # first. Such a trial tests nothing, so another seed is tried (each is still checked).
  for attempt in range(4):
    workdir = tmp_path / f'attempt_{attempt}'
    summary = chaos.main(['--trials=1', '--kills=2', '--steps=20', f'--seed={seed + attempt}',
                          f'--workdir={workdir}'])
    assert summary['trials'] == 1
    assert summary['identical'] == 1, f'seed {seed + attempt}: {summary}'
    if summary['kills'] >= 1:
      break
  assert summary['kills'] >= 1, f'seeds {seed}..{seed + 3}: no kill landed before the run ended'
  for event in summary['events'][0]:
    # Resumed from a complete checkpoint no later than the kill, at most one save interval back
    # (plus the save that may have been in flight).
    assert event['resumed_at'] % chaos.CHECKPOINT_EVERY == 0, summary
    assert 0 <= event['killed_after'] - event['resumed_at'] <= 2 * chaos.CHECKPOINT_EVERY, summary
  # No temporary (partly written) checkpoint directories survive the reruns.
  leftovers = [d for d in os.listdir(workdir / 'trial_0' / 'checkpoints') if not d.isdigit()]
  assert leftovers == []


def test_a_kill_after_the_run_finished_resumes_at_its_last_step():
  """A kill that lands once the final checkpoint is complete: the rerun has nothing to train and
  counts as resumed there, not at 0 (which read as 20 steps redone and failed the test above)."""
  assert chaos.resumed_step('resumed from /w at step 15 (initialised from x)\n') == 15
  assert chaos.resumed_step('note: workdir /w already holds step 20 >= total_steps 20; nothing '
                            'to train (raise --config.total_steps to continue)\n') == 20
  assert chaos.resumed_step('step 20/20 loss 1.0\n') is None


def test_a_run_that_fails_on_its_own_is_one_line_naming_its_workdir(tmp_path, capsys):
  # A file where --workdir's folder should be: the reference run's own one-line error is passed
  # on (as a workdir another process holds would be), not a RuntimeError with its output.
  blocker = tmp_path / 'not_a_folder'
  blocker.write_text('')
  try:
    chaos.main(['--trials=1', '--kills=0', '--steps=2', f'--workdir={blocker}'])
  except SystemExit as e:
    assert e.code == 2
  else:
    raise AssertionError('chaos.main returned although its reference run could not start')
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1, lines
  assert lines[0].startswith(
      f'error: chaos: the reference run in {blocker}/reference exited '), lines
  assert 'Traceback' not in lines[0]
