"""The pre-registered study's plan, choices, identities, claims and statistics (study/)."""
import math
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from configs.study import converged
from study import choices, configs, later_cells, protocol, stats, store
from vit.errors import ConfigError, UserError


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
  assert max(r.priority for r in runs.values() if r.cell == 'a' and not r.name.startswith(
      ('mpp_e3/', 'mpp_e6/', 'mpp_e12/', 'mpp_e30/'))) < protocol.P_LENGTH_CURVE
  # The cells pre-registered for later sessions come after all of cell (a).
  assert min(r.priority for r in runs.values() if r.cell != 'a') > protocol.P_LENGTH_CURVE


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


def test_a_run_in_flight_travels_to_a_fresh_workdir_and_is_dropped_once_finished(tmp_path):
  from study import snapshot
  study = converged.get_config()
  study.results, study.inflight = str(tmp_path / 'results'), str(tmp_path / 'inflight')
  old = tmp_path / 'old' / 'runs' / 'mpp' / 'seed0' / 'pretrain'
  (old / 'checkpoints' / '1290').mkdir(parents=True)
  (old / 'checkpoints' / '1290' / 'state').write_bytes(b'weights')
  (old / 'curve.json').write_text('[[1290, 0.5, 1.0]]')
  (old / 'segments.json').write_text('[{"commit": "a", "wall_s": 5.0, "cpu_s": 4.0}]')
  snapshot.write_identity(str(tmp_path / 'old'), 'mpp/seed0/pretrain', 'abc')
  (tmp_path / 'old' / 'runs' / 'scratch').mkdir()  # No checkpoint: nothing to carry.
  written = snapshot.save(study, str(tmp_path / 'old'))
  assert [os.path.basename(p) for p in written] == ['mpp_seed0_pretrain.tar']
  fresh = tmp_path / 'fresh'
  # Another config's run of the same name (the demo's) never takes it.
  assert not snapshot.restore(study, str(fresh), 'mpp/seed0/pretrain', 'other')
  assert not (fresh / 'runs' / 'mpp' / 'seed0' / 'pretrain' / 'checkpoints').exists()
  assert snapshot.restore(study, str(fresh), 'mpp/seed0/pretrain', 'abc')
  moved = fresh / 'runs' / 'mpp' / 'seed0' / 'pretrain'
  assert (moved / 'checkpoints' / '1290' / 'state').read_bytes() == b'weights'
  assert (moved / 'segments.json').read_text() == (old / 'segments.json').read_text()  # Its time.
  assert not snapshot.restore(study, str(fresh), 'mpp/seed0/pretrain', 'abc')  # Has its own.
  store.write(study.results, {'name': 'mpp/seed0/pretrain', 'result': {}})
  assert snapshot.save(study, str(tmp_path / 'old')) == []
  assert not os.listdir(study.inflight)  # Finished: its snapshot is removed.


def test_a_snapshot_beside_a_live_run_packs_only_whole_steps(tmp_path, monkeypatch):
  """The run goes on while it is packed (a session's end, workers running): a step that orbax
  deletes while the tar reads it (here: as the tar reaches its first file) starts the tar
  again; what the run is still writing (an unfinished step, a temporary, its lock) is left
  out."""
  import shutil
  import tarfile
  from study import snapshot
  study = converged.get_config()
  study.results, study.inflight = str(tmp_path / 'results'), str(tmp_path / 'inflight')
  rundir = tmp_path / 'work' / 'runs' / 'mpp' / 'seed0' / 'pretrain'
  for step in ('1', '2', '3.orbax-checkpoint-tmp'):
    (rundir / 'checkpoints' / step).mkdir(parents=True)
    (rundir / 'checkpoints' / step / 'state').write_bytes(b'weights')
  (rundir / '.lock').write_text('pid 1\n')
  (rundir / '.curve.json-partial-host-1-x').write_text('[[')
  (rundir / 'curve.json').write_text('[]')
  add = tarfile.TarFile.add

  def add_while_step_1_goes(tar, name, *args, **kwargs):
    if name.endswith(os.path.join('checkpoints', '1', 'state')) and os.path.exists(name):
      shutil.rmtree(os.path.dirname(name))  # As orbax past keep_checkpoints, mid-tar.
    return add(tar, name, *args, **kwargs)

  monkeypatch.setattr(tarfile.TarFile, 'add', add_while_step_1_goes)
  written, = snapshot.save(study, str(tmp_path / 'work'))
  with tarfile.open(written) as tar:
    assert sorted(tar.getnames()) == ['checkpoints', 'checkpoints/2', 'checkpoints/2/state',
                                      'curve.json']
  assert os.listdir(study.inflight) == ['mpp_seed0_pretrain.tar']


def test_the_digests_of_cell_a_are_those_of_the_studys_commit():
  """Every run of cell (a) and the length curve keeps the config (and so the digest) it had at
  commit 8115426, where it runs: tests/testdata/study_digests.py made the pinned file there.
  The grid-edge points added later (deviation 4) are new runs of their own; deviation 9 (MPP
  extended to 60 epochs) adds the 60-epoch arm, drops the 30-epoch arm at all labels (one of
  its 9 runs had finished: it stays reported) and gives the compute-matched arm (none of it
  run) 60 epochs' steps."""
  import json
  from tests.testdata import study_digests
  pinned = json.loads((Path(__file__).parent / 'testdata' / 'study_digests_8115426.json')
                      .read_text())
  now = study_digests.digests()
  extensions = {protocol._sweep_name(*e) for e in converged.get_config().sweep.extensions}  # pylint: disable=protected-access
  longer = {n for n in now if n.startswith('mpp_e60/') or n.endswith('/pretrain_e60')}
  dropped = {n for n in pinned if n.startswith('mpp_e30/all/')}
  rebudgeted = {n for n in pinned if n.startswith('matched/')}
  assert set(now) - set(pinned) == extensions | longer
  assert set(pinned) - set(now) == dropped and len(dropped) == 9
  assert all(now[n] != pinned[n] for n in rebudgeted) and len(rebudgeted) == 21
  kept = set(pinned) - dropped - rebudgeted
  assert len(pinned) == 185 and {n: now[n] for n in kept} == {n: pinned[n] for n in kept}


def test_the_later_cells_are_all_listed_with_their_cell(runs, study):
  by_cell = {c: [r for r in runs.values() if r.cell == c] for c in protocol.CELLS}
  assert {r.name for r in by_cell['e']} == {'figures/scratch_all_seed0', 'figures/mpp_seed0_e30'}
  assert runs['figures/scratch_all_seed0'].deps == ('scratch/all/seed0',)
  names = set(runs)
  for s in study.seeds:  # (b) transfer: 3 arms x 2 fractions, 5 seeds; pretrainings per seed.
    for arm in ('transfer/scratch', 'transfer/mpp_e30', 'transfer/supervised_e30'):
      assert {f'{arm}/pct1/seed{s}', f'{arm}/pct10/seed{s}'} <= names
    assert {f'transfer/mpp/seed{s}/e30', f'transfer/supervised/seed{s}/e30',
            f'probe/init/seed{s}'} <= names
    assert {f'probe/mpp_e{e:g}/seed{s}' for e in study.pretrain_epochs} <= names
  pre = runs['transfer/mpp/seed2/pretrain']
  assert pre.classes == (0, 1, 2, 3, 4) and pre.steps == 30 * 215
  ft = runs['transfer/mpp_e30/pct10/seed2']
  assert ft.classes == (5, 6, 7, 8, 9) and ft.backbone == 'transfer/mpp/seed2/e30'
  # (c) one pretraining (seed 0) per target; every seed fine-tunes it.
  for t in ('pixels', 'down4', 'down2', 'grey5', 'rate15'):
    assert runs[f'mpp_{t}_e30/pct1/seed3'].backbone == f'mpp_{t}/seed0/e30'
    assert not any(n.startswith(f'mpp_{t}/seed1/') for n in names)
  assert runs['mpp_grey5_e30/pct10/seed1'].channels == 1
  assert dict(runs['mpp_down2/seed0/pretrain'].overrides)['mpp.grid'] == 2
  # (d) MAE at 30 epochs and at MPP's wall time, SimMIM at 30; grids on the tuning seed.
  for arm in ('mae_e30', 'mae_wall', 'simmim_e30'):
    assert {f'{arm}/pct1/seed4', f'{arm}/pct10/seed0', f'probe/{arm}/seed1'} <= names
  grid = [r for r in runs.values() if r.name.startswith('mae/choice/')]
  assert len(grid) == 9 and {r.seed for r in grid} == {study.tune_seed}
  assert len([n for n in names if n.startswith('simmim/choice/')]) == 6
  assert runs['mae/seed0/wall'].steps_from == 'mae/walltime'
  assert 'mae/walltime' in runs['mae/seed0/pretrain'].deps
  assert runs['simmim/seed3/pretrain'].settings_from == 'simmim/choice'
  assert all(runs[n].priority > protocol.P_LENGTH_CURVE for n in names if runs[n].cell != 'a')


def test_a_mae_pretraining_takes_its_grid_choice_and_the_wall_time(runs, study):
  order = [r.name for r in protocol.runs(study)]
  results = {n: _record(n, 0.5) for n in runs if n.startswith('mae/choice/')}
  results['mae/choice/dec64x2_lr0.0003']['result']['holdout_best'] = 0.9
  results['mae/walltime'] = {'name': 'mae/walltime', 'result': {'wall_steps': 40 * 430}}
  changes = later_cells.grid_changes(study, 'mae')
  pre = choices.resolve_settings(runs['mae/seed1/pretrain'], results, order, changes)
  assert dict(pre.overrides)['mae.decoder.hidden_size'] == 64 and pre.steps == 40 * 430
  config = configs.pretrainer(study, pre)
  assert config.mae.decoder.num_heads == 4 and config.optimizer.learning_rate == 3e-4
  assert config.optimizer.decay == 'rsqrt' and config.data.eval_split == 'holdout'
  wall = choices.resolve_settings(runs['mae/seed1/wall'], results, order, changes)
  e30 = choices.resolve_settings(runs['mae/seed1/e30'], results, order, changes)
  assert (wall.steps, e30.steps) == (40 * 430, 30 * 430)
  results['mae/walltime']['result']['wall_steps'] = 10 * 430  # MAE slower: runs 30 epochs anyway.
  assert choices.resolve_settings(runs['mae/seed1/pretrain'], results, order,
                                  changes).steps == 30 * 430


def test_the_cells_a_worker_takes_are_named_in_one_line(study):
  assert protocol.cells_of(study) == protocol.CELLS
  c = converged.get_config()
  c.cells = 'b, c,d,e'
  assert protocol.cells_of(c) == ('b', 'c', 'd', 'e')
  c.cells = 'a,f'
  with pytest.raises(UserError, match=r"config.cells='a,f': must list cells among a,b,c,d,e"):
    protocol.cells_of(c)


def test_a_worker_of_the_later_cells_takes_none_of_cell_a(tmp_path, monkeypatch):
  """With --config.cells=b,c,d,e nothing of cell (a) runs, though it is what is runnable."""
  from study import run as run_lib
  c = converged.get_config()
  c.results, c.cells = str(tmp_path / 'results'), 'b,c,d,e'
  c.backbones, c.inflight = str(tmp_path / 'backbones'), str(tmp_path / 'inflight')
  c.only_priority = later_cells.P_B_PROBES
  taken = []
  monkeypatch.setattr(run_lib, '_execute', lambda study, run, *a: taken.append(run.name) or {})
  monkeypatch.setattr(run_lib, '_record', lambda study, name, *a, **k: store.write(
      study.results, {'name': name, 'result': {}, 'digest': None}))
  monkeypatch.setattr(run_lib, '_check_finished', lambda *a: None)
  assert run_lib.work(c, str(tmp_path / 'work')) == 6
  # Only the probes that need nothing of cell (a): those of the MPP exports wait for them.
  assert sorted(taken) == sorted(['probe/pixels'] + [f'probe/init/seed{s}' for s in c.seeds])


def test_a_grid_edge_extension_is_a_sweep_point_the_seeds_and_the_report_wait_for(runs, study):
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


def test_a_bad_grid_extension_names_the_key(study):
  for bad in [('scratch/pct7', 0.01, 2), ('scratch/pct1', 0.003, 2)]:
    s = converged.get_config()
    s.sweep.extensions = (bad,)
    with pytest.raises(ConfigError, match='config.sweep.extensions'):
      protocol.runs(s)


def test_the_report_marks_a_choice_at_the_grid_edge(runs, study):
  from study import report
  st = report.Study.__new__(report.Study)
  st.runs = list(runs.values())
  assert report.grid_edges(st, 'scratch/pct1/sweep/lr0.01_pad2') == ['largest learning rate']
  assert report.grid_edges(st, 'scratch/pct1/sweep/lr0.003_pad4') == ['largest padding']
  assert report.grid_edges(st, 'scratch/pct1/sweep/lr0.001_pad2') == ['largest padding']
  assert report.grid_edges(st, 'scratch/pct1/sweep/lr0.003_pad2') == []  # Both extended.
  # The 60-epoch sweep's points added in advance (deviation 9) extend only their own lines;
  # deviation 10's point extends lr 1e-3's, and is at the edge itself.
  assert report.grid_edges(st, 'mpp_e60/pct1/sweep/lr0.003_pad2') == [
      'largest learning rate', 'largest padding']
  assert report.grid_edges(st, 'mpp_e60/pct1/sweep/lr0.001_pad2') == []
  assert report.grid_edges(st, 'mpp_e60/pct1/sweep/lr0.001_pad4') == [
      'largest learning rate', 'largest padding']  # Along the padding-4 line too.
  assert report.grid_edges(st, 'mpp_e60/pct1/sweep/lr0.0003_pad2') == []
  # Deviation 12: the 60-epoch 10% choice (lr 1e-3, padding 2) is extended along its padding;
  # deviation 13: that point (padding 4) won and is extended along both of its lines.
  assert report.grid_edges(st, 'mpp_e60/pct10/sweep/lr0.001_pad2') == []
  assert report.grid_edges(st, 'mpp_e60/pct10/sweep/lr0.001_pad4') == []
  assert report.grid_edges(st, 'mpp_e60/pct10/sweep/lr0.001_pad6') == ['largest padding']
  assert report.grid_edges(st, 'mpp_e60/pct10/sweep/lr0.0003_pad4') == [
      'smallest learning rate', 'largest padding']
  assert report.grid_edges(st, 'scratch/pct10/sweep/lr0.0001_pad0') == [
      'smallest learning rate', 'smallest padding']


def test_the_demo_runs_its_own_grid_only():
  from configs.study import demo
  sweep = sorted(r.name for r in protocol.runs(demo.get_config())
                 if r.name.startswith(('scratch/pct1/sweep/', 'mpp_e2/pct1/sweep/')))
  # One rate for both arms: the earlier two-point sweep's held-out choice (configs/study/demo.py).
  assert sweep == ['mpp_e2/pct1/sweep/lr0.003_pad2', 'scratch/pct1/sweep/lr0.003_pad2']


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
