"""The study runner end to end at a tiny budget: pixels, one pretraining with its exports, a
scratch sweep and a fine-tuning from the exported backbone; then a rerun that runs nothing,
also after the results and backbones moved, and the report made from them."""
import contextlib
import errno
import io
import json
import os
import shutil
import signal
import sys

import ml_collections
import numpy as np
import pytest

from configs.study import converged
from study import report, run as run_lib, store
from vit import atomic_write
from vit.data import pipeline, subsets
from vit.testing import commands

# The runner's bookkeeping does not depend on the width or the depth: a tiny ViT of one block
# keeps its compiles short.
TINY_MODEL = dict(hidden_size=16, transformer=dict(mlp_dim=32, num_heads=2, num_layers=1))


def _tiny(tmp_path, where='a'):
  c = converged.get_config()
  c.budgets = ml_collections.ConfigDict(
      {'pct1': dict(fraction=0.01, steps=6, eval_every=3, warmup=1)})
  c.seeds, c.full_seeds, c.holdout = (0, 1), (), 1000  # No all-labels cells: seconds.
  c.steps_per_epoch, c.pretrain_epochs, c.headline_epochs, c.later_epochs = 2, (1, 2), 2, 2
  c.extension = None  # No rerun to a longer length (the real study's deviation 9).
  c.full.update(sweep_epochs=1, lengths_epochs=(1, 2), eval_every_epochs=1)
  c.sweep.update(learning_rates=(1e-3,), crop_padding=(2,), extensions=())  # No edge points.
  for part in (c.classifier, c.pretrainer):
    part.update(eval_batch_size=1000, log_every=3)
    part.model.update(TINY_MODEL)
  c.pretrainer.mpp.eval_examples = 1000
  c.results, c.backbones = str(tmp_path / where / 'results'), str(tmp_path / where / 'bb')
  c.report = str(tmp_path / where / 'results.md')
  c.inflight = str(tmp_path / where / 'inflight')  # Never the study's own runs in flight.
  c.only_priority = 3
  return c


def _small_test_split(make_source):
  """The test split cut to its first 1000 images, as many as the held-out split here: the
  runner's bookkeeping of a test evaluation at each held-out best, not the accuracy on all 10,000
  (four such evaluations of 10,000 took a quarter of this file's time)."""
  def make(config, split):
    source = make_source(config, split)
    if split != 'test':
      return source
    keep = np.arange(1000)
    return subsets.Subset(source, keep, subsets.labels_of(source)[keep], 'test')
  return make


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('study')
  c = _tiny(tmp)
  patch = pytest.MonkeyPatch()
  patch.setattr(pipeline, 'make_source', _small_test_split(pipeline.make_source))
  out = io.StringIO()
  try:
    with contextlib.redirect_stdout(out):
      done = run_lib.work(c, str(tmp / 'work'))
  finally:
    patch.undo()
    sys.stdout.write(out.getvalue())
  (tmp / 'stdout.txt').write_text(out.getvalue())
  return tmp, c, done


def test_the_first_priorities_run_and_record_what_they_are(finished):
  tmp, c, done = finished
  results = store.load_all(c.results)
  assert done == 5  # 2 pixel fits, the pretraining, the scratch sweep, the MPP sweep.
  assert {'mpp/seed0/e1', 'mpp/seed0/e2', 'mpp_e2/pct1/sweep/lr0.001_pad2',
          'scratch/pct1/sweep/lr0.001_pad2'} <= set(results)
  ft = results['mpp_e2/pct1/sweep/lr0.001_pad2']
  assert ft['config']['init'] == 'study:mpp/seed0/e2'
  assert ft['config']['data']['crop_padding'] == 2 and ft['config']['seed'] == c.tune_seed
  assert ft['result']['backbone_sha256'] == results['mpp/seed0/e2']['result']['sha256']
  r = ft['result']
  assert [p[0] for p in r['curve']] == [3, 6] and r['curve'][0][2] is not None  # Test at a best.
  assert r['holdout_best'] == max(p[1] for p in r['curve'])
  assert r['images_to_best'] == r['best_step'] * 128
  assert ft['commit'] and ft['machine']['backend'] == 'cpu' and ft['wall_s'] > 0
  # One segment (no resume): its commit and machine are the record's, its time the total.
  [segment] = ft['segments']
  assert segment['commit'] == ft['commit'] and segment['machine'] == ft['machine']
  assert (segment['wall_s'], segment['cpu_s']) == (ft['wall_s'], ft['cpu_s'])
  pre = results['mpp/seed0/pretrain']
  assert [p[0] for p in pre['result']['curve']] == [2, 4]  # MPP accuracy at each export.
  assert results['mpp/seed0/e1']['result']['holdout_mpp_accuracy'] == pre['result']['curve'][0][1]
  assert pre['config']['data']['eval_split'] == 'holdout'
  # Each export is recorded twice (written, then with its held-out MPP accuracy); the second
  # said 'finished' again.
  said = [l.split(' -> ')[0] for l in (tmp / 'stdout.txt').read_text().splitlines()
          if l.startswith('study: ') and ' -> ' in l]
  assert said.count('study: finished mpp/seed0/e1') == 1, said
  assert said.count('study: updated mpp/seed0/e1') == 1, said


def test_a_rerun_runs_nothing_even_after_the_results_moved(finished, tmp_path):
  tmp, c, _ = finished
  assert run_lib.work(c, str(tmp / 'work')) == 0
  moved = _tiny(tmp_path, 'b')
  shutil.copytree(c.results, moved.results)
  shutil.copytree(c.backbones, moved.backbones)
  assert run_lib.work(moved, str(tmp_path / 'other_work')) == 0


def test_a_result_made_with_another_config_is_refused_in_one_line(finished, tmp_path):
  tmp, c, _ = finished
  changed = _tiny(tmp_path, 'c')
  shutil.copytree(c.results, changed.results)
  changed.classifier.optimizer.weight_decay = 0.3
  with pytest.raises(Exception, match='finished with another config'):
    run_lib.work(changed, str(tmp_path / 'w'))


def test_the_report_shows_what_finished_and_counts_what_did_not(finished):
  _, c, _ = finished
  report.write(c, c.report)
  text = open(c.report).read()
  assert '| raw pixels, least squares |' in text and '100%' not in text
  assert '| ViT from scratch | - (0/2)' in text  # Seeds run after the sweeps' priority.
  assert 'compute-matched' not in text.split('## Paired')[0]  # Not in this reduced plan.
  assert 'scratch/pct1/sweep' in text and 'Runs finished: 5 of' in text
  json.loads(open(store.result_path(c.results, 'pixels/pct1/seed1')).read())


def test_a_report_that_cannot_be_finished_leaves_the_previous_set_together(finished, tmp_path,
                                                                          monkeypatch):
  # The disk fills after the figures were made (ENOSPC from the report's own write): neither
  # results.md nor the figure beside it is replaced, and no partial file is left there.
  _, c, _ = finished
  folder = tmp_path / 'report'
  folder.mkdir()
  c = ml_collections.ConfigDict(c.to_dict())
  c.report = str(folder / 'results.md')
  for name in ('results.md', 'label_fractions.png'):
    (folder / name).write_text('previous')

  def full_disk(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(report, 'markdown', full_disk)
  with pytest.raises(atomic_write.NotWritten) as e:
    report.write(c, c.report)
  assert str(e.value).startswith(f'{c.report}: not written (No space left on device); the '
                                 'previous one is unchanged'), e.value
  assert sorted(os.listdir(folder)) == ['label_fractions.png', 'results.md']
  assert {p.read_text() for p in folder.iterdir()} == {'previous'}


def test_a_worker_that_fails_is_named_with_its_own_line(tmp_path, monkeypatch):
  # Workers run this process's argv again; an unknown key makes each refuse at once. The log
  # holds an older start's error, which must not be taken for this one's.
  (tmp_path / 'worker0.log').write_text('error: an older start\n')
  monkeypatch.setattr('sys.argv', ['study.run', '--config=configs/study/converged.py',
                                   f'--workdir={tmp_path}', '--config.bogus=1'])
  with pytest.raises(run_lib.UserError) as e:
    run_lib._spawn(ml_collections.ConfigDict({'workers': 2}), str(tmp_path))
  message = str(e.value)
  assert message.startswith('study: workers exited with [2, 2]; worker 0: --config.bogus: '
                            'unknown config key'), message
  assert '\n' not in message and 'older' not in message


def test_commit_of_counts_local_changes_only_where_asked(tmp_path):
  """A run's record takes the whole checkout's tracked files; the report its own code only
  (study/, configs/study/), new files there included, never the results it writes."""
  import subprocess
  git = lambda *a: subprocess.run(['git', '-C', str(tmp_path), *a], check=True,
                                  capture_output=True)
  git('init', '-q')
  (tmp_path / 'study').mkdir()
  (tmp_path / 'study' / 'report.py').write_text('x = 1\n')
  (tmp_path / 'README.md').write_text('r\n')
  git('add', '.')
  git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'c')
  head = subprocess.run(['git', '-C', str(tmp_path), 'rev-parse', 'HEAD'], capture_output=True,
                        text=True).stdout.strip()
  code = dict(only=('study', 'configs/study'), untracked=True)
  assert store.commit_of(str(tmp_path)) == dict(commit=head, dirty=False)
  (tmp_path / 'docs').mkdir()
  (tmp_path / 'docs' / 'result.json').write_text('{}')  # Untracked, outside the code.
  assert not store.commit_of(str(tmp_path))['dirty']
  assert not store.commit_of(str(tmp_path), **code)['dirty']
  (tmp_path / 'study' / 'new.py').write_text('')  # Untracked code: the report's only.
  assert not store.commit_of(str(tmp_path))['dirty']
  assert store.commit_of(str(tmp_path), **code)['dirty']
  (tmp_path / 'study' / 'new.py').unlink()
  (tmp_path / 'README.md').write_text('changed\n')  # Tracked, outside the report's code.
  assert store.commit_of(str(tmp_path))['dirty']
  assert not store.commit_of(str(tmp_path), **code)['dirty']
  assert store.commit_of(str(tmp_path / 'nowhere')) == dict(commit=None, dirty=False)


# A worker of the tiny study (priorities up to 2: two pixel fits, the pretraining, then the
# scratch sweep) that pauses at its first training run's last step, before it asks whether to
# stop, and goes on once the loop's stop handler has run: the signal meets that step whatever
# the load. Run under vit.cli.run, as `python -m study.run`'s workers are.
_WORKER_PAUSED_AT_A_LAST_STEP = """
import pathlib, sys, time
from study import run as run_lib
from tests.test_study_run import _tiny
from vit import checkpoints, cli
""" + commands.COUNT_HANDLED_SIGNALS + """
should_stop = checkpoints.StopSignal.should_stop
def paused(self, step, sync):
  if step == self.total_steps and not handled:
    print('paused at the last step', flush=True)
    while not handled:
      time.sleep(0.05)
  return should_stop(self, step, sync)
checkpoints.StopSignal.should_stop = paused
tmp = pathlib.Path(sys.argv[1])
c = _tiny(tmp)
c.only_priority = 2
cli.run(lambda argv: run_lib.work(c, str(tmp / 'work')), positional=True)
"""


def test_a_sigterm_in_a_runs_last_step_stops_the_worker_once_it_is_recorded(tmp_path):
  """The loop does not stop at a run's last step: the run finished, the loop's handler forgot
  the signal and the worker started the next run, which trained (a session's end SIGTERMs the
  workers and waits for them). The worker now records that run and stops, one line, exit 0."""
  from vit.testing.commands import signal_at_line
  returncode, out, err = signal_at_line(
      [sys.executable, '-c', _WORKER_PAUSED_AT_A_LAST_STEP, str(tmp_path)], 'stdout',
      lambda line: line.strip() == 'paused at the last step', signal.SIGTERM)
  output = out + err
  assert returncode == 0, output[-3000:]
  assert 'SIGTERM received: the run is at its last step (4 of 4)' in output, output[-3000:]
  assert os.path.exists(store.result_path(tmp_path / 'a' / 'results', 'mpp/seed0/pretrain'))
  assert 'study: starting scratch/pct1/sweep/lr0.001_pad2' not in output, output[-3000:]
  assert out.splitlines()[-1] == ('study: worker stops: SIGTERM received during '
                                  'mpp/seed0/pretrain; it finished and is recorded; rerun to '
                                  'continue'), out[-3000:]
  assert 'stopped after step' not in output


def test_a_workers_second_signal_still_ends_it_at_once(capsys):
  """The worker's own handler lets the run in progress finish; a second signal ends it at once
  as before, also when the first went to a run's loop (which gives the worker's handler both):
  with SIGINT here, Python's KeyboardInterrupt, restored by the worker's handler."""
  import time
  from vit import checkpoints
  # Set, not inherited: a test run started in the background of a script has SIGINT ignored,
  # which the worker leaves alone.
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    for in_a_loop in (False, True):
      with pytest.raises(KeyboardInterrupt):
        with run_lib._StopRequest() as stop, contextlib.ExitStack() as loop:
          if in_a_loop:
            loop.enter_context(checkpoints.StopSignal(10)).should_stop(1, sync=False)
          stop.run = 'scratch/pct1/seed0'
          signal.raise_signal(signal.SIGINT)
          assert stop.received == (None if in_a_loop else signal.SIGINT)
          signal.raise_signal(signal.SIGINT)
          time.sleep(1)  # The second is sent with os.kill: delivered at once, or soon.
      assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  finally:
    signal.signal(signal.SIGINT, previous)
  assert capsys.readouterr().out.count(
      'study: SIGINT received during scratch/pct1/seed0: this worker starts no other run (a '
      'second SIGINT ends it now)') == 2


def test_a_signal_between_runs_stops_the_worker_before_the_next(tmp_path, capsys, monkeypatch):
  """Before it claims a run, or once it has prepared one (config, snapshot): no run starts, the
  claim is released, one line, exit status 0."""
  from study import snapshot
  c = _tiny(tmp_path)
  write_identity = snapshot.write_identity

  def signalled(*args):  # The signal comes while the first run is prepared.
    write_identity(*args)
    signal.raise_signal(signal.SIGTERM)

  previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # Not one ignored (left alone).
  try:
    for between in (True, False):
      with monkeypatch.context() as patch, run_lib._StopRequest() as stop:
        if between:
          signal.raise_signal(signal.SIGTERM)
        else:
          patch.setattr(snapshot, 'write_identity', signalled)
        with pytest.raises(SystemExit) as e:
          run_lib._work(c, str(tmp_path / 'work'), stop)
      assert e.value.code == 0 and not os.path.exists(c.results)
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert not store._HELD and store.claim(str(tmp_path / 'work'), 'pixels/pct1/seed0')
  store.release(str(tmp_path / 'work'), 'pixels/pct1/seed0')
  received = ('study: SIGTERM received: this worker starts no other run (a second SIGTERM ends '
              'it now)')
  assert capsys.readouterr().out.splitlines() == [
      received, 'study: worker stops: SIGTERM received between runs; rerun to continue',
      'study: starting pixels/pct1/seed0 (priority 0)', received,
      'study: worker stops: SIGTERM received while pixels/pct1/seed0 was prepared; it did not '
      'run; rerun to continue']
