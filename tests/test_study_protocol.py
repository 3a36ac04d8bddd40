"""The pre-registered study's plan, choices, identities, claims and statistics (study/)."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from configs.study import converged
from study import choices, configs, protocol, stats, store
from vit.errors import UserError


@pytest.fixture(scope='module')
def study():
  return converged.get_config()


@pytest.fixture(scope='module')
def runs(study):
  return {r.name: r for r in protocol.runs(study)}


def test_every_dependency_exists_and_the_plan_has_no_cycle(runs):
  for r in runs.values():
    assert all(d in runs for d in r.deps), r.name
  state = {}

  def visit(name):
    assert state.get(name) != 'open', f'cycle through {name}'
    if state.get(name) == 'done':
      return
    state[name] = 'open'
    for d in runs[name].deps:
      visit(d)
    state[name] = 'done'
  for name in runs:
    visit(name)


def test_the_headline_cells_come_first(runs, study):
  assert runs['mpp/seed0/pretrain'].priority == protocol.P_PRETRAIN0 == 1
  assert {r.priority for r in runs.values() if r.kind == 'pixels'} == {0}
  curve = [r for r in runs.values() if r.name.startswith(('mpp_e3/', 'mpp_e6/', 'mpp_e12/'))]
  assert curve and all(r.priority == protocol.P_LENGTH_CURVE for r in curve)
  assert max(r.priority for r in runs.values()
             if not r.name.startswith(('mpp_e3/', 'mpp_e6/', 'mpp_e12/'))) < protocol.P_LENGTH_CURVE
  # The sweep: 3 learning rates x 2 paddings for scratch, 3 for MPP (padding from scratch).
  assert len([n for n in runs if n.startswith('scratch/pct1/sweep/')]) == 6
  assert len([n for n in runs if n.startswith('mpp_e30/pct1/sweep/')]) == 3
  assert len([n for n in runs if n.startswith('mpp_e30/pct1/seed')]) == len(study.seeds) - 1


def test_fine_tuning_waits_for_its_backbone_and_the_scratch_arms_padding(runs):
  r = runs['mpp_e30/pct10/seed3']
  assert r.backbone == 'mpp/seed3/e30' and 'mpp/seed3/e30' in r.deps
  assert set(n for n in runs if n.startswith('scratch/pct10/sweep/')) <= set(r.deps)
  assert runs['mpp/seed3/e30'].deps == ('mpp/seed3/pretrain',)
  assert runs['mpp/seed3/e30'].steps == 30 * converged.STEPS_PER_EPOCH


def test_the_matched_arm_gets_the_pretraining_steps_too(runs, study):
  m = runs['matched/pct1/seed2']
  assert m.steps == 30 * study.steps_per_epoch + study.budgets.pct1.steps
  full = runs['matched/all/seed0']
  assert full.length_from == 'mpp_e30/all' and full.steps == 30 * study.steps_per_epoch


def _record(name, held, **config):
  c = {'optimizer': {'learning_rate': config.get('lr', 0.1)},
       'data': {'crop_padding': config.get('pad', 0)}, 'total_steps': config.get('steps', 10)}
  return {'name': name, 'config': c, 'result': {'holdout_best': held, 'test_at_best': 0.5}}


def test_choices_read_held_out_only_and_ties_go_to_the_grid_order(runs, study):
  order = [r.name for r in protocol.runs(study)]
  sweep = sorted(n for n in runs if n.startswith('scratch/pct1/sweep/'))
  results = {n: _record(n, 0.5, lr=0.1 * i, pad=i % 2) for i, n in enumerate(sweep)}
  results[sweep[3]]['result']['holdout_best'] = 0.7
  results[sweep[3]]['result']['test_at_best'] = 0.0  # Test never decides.
  r = choices.resolve(runs['scratch/pct1/seed1'], results, order)
  assert (r.lr, r.pad) == (pytest.approx(0.3), 1)
  results[sweep[5]]['result']['holdout_best'] = 0.7  # A tie: the first in the grid wins.
  first = min((order.index(sweep[3]), sweep[3]), (order.index(sweep[5]), sweep[5]))[1]
  assert choices.best('scratch/pct1/sweep/', results, order)['name'] == first
  del results[sweep[0]]
  with pytest.raises(UserError, match='not finished'):
    choices.resolve(runs['scratch/pct1/seed1'], results, order)


def test_a_length_choice_adds_its_steps(runs, study):
  order = [r.name for r in protocol.runs(study)]
  results = {n: _record(n, 0.5, steps=100 * i) for i, n in enumerate(sorted(runs))
             if n.startswith(('scratch/all/sweep/', 'scratch/pct10/sweep/', 'mpp_e30/all/length/'))}
  results['mpp_e30/all/length/e60']['result']['holdout_best'] = 0.9
  r = choices.resolve(runs['matched/all/seed1'], results, order)
  assert r.steps == 30 * study.steps_per_epoch + results['mpp_e30/all/length/e60']['config'][
      'total_steps']


def test_a_runs_identity_does_not_depend_on_where_the_backbones_are(runs, study, tmp_path):
  r = choices.resolve(runs['mpp_e30/pct1/sweep/lr0.001'], {
      n: _record(n, 0.5) for n in runs if n.startswith('scratch/pct1/sweep/')},
      [r.name for r in protocol.runs(study)])
  config = configs.classifier(study, r)
  assert config.init == 'study:mpp/seed0/e30'
  moved = converged.get_config()
  moved.backbones = str(tmp_path / 'elsewhere')
  assert configs.digest(configs.classifier(moved, r)) == configs.digest(config)
  assert configs.runnable(moved, config).init == 'vit_jax:' + os.path.join(
      str(tmp_path / 'elsewhere'), 'mpp_seed0_e30.npz')
  assert config.data.holdout == 5000 and config.data.subset_seed == 0
  assert config.optimizer.name == 'adam' and config.optimizer.decay == 'cosine'


def test_claims_keep_workers_apart_and_a_dead_workers_claim_is_taken_over(tmp_path):
  assert store.claim(str(tmp_path), 'a/b')
  assert not store.claim(str(tmp_path), 'a/b')  # Held (by this live process).
  store.release(str(tmp_path), 'a/b')
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True).stdout.strip()
  path = tmp_path / 'claims' / 'c.claim'
  path.parent.mkdir(parents=True, exist_ok=True)
  import socket
  path.write_text(f'{socket.gethostname()} {dead}')
  assert store.claim(str(tmp_path), 'c')
  assert path.read_text().split()[1] == str(os.getpid())


def test_a_damaged_result_file_is_named(tmp_path):
  (tmp_path / 'x.json').write_text('{"name": "x", ')
  with pytest.raises(UserError, match='x.json: not a readable result'):
    store.load_all(str(tmp_path))


def test_intervals_are_t_intervals_and_verdicts_need_them_to_exclude_zero():
  values = [1.0, 2.0, 4.0, 3.5, 2.5]
  iv = stats.interval(values)
  sd = np.std(values, ddof=1)
  assert iv.mean == pytest.approx(2.6)
  assert iv.half_width == pytest.approx(scipy_stats.t.ppf(0.975, 4) * sd / math.sqrt(5))
  assert stats.verdict(iv, 'better', 'worse') == 'better'
  diff = stats.paired({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.5, 1: 1.0, 2: 3.2, 7: 0.0})
  assert diff.n == 3 and diff.mean == pytest.approx((-0.5 + 1.0 - 0.2) / 3)
  assert stats.verdict(diff, 'better', 'worse') == 'no difference shown'
  assert stats.verdict(stats.interval([1.0]), 'better', 'worse') == 'too few seeds'
