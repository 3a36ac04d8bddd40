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
  # 30 epochs joined the length curve when the extension made 60 the headline (deviation 9).
  curve = [r for r in runs.values()
           if r.name.startswith(('mpp_e3/', 'mpp_e6/', 'mpp_e12/', 'mpp_e30/'))]
  assert curve and all(r.priority == protocol.P_LENGTH_CURVE for r in curve
                       if not r.name.startswith('mpp_e12/pct1/'))
  # The convergence rule's fine-tunings (12 epochs, 1%) come right after the headline's.
  assert {r.priority for r in curve if r.name.startswith('mpp_e12/pct1/')} == {
      protocol.P_CONVERGENCE}
  assert max(r.priority for r in runs.values()
             if not r.name.startswith(('mpp_e3/', 'mpp_e6/', 'mpp_e12/', 'mpp_e30/'))
             ) < protocol.P_LENGTH_CURVE


def test_every_arm_sweeps_the_same_grid_on_a_seed_it_does_not_report(runs, study):
  grid = len(study.sweep.learning_rates) * len(study.sweep.crop_padding)
  extended = [p for p, _, _ in study.sweep.extensions]
  for arm in ('scratch', 'mpp_e60', 'mpp_e30', 'mpp_e12'):
    sweep = [r for n, r in runs.items() if n.startswith(f'{arm}/pct1/sweep/')]
    assert len(sweep) == grid + extended.count(f'{arm}/pct1')
    assert {r.seed for r in sweep} == {study.tune_seed}
    reported = {r.seed for n, r in runs.items() if n.startswith(f'{arm}/pct1/seed')}
    assert reported == set(study.seeds) and study.tune_seed not in study.seeds
  matched = [r for n, r in runs.items() if n.startswith('matched/pct10/sweep/')]
  assert len(matched) == len(study.sweep.learning_rates)  # Padding from the scratch arm.
  assert runs['mpp_e30/pct1/sweep/lr0.001_pad2'].backbone == 'mpp/seed0/e30'
  assert runs['mpp_e60/pct1/sweep/lr0.001_pad2'].backbone == 'mpp/seed0/e60'


def test_fine_tuning_waits_for_its_backbone_and_its_own_sweep(runs):
  r = runs['mpp_e30/pct10/seed3']
  assert r.backbone == 'mpp/seed3/e30' and 'mpp/seed3/e30' in r.deps
  assert set(n for n in runs if n.startswith('mpp_e30/pct10/sweep/')) <= set(r.deps)
  assert not any(d.startswith('scratch/') for d in r.deps)
  assert runs['mpp/seed3/e30'].deps == ('mpp/seed3/pretrain',)
  assert runs['mpp/seed3/e30'].steps == 30 * converged.STEPS_PER_EPOCH


def test_the_matched_arm_gets_the_pretraining_steps_too(runs, study):
  m = runs['matched/pct1/seed2']
  assert m.steps == 60 * study.steps_per_epoch + study.budgets.pct1.steps
  assert m.choose == 'matched/pct1/sweep' and m.pad_from == 'scratch/pct1/sweep'
  full = runs['matched/all/seed0']
  assert full.length_from == 'mpp_e60/all' and full.steps == 60 * study.steps_per_epoch


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
             if n.startswith(('scratch/all/sweep/', 'scratch/pct10/sweep/', 'mpp_e60/all/length/',
                              'matched/all/'))}
  results['mpp_e60/all/length/e60']['result']['holdout_best'] = 0.9
  r = choices.resolve(runs['matched/all/seed1'], results, order)
  assert r.steps == 60 * study.steps_per_epoch + results['mpp_e60/all/length/e60']['config'][
      'total_steps']


def test_a_runs_identity_does_not_depend_on_where_the_backbones_are(runs, study, tmp_path):
  r = choices.resolve(runs['mpp_e30/pct1/sweep/lr0.001_pad2'], {},
                      [r.name for r in protocol.runs(study)])
  config = configs.classifier(study, r)
  assert config.init == 'study:mpp/seed0/e30'
  moved = converged.get_config()
  moved.backbones = str(tmp_path / 'elsewhere')
  assert configs.digest(configs.classifier(moved, r)) == configs.digest(config)
  assert configs.runnable(moved, config).init == 'vit_jax:' + os.path.join(
      str(tmp_path / 'elsewhere'), 'mpp_seed0_e30.npz')
  assert config.data.holdout == 5000 and config.data.subset_seed == study.tune_seed
  assert config.data.crop_padding == 2


def test_a_key_the_schema_adds_later_leaves_identities_alone(runs, study):
  r = choices.resolve(runs['pixels/pct1/seed0'], {}, [])
  config = configs.pixels(study, r)
  before = configs.digest(config)
  config.model.layer_norm_epsilon = 1e-6  # Its default: no change either.
  assert configs.digest(config) == before
  assert 'model.layer_norm_epsilon' not in configs.identity(config)
  config.optimizer.weight_decay = 0.3
  assert configs.digest(config) != before
  assert config.optimizer.name == 'adam' and config.optimizer.decay == 'cosine'


def test_claims_keep_workers_apart_and_a_dead_workers_claim_is_taken_over(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys; from study import store; '
       f'assert store.claim({str(tmp_path)!r}, "a/b"); print("held", flush=True); '
       'sys.stdin.readline()'], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert holder.stdout.readline().strip() == 'held'  # Synchronised on its state, not on time.
  assert not store.claim(str(tmp_path), 'a/b')
  assert store.held_by_others(str(tmp_path), ['a/b', 'other'])
  holder.kill()
  holder.wait()
  assert not store.held_by_others(str(tmp_path), ['a/b'])
  assert store.claim(str(tmp_path), 'a/b')  # The kernel dropped the dead holder's lock.
  assert (tmp_path / 'claims' / 'a' / 'b.claim').read_text().split()[1] == str(os.getpid())
  store.release(str(tmp_path), 'a/b')


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


def test_a_grid_edge_extension_is_a_sweep_point_the_seeds_wait_for(runs, study):
  # Deviation 4: the scratch 1% choice (lr 3e-3, padding 2) sat on two edges of its grid.
  ext = runs['scratch/pct1/sweep/lr0.01_pad2']
  grid = runs['scratch/pct1/sweep/lr0.003_pad2']
  assert (ext.lr, ext.pad, runs['scratch/pct1/sweep/lr0.003_pad4'].pad) == (0.01, 2, 4)
  assert (ext.priority, ext.seed, ext.steps, ext.kind) == (grid.priority, grid.seed, grid.steps,
                                                           grid.kind)
  for dependent in ('scratch/pct1/seed1', 'matched/pct1/seed1'):  # padding from this sweep
    assert {ext.name, 'scratch/pct1/sweep/lr0.003_pad4'} <= set(runs[dependent].deps)
  order = [r.name for r in protocol.runs(study)]
  assert order.index(ext.name) > order.index(grid.name)  # Ties keep the grid's point.
  cfg = configs.classifier(study, ext)
  assert (cfg.optimizer.learning_rate, cfg.data.crop_padding) == (0.01, 2)


def test_deviation_5_extends_the_scratch_10_and_mpp_1_sweeps(runs, study):
  """Deviation 5: scratch 10% chose lr 3e-3 padding 2 (two edges); MPP 30 epochs at 1% chose
  lr 3e-4 padding 2 (the padding edge)."""
  for name, grid, lr, pad in (
      ('scratch/pct10/sweep/lr0.01_pad2', 'scratch/pct10/sweep/lr0.003_pad2', 0.01, 2),
      ('scratch/pct10/sweep/lr0.003_pad4', 'scratch/pct10/sweep/lr0.003_pad2', 0.003, 4),
      ('mpp_e30/pct1/sweep/lr0.0003_pad4', 'mpp_e30/pct1/sweep/lr0.0003_pad2', 3e-4, 4)):
    ext, base = runs[name], runs[grid]
    assert (ext.lr, ext.pad) == (lr, pad)
    assert (ext.priority, ext.seed, ext.steps, ext.backbone) == (base.priority, base.seed,
                                                                 base.steps, base.backbone)
  for dependent in ('scratch/pct10/seed1', 'matched/pct10/seed1', 'scratch/all/seed0'):
    assert 'scratch/pct10/sweep/lr0.003_pad4' in runs[dependent].deps, dependent
  assert 'mpp_e30/pct1/sweep/lr0.0003_pad4' in runs['mpp_e30/pct1/seed1'].deps


def test_deviation_6_extends_the_mpp_10_sweep(runs, study):
  """Deviation 6: MPP 30 epochs at 10% chose lr 3e-3 padding 2 (two edges); its seeds and the
  MPP all-labels runs (their padding is this sweep's) wait for both points."""
  for name, lr, pad in (('mpp_e30/pct10/sweep/lr0.01_pad2', 0.01, 2),
                        ('mpp_e30/pct10/sweep/lr0.003_pad4', 0.003, 4)):
    ext, base = runs[name], runs['mpp_e30/pct10/sweep/lr0.003_pad2']
    assert (ext.lr, ext.pad) == (lr, pad)
    assert (ext.priority, ext.seed, ext.steps, ext.backbone) == (base.priority, base.seed,
                                                                 base.steps, base.backbone)
    for dependent in ('mpp_e30/pct10/seed0', 'mpp_e30/pct10/seed4'):
      assert name in runs[dependent].deps, (name, dependent)
    assert name not in runs['scratch/pct10/seed0'].deps


def test_deviation_9_extends_mpp_pretraining_to_60_epochs(runs, study):
  """MPP's convergence rule read 30 epochs +0.88 held-out points above 12: each seed's
  pretraining reruns to 60 epochs, which becomes the headline length (the MPP rows at every
  fraction and the compute-matched arm's budget); 30 epochs joins the length curve, its
  finished runs unchanged."""
  spe = study.steps_per_epoch
  for s in study.seeds:
    pre = runs[f'mpp/seed{s}/pretrain_e60']
    assert (pre.kind, pre.steps, pre.eval_every) == ('pretrain', 60 * spe,
                                                     runs['mpp/seed0/pretrain'].eval_every)
    assert pre.priority == runs[f'mpp/seed{s}/pretrain'].priority
    for name, steps in ((f'mpp/seed{s}/e60', 60 * spe), (f'mpp/seed{s}/e30_rerun', 30 * spe)):
      assert (runs[name].kind, runs[name].deps, runs[name].steps) == ('export', (pre.name,),
                                                                     steps)
    assert runs[f'mpp/seed{s}/pretrain'].steps == 30 * spe  # The first runs, as they ran.
  seed = runs['mpp_e60/pct10/seed2']
  assert (seed.priority, seed.backbone) == (protocol.P_FT_SEEDS, 'mpp/seed2/e60')
  assert runs['mpp_e60/all/seed1'].backbone == 'mpp/seed1/e60'
  assert not any(n.startswith('mpp_e30/all/') for n in runs)
  # The headline arm's sweeps get the points beyond the edges that its 30-epoch sweeps needed
  # (deviations 5 and 6) from the start, so its seeds never start at a provisional choice.
  for fkey, lr, pad in (('pct1', 3e-4, 4), ('pct10', 1e-2, 2), ('pct10', 3e-3, 4)):
    name = f'mpp_e60/{fkey}/sweep/lr{lr:g}_pad{pad}'
    assert runs[name].backbone == 'mpp/seed0/e60' and name in runs[f'mpp_e60/{fkey}/seed0'].deps
  # The rerun of a pretraining exports where the protocol's config says; the trainer config of
  # a first run is unchanged (its finished record's digest still matches).
  first = configs.pretrainer(study, runs['mpp/seed0/pretrain'])
  again = configs.pretrainer(study, runs['mpp/seed0/pretrain_e60'])
  assert first.total_steps == 30 * spe and again.total_steps == 60 * spe
  assert configs.identity(first).keys() == configs.identity(again).keys()
