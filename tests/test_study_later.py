"""The later cells of the study runner end to end at a tiny budget, one worker per cell as a
session runs them beside cell (a): (b) the probes and both transfer pretrainings, (e) the
figures of a run's final weights (from its workdir) and of an exported backbone, (d) the
wall-time measurement, MAE pretrained on to its wall-time export, and SimMIM. What they read of
earlier runs stands in as files: cell (a)'s MPP export (a random initialisation) and the
finished choice grids of (d) (their records with the digests the protocol gives). (c)'s
pretraining is (b)'s MPP path with other keys (tests/test_study_protocol.py checks them)."""
import json
import os

import ml_collections
import numpy as np
import pytest

from configs.study import converged
from study import configs, execute, execute_later, later_cells, protocol, run as run_lib, store
from vit.data import subsets
from vit.evaluators import linear_probe
from vit.formats import vit_jax

TINY_MODEL = dict(hidden_size=16, transformer=dict(mlp_dim=32, num_heads=2, num_layers=2))


def _tiny(tmp):
  c = converged.get_config()
  c.budgets = ml_collections.ConfigDict(
      {'pct1': dict(fraction=0.01, steps=4, eval_every=2, warmup=1)})
  c.seeds, c.full_seeds, c.holdout, c.tune_seed = (0,), (), 1000, 0  # Sweeps only.
  c.steps_per_epoch, c.pretrain_epochs, c.headline_epochs, c.later_epochs = 2, (2,), 2, 2
  c.extension = None  # No rerun to a longer length (the real study's deviation 9).
  c.sweep.update(learning_rates=(1e-3,), crop_padding=(2,), extensions=())  # No 10% sweep.
  # Batches of 16 and evaluations of 100 images: a test of the runner, not of the training.
  # (Evaluations round up to whole batches; the wall-time measurement times these batches.)
  for part in (c.classifier, c.pretrainer):
    part.update(batch_size=16, eval_batch_size=100, log_every=2)
    part.model.update(TINY_MODEL)
  c.pretrainer.mpp.eval_examples = 100
  c.transfer.update(epochs=2, steps_per_epoch=2, eval_every_epochs=2)
  c.probes.update(shots=(1, 2), draws=1)
  c.mim.update(choice_epochs=1, learning_rates=(1e-3,), mae_decoders=((16, 1),),
               simmim_mask_patch_sizes=(8,), eval_examples=100, walltime_rounds=1,
               walltime_steps=2)
  c.figures.update(runs=('transfer/supervised/seed0/pretrain', 'mpp/seed0/e2'),
                   out=str(tmp / 'figures'))
  c.results, c.backbones = str(tmp / 'results'), str(tmp / 'backbones')
  c.inflight, c.report = str(tmp / 'inflight'), str(tmp / 'results.md')
  return c


def _small_splits(splits):
  """The probes' splits cut to a few hundred images: a test of the runner, not of the data."""
  def cut(config):
    out = {}
    for name, source in splits(config).items():
      keep = np.arange(300 if name != 'holdout' else 200)
      out[name] = subsets.Subset(source, keep, subsets.labels_of(source)[keep], name)
    return out
  return cut


def _stand_ins(c) -> None:
  """Finished runs the later cells read, written as the runner would record them."""
  plan = {r.name: r for r in protocol.runs(c)}
  order = list(plan)
  config = configs.pretrainer(c, plan['mpp/seed0/pretrain'])
  _, params = execute_later.random_backbone(config)
  path = configs.backbone_file(c, 'mpp/seed0/e2')
  os.makedirs(os.path.dirname(path))
  vit_jax.save(params, path)
  store.write(c.results, {'name': 'mpp/seed0/e2', 'result': {
      'file': os.path.basename(path), 'sha256': execute.sha256(path), 'step': 4}})
  for objective in ('mae', 'simmim'):
    for name in [n for n in order if n.startswith((f'{objective}/grid/', f'{objective}/choice/'))
                 and plan[n].kind != 'export']:
      config = run_lib._config(c, plan[name], {}, order)  # pylint: disable=protected-access
      result = {'holdout_best': 0.5, 'test_at_best': 0.5} if '/choice/' in name else {}
      store.write(c.results, {'name': name, 'config': config.to_dict(), 'result': result,
                              'digest': configs.digest(config)})


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('later')
  c, work = _tiny(tmp), str(tmp / 'work')
  _stand_ins(c)
  patch = pytest.MonkeyPatch()
  patch.setattr(linear_probe, 'splits', _small_splits(linear_probe.splits))
  done = {}
  try:  # One worker per cell, as far as the priority given.
    for cells, last in (('b', later_cells.P_B_PRETRAIN0), ('e', later_cells.P_E_FIGURES),
                        ('d', later_cells.P_D_PRETRAIN0)):
      c.cells, c.only_priority = cells, last
      done[cells] = run_lib.work(c, work)
  finally:
    patch.undo()
  return c, done, store.load_all(c.results)


def test_each_cell_runs_what_its_priority_allows(finished):
  _, done, results = finished
  # (b): 3 probes and 2 transfer pretrainings; (e): 2 figures; (d): the wall time, MAE, SimMIM.
  assert done == {'b': 5, 'e': 2, 'd': 3}
  assert {'transfer/mpp/seed0/e2', 'transfer/supervised/seed0/e2', 'mae/seed0/e2',
          'mae/seed0/wall', 'simmim/seed0/e2'} <= set(results)


def test_probes_read_pixels_an_init_and_each_export(finished):
  _, _, results = finished
  pixels = results['probe/pixels']['result']
  assert set(pixels) >= {'pixels/1shot', 'pixels/2shot', 'pixels/linear', 'pixels/linear_l2'}
  mpp = results['probe/mpp_e2/seed0']
  assert mpp['config']['init'] == 'study:mpp/seed0/e2' and mpp['config']['probe']['block'] == 1
  assert mpp['result']['backbone_sha256'] == results['mpp/seed0/e2']['result']['sha256']
  for rep in ('class_token', 'mean_patch', 'block1_mean_patch'):
    assert 0.0 <= mpp['result'][f'{rep}/linear'] <= 1.0
  assert results['probe/init/seed0']['result'] != mpp['result']


def test_transfer_pretrains_on_its_classes_and_exports_the_backbone(finished):
  c, _, results = finished
  sup = results['transfer/supervised/seed0/pretrain']
  assert sup['config']['data']['classes'] == [0, 1, 2, 3, 4]
  assert sup['config']['model']['num_classes'] == 5
  assert sup['config']['optimizer']['decay'] == 'rsqrt'
  assert [p[0] for p in sup['result']['curve']] == [4] and sup['result']['curve'][-1][1] > 0
  export = results['transfer/supervised/seed0/e2']['result']
  assert export['holdout_accuracy'] == sup['result']['curve'][-1][1]
  params = vit_jax.load(os.path.join(c.backbones, export['file'])).params
  assert 'head' not in params and 'encoder_norm' in params['Transformer']
  assert results['transfer/mpp/seed0/pretrain']['config']['data']['classes'] == [0, 1, 2, 3, 4]


def test_mae_runs_on_to_its_wall_time_at_the_grids_choice(finished):
  c, _, results = finished
  wall = results['mae/walltime']['result']
  assert wall['ratio'] == pytest.approx(wall['mae_img_s'] / wall['mpp_img_s'])
  assert wall['wall_steps'] % c.steps_per_epoch == 0 and wall['wall_steps'] >= c.steps_per_epoch
  pre = results['mae/seed0/pretrain']
  assert pre['config']['total_steps'] == max(4, wall['wall_steps'])
  assert pre['config']['mae']['decoder']['hidden_size'] == 16
  assert results['mae/seed0/wall']['result']['step'] == wall['wall_steps']
  assert results['mae/seed0/e2']['result']['step'] == 4
  assert results['simmim/seed0/pretrain']['config']['simmim']['mask_patch_size'] == 8
  assert results['simmim/seed0/pretrain']['result']['curve'][-1][2] > 0  # Held-out loss.


def test_figures_come_from_final_weights_and_an_export(finished):
  c, _, results = finished
  fig = results['figures/transfer_supervised_seed0_pretrain']['result']
  final = configs.final_weights_file(c, 'transfer/supervised/seed0/pretrain')
  assert fig['weights_sha256'] == execute.sha256(final)
  assert vit_jax.load(final).params['head']['kernel'].shape == (16, 5)  # The last checkpoint's.
  for name in ('attention_distance.png', 'posemb_similarity.png', 'embedding_filters.png',
               'inspect.json'):
    assert os.path.exists(os.path.join(fig['out'], name)), name
  summary = json.load(open(os.path.join(fig['out'], 'inspect.json')))
  assert len(summary['mean_attention_distance_px']) == 2  # One per block.
  assert fig['mean_attention_distance_px'] == summary['mean_attention_distance_px']
  mpp = results['figures/mpp_seed0_e2']['result']
  assert mpp['weights_sha256'] == results['mpp/seed0/e2']['result']['sha256']
  # The exported MPP encoder's rollout reads its patch tokens' mean, as its probes do; the
  # classifier's its class token.
  rollout_of = lambda r: json.load(open(os.path.join(r['out'], 'inspect.json')))['rollout_of']
  assert (rollout_of(mpp), rollout_of(fig)) == ('mean of patch tokens', 'class token')


def test_a_rerun_of_each_cell_runs_nothing_and_finds_every_digest_unchanged(finished):
  c, _, _ = finished
  for cells, last in (('b', later_cells.P_B_PRETRAIN0), ('e', later_cells.P_E_FIGURES),
                      ('d', later_cells.P_D_PRETRAIN0)):
    c.cells, c.only_priority = cells, last
    assert run_lib.work(c, str(os.path.dirname(c.results)) + '/other_work') == 0
