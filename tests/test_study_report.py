"""study.report's statistics and notes on made-up result records (no training)."""
import os

import pytest

from configs.study import converged
from study import report, report_later, stats


def _interval(mean):
  return stats.interval([mean + d for d in (-0.2, -0.1, 0.0, 0.1, 0.2)])


def test_holm_adjusts_over_every_pre_registered_endpoint():
  early = {'pct1': _interval(3.0), 'pct10': None, 'all': None}  # One endpoint in so far.
  raw = stats.p_value(early['pct1'])
  assert stats.holm(early) == {'pct1': raw}
  assert stats.holm(early, m=3) == {'pct1': pytest.approx(3 * raw)}
  with pytest.raises(ValueError, match='1 p values but m = 0'):
    stats.holm(early, m=0)
  assert stats.format_p(0.0002) == 'p < 0.001' and stats.format_p(0.0123) == 'p = 0.012'


def _record(holdout_best, commit='a' * 40):
  return {'result': {'holdout_best': holdout_best}, 'commit': commit}


def test_the_mpp_convergence_rule_waits_for_every_seed_and_pairs_them():
  twelve = {f'mpp_e12/pct1/seed{s}': _record(0.70 + s / 100) for s in range(5)}
  thirty = {f'mpp_e30/pct1/seed{s}': _record(0.71 + s / 100) for s in range(4)}
  st = report.Study(converged.get_config(), {**twelve, **thirty})
  rule = report.convergence(st)[0]
  assert 'not decided yet' in rule and '4 of 5 seeds have both' in rule, rule
  # Seed 4 at 30 epochs far above: the unpaired means of 5 and 4 seeds would differ by more.
  st = report.Study(converged.get_config(), {**twelve, **thirty,
                                             'mpp_e30/pct1/seed4': _record(0.75)})
  rule = report.convergence(st)[0]
  assert '30 epochs is +1.00 held-out points from 12 epochs' in rule, rule
  assert ('mean over the same 5 seeds; paired 95% interval [+1.00, +1.00], the rule reads the '
          'mean)') in rule, rule  # Every seed gains 1 point: no spread.
  assert ('not converged: extended to 60 epochs, the '
                                                   'headline length (protocol deviation 9)') in rule
  assert report.convergence(st)[1] == ('- MPP pretraining, for information: 60 against 30 epochs '
                                       'when every seed has both (0 of 5 seeds have both).')
  sixty = {f'mpp_e60/pct1/seed{s}': _record(0.715 + s / 100) for s in range(5)}
  st = report.Study(converged.get_config(), {**twelve, **thirty, **sixty,
                                             'mpp_e30/pct1/seed4': _record(0.75)})
  assert report.convergence(st)[1] == ('- MPP pretraining, for information: 60 epochs is +0.50 '
                                       'held-out points from 30 (1% (600), mean over the same 5 '
                                       'seeds).')


def test_a_table_that_mixes_commits_says_so():
  results = {'pixels/pct1/seed0': _record(0.7, 'b' * 40), 'pixels/pct1/seed1': _record(0.7)}
  st = report.Study(converged.get_config(), results)
  assert report.commits_note(st, ['pixels/pct1/seed1']) == (
      'Commit of every record in this table: aaaaaaa (1 record).')
  note = report.commits_note(st, sorted(results))
  assert note.startswith('This table mixes commits: aaaaaaa (1 record), bbbbbbb (1 record).')


def test_the_reruns_at_thirty_epochs_are_set_against_the_first_exports():
  def export(accuracy, sha):
    return {'result': {'holdout_mpp_accuracy': accuracy, 'sha256': sha}, 'commit': 'a' * 40}
  first = {f'mpp/seed{s}/e30': export(0.81 + s / 100, f'{s}' * 64) for s in range(5)}
  st = report.Study(converged.get_config(), first)
  assert report.reruns(st) == ['The reruns to 60 epochs (deviation 9) export at 30 epochs too; '
                               'none has reached it yet.']
  st = report.Study(converged.get_config(), {**first,
                                             'mpp/seed1/e30_rerun': export(0.8205, 'f' * 64)})
  assert report.reruns(st) == [
      'The reruns to 60 epochs (deviation 9), exported again at 30 epochs, against the first '
      "runs' exports: the same bytes for no seed; different bytes (held-out MPP accuracy, first "
      '-> rerun) for seed 1 82.00 -> 82.05 (+0.05 points).']
  st = report.Study(converged.get_config(), {**first, 'mpp/seed0/e30_rerun': export(0.81, '0' * 64),
                                             'mpp/seed1/e30_rerun': export(0.8205, 'f' * 64)})
  assert report.reruns(st)[0].split(': ', 1)[1].startswith('the same bytes for seed 0; different')


def test_the_time_left_leaves_out_runs_timed_from_their_last_segment_only():
  """A record without segments that times under half the median rate (a resumed run, its last
  segment only) is left out of the rate; a record with segments is whole, however fast."""
  from types import SimpleNamespace

  from study import report_later

  def rec(wall, steps, **extra):
    return {'wall_s': wall, 'result': {'steps': steps}, **extra}
  st = SimpleNamespace(results={'a': rec(600, 1000), 'b': rec(500, 1000), 'c': rec(700, 1000),
                                'resumed': rec(10, 500)})
  assert report_later.timing(st) == (pytest.approx(0.6), 1)
  st.results['resumed']['segments'] = [{'wall_s': 10}]
  assert report_later.timing(st) == (pytest.approx(1810 / 3500), 0)
  assert report_later.timing(SimpleNamespace(results={})) == (None, 0)


def test_verdicts_say_when_they_are_interim_and_whether_holm_keeps_them():
  """A paired verdict on fewer seeds than planned is marked interim; a primary verdict says
  whether it holds after the Holm adjustment over the three endpoints."""
  config = converged.get_config()
  head = f'mpp_e{config.headline_epochs:g}'
  results = {}
  for s in range(5):
    results[f'scratch/pct1/seed{s}'] = {'result': {'test_at_best': 0.70 + s / 1000}}
  for s in range(3):
    results[f'{head}/pct1/seed{s}'] = {'result': {'test_at_best': 0.75 + s / 1000 + s * s / 1e4}}
  st = report.Study(config, results)
  (row,) = [line for line in report.comparisons(st) if line.startswith('| MPP - scratch |')]
  assert '(n=3)' in row and 'MPP better (interim: 3 of 5 seeds)' in row, row
  assert '; holds after adjustment)' in row, row


def test_the_report_refuses_a_trainers_config_in_one_line():
  """study.report --config configs/mae/fashion_mnist.py was an AttributeError traceback; it
  now says what study.run and study.check say, before writing anything."""
  from vit.testing import commands
  told = commands.run_module('study.report', '--config', 'configs/mae/fashion_mnist.py',
                             timeout=900)
  assert told.returncode == 2 and told.stderr.strip().splitlines() == [
      "error: --config configs/mae/fashion_mnist.py: a trainer's config, not a study config; a "
      'study runs configs/study/converged.py or configs/study/demo.py'], told.stderr[-3000:]


def test_overrides_that_change_the_report_need_a_report_path_of_their_own():
  """`study.report --config.results=/elsewhere` rewrote the committed docs/study/results.md with
  another folder's results; overrides that only decide how runs execute still may."""
  from vit.errors import UserError
  committed = 'docs/study/results.md'
  for overrides in (['results'], ['only_priority', 'sweep.learning_rates']):
    with pytest.raises(UserError, match=f'--config.{overrides[-1]} changes what c.py reports.*'
                       '--config.report=PATH'):
      report.check_report_path(overrides, 'c.py', committed)
  for overrides in ([], ['workers', 'inflight', 'backbones', 'only_priority'],
                    ['report', 'results', 'seeds']):
    report.check_report_path(overrides, 'c.py', committed)


def test_the_figures_section_links_beside_the_report_and_gives_the_uniform_level():
  assert report_later.uniform_distance((2, 2), (1, 1)) == pytest.approx((2 + 2 ** 0.5) / 4)
  assert report_later.uniform_distance((7, 7), (4, 4)) == pytest.approx(14.44, abs=0.01)
  per_head = [[2.0, 3.0], [9.0, 10.0], [12.0, 12.0], [14.0, 14.0]]  # A local head below.
  result = dict(attention_distance_px_per_head=per_head, grid=[7, 7], pixels_per_patch=[4, 4],
                figures=['attention_distance.png', 'posemb_similarity.png'],
                out='/somewhere/else/figures/scratch_all_seed0')  # As its run was told.
  config = converged.get_config()
  st = report.Study(config, {'figures/scratch_all_seed0': {'result': result, 'commit': 'a' * 40}})
  lines = report_later.figures(st, os.path.abspath('docs/study'))
  line = next(x for x in lines if x.startswith('- scratch/all/seed0'))
  assert line == (
      '- scratch/all/seed0: 2 head(s) of the lower 2 block(s) local; the mean distance grows '
      'with depth (2.5, 9.5, 12.0, 14.0 px; 14.4 px for attention spread evenly over the '
      "patches): the paper's pattern appears. Figures: [attention distance]"
      '(figures/scratch_all_seed0/attention_distance.png), [posemb similarity]'
      '(figures/scratch_all_seed0/posemb_similarity.png).')
  assert ('  ![mean attention distance by depth, scratch/all/seed0]'
          '(figures/scratch_all_seed0/attention_distance.png)') in lines
  assert any(x.startswith('- mpp/seed0/e30: pending') for x in lines)
