"""Checkpoints in the one training loop, in process on a tiny ViT: exact resume (state and
batches, also with another data worker count), last-K-and-best retention, damaged and partly
written checkpoints, incompatible configs, unwritable workdirs, SIGINT, and the non-finite
guard."""
import dataclasses
import glob
import os
import re
import shutil
import signal
import socket
from typing import Any, NamedTuple

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache as cc

from supervised import objective
from vit import checkpoints, config as config_lib
from vit.data import fashion_mnist, pipeline
from vit.errors import UserError
from vit.testing import commands
from vit.training import loop

NUM_CLASSES = 4
CLASS_NAMES = [f'class {i}' for i in range(NUM_CLASSES)]


def tiny_config(**overrides):
  config = config_lib.defaults()
  config.image_size = 8
  config.batch_size = 4
  config.total_steps = 8
  config.data.channels = 1
  config.model.patches.size = (4, 4)
  config.model.hidden_size = 8
  config.model.transformer.mlp_dim = 16
  config.model.transformer.num_heads = 2
  config.model.transformer.num_layers = 1
  config.model.num_classes = NUM_CLASSES
  # A constant rate, so that a run stopped at step 4 (total_steps=4) and extended to 8 follows
  # the same schedule as a run of 8.
  config.optimizer.decay = 'constant'
  config.optimizer.learning_rate = 0.01
  config.ema_decay = 0.9
  config.log_every = 2
  config.checkpoint_every = 2
  config.keep_checkpoints = 2
  for key, value in overrides.items():
    config[key] = value
  return config


class ScriptedEvaluator:
  """Returns the given scores in turn: decides which step is "best" independently of training."""

  name = 'eval'

  def __init__(self, scores):
    self.scores = list(scores)

  def evaluate(self, params):
    del params
    return {'score': self.scores.pop(0)}


def batch_at(index: int, poison: bool) -> dict:
  rng = np.random.default_rng(index)
  return {'image': rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8),
          'label': rng.integers(0, NUM_CLASSES, (4,), dtype=np.int32),
          'poison': np.full((4,), poison)}


def tiny_task(config, poison_steps=(), evaluators=(), hook=None):
  """Batch i is a function of i only (step i + 1 trains on it); a poisoned step's loss is NaN."""
  model = config_lib.build_model(config_lib.validate(config))
  base_loss = objective.make_loss_fn(model)

  def loss_fn(params, batch, rng, train):
    loss, metrics = base_loss(params, batch, rng, train)
    return jnp.where(batch['poison'].any(), jnp.nan, loss), metrics

  data = grain.MapDataset.range(10**6).map(lambda i: batch_at(i, i + 1 in poison_steps))
  return loop.Task(
      init_params=lambda rng: model.init(rng, jnp.zeros((1, 8, 8, 1)), train=False)['params'],
      loss_fn=loss_fn, train_data=data.to_iter_dataset(), evaluators=list(evaluators),
      periodic_hook=hook, hook_every=1 if hook else 0)


def train(workdir, config=None, **task_kwargs):
  config = config or tiny_config()
  return loop.train(config, str(workdir), tiny_task(config, **task_kwargs)).state


def host_tree(state) -> dict:
  leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(state))
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def assert_bitwise_equal(a, b):
  a, b = host_tree(a), host_tree(b)
  assert a.keys() == b.keys()
  for key in a:
    assert a[key].tobytes() == b[key].tobytes(), key


@pytest.fixture(scope='module', autouse=True)
def compilation_cache(tmp_path_factory):
  """Every test here compiles the same init and step; XLA's persistent cache compiles them once
  (from ~4 s to ~0.3 s a train() call on 2 cores). The results are the same executables'."""
  names = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
           'jax_persistent_cache_min_entry_size_bytes')
  before = {name: getattr(jax.config, name) for name in names}
  cc.reset_cache()
  jax.config.update(names[0], str(tmp_path_factory.mktemp('xla_cache')))
  jax.config.update(names[1], 0.0)
  jax.config.update(names[2], 0)
  yield
  cc.reset_cache()
  for name, value in before.items():
    jax.config.update(name, value)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """An uninterrupted run of 8 steps."""
  return train(tmp_path_factory.mktemp('reference'))


# The finished runs below are trained once for the module; a test takes its own copy of one's
# workdir (`copy_of`) and damages or resumes that, as it did with a run of its own: a run is
# deterministic (the same config gives the same bits), and each costs a train() call (tracing
# the init and the step again, its saves), the bulk of this file's time.


class Finished(NamedTuple):
  workdir: str
  state: Any  # What its train() returned.


def scored_config(total_steps):
  # No EMA: its evaluation would take a scripted score too.
  return tiny_config(total_steps=total_steps, eval_every=2, best_metric='eval/score',
                     ema_decay=0.0)


@pytest.fixture(scope='module')
def finished2(tmp_path_factory):
  """A finished run of 2 steps (checkpoint 2) whose task names its classes."""
  workdir, config = tmp_path_factory.mktemp('finished2'), tiny_config(total_steps=2)
  task = dataclasses.replace(tiny_task(config), class_names=CLASS_NAMES)
  return Finished(str(workdir), loop.train(config, str(workdir), task).state)


@pytest.fixture(scope='module')
def finished4(tmp_path_factory):
  """A finished run of 4 steps (checkpoints 2 and 4)."""
  workdir = tmp_path_factory.mktemp('finished4')
  return Finished(str(workdir), train(workdir, tiny_config(total_steps=4)))


@pytest.fixture(scope='module')
def finished6(tmp_path_factory):
  """A finished run of 6 steps (checkpoints 4 and 6)."""
  workdir = tmp_path_factory.mktemp('finished6')
  return Finished(str(workdir), train(workdir, tiny_config(total_steps=6)))


@pytest.fixture(scope='module')
def scored8(tmp_path_factory):
  """A finished run of 8 steps evaluated at steps 2, 4, 6, 8 (scores 0.5, 0.9, 0.3, 0.4) with
  best_metric eval/score: step 4 scores best, kept beside the last 2 (checkpoints 4, 6, 8)."""
  workdir = tmp_path_factory.mktemp('scored8')
  return Finished(str(workdir), train(workdir, scored_config(8),
                                      evaluators=[ScriptedEvaluator([0.5, 0.9, 0.3, 0.4])]))


def copy_of(run: Finished, tmp_path):
  """`tmp_path` (empty), now holding every file `run` wrote: the test's own run to damage."""
  shutil.copytree(run.workdir, tmp_path, dirs_exist_ok=True)
  return tmp_path


def steps_on_disk(workdir) -> list[int]:
  return sorted(int(os.path.basename(p)) for p in glob.glob(f'{workdir}/checkpoints/[0-9]*'))


def test_resumed_run_equals_uninterrupted(tmp_path, reference, finished4, capsys):
  copy_of(finished4, tmp_path)  # A run of 4 steps, extended to 8.
  resumed = train(tmp_path)
  out = capsys.readouterr().out
  assert f'resumed from {tmp_path} at step 4' in out
  assert 'total_steps: 4 -> 8' in out
  # Params, Adam moments, EMA, rng, step: the same bits, so the resumed run trained on the
  # same batches 5..8 (the grain iterator's position was restored) with the same keys.
  assert_bitwise_equal(resumed, reference)
  assert int(resumed.step) == 8 and resumed.ema_params is not None
  # Each run's events start a TensorBoard session at its first step; the second START is a
  # restart, which drops what the first run logged from step 5 on (vit.training.events).
  from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
  starts = [[e.step for e in EventFileLoader(f).Load() if e.HasField('session_log')]
            for f in glob.glob(f'{tmp_path}/events.out.tfevents.*')]
  assert sorted(starts) == [[1], [5]]


def test_resume_with_another_worker_count_is_bitwise_exact(tmp_path, capsys):
  """The real input pipeline, saved with no data workers and resumed with one: grain seeds
  every record by its position, so the position carried over gives the same batches. The
  newest step is damaged: the run falls back to step 2, whose position is the one carried."""
  rng = np.random.default_rng(0)
  source = fashion_mnist.ArraySource(rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8),
                                     rng.integers(0, NUM_CLASSES, 64).astype(np.int32),
                                     class_names=None)

  def run(workdir, workers, total_steps):
    config = tiny_config(total_steps=total_steps)
    config.data.worker_count = workers
    model = config_lib.build_model(config_lib.validate(config))
    task = loop.Task(
        init_params=lambda rng: model.init(rng, jnp.zeros((1, 8, 8, 1)), train=False)['params'],
        loss_fn=objective.make_loss_fn(model), evaluators=[],
        train_data=pipeline.train_dataset(config, source=source))
    return loop.train(config, str(workdir), task).state

  reference = run(tmp_path / 'reference', 0, 4)
  # The run saved with no workers is the reference's own first steps (its checkpoints 2, 4).
  shutil.copytree(tmp_path / 'reference', tmp_path / 'run')
  truncate_state(tmp_path / 'run', 4)
  capsys.readouterr()
  resumed = run(tmp_path / 'run', 1, 4)
  out = capsys.readouterr().out
  assert ('note: the data iterator was saved by 1 process x 0 data workers, this run has 1 '
          'process x 1 data worker: input position re-derived for it: epoch 0, record 8 of the '
          "64 in this process's shard; the sample order is unchanged") in out
  assert out.index('note: the data iterator') < out.index('step 4/4')  # Before the first step.
  assert_bitwise_equal(resumed, reference)


def test_keeps_last_k_and_the_best(tmp_path, scored8):
  # Evaluations at steps 2, 4, 6, 8 (`scored8`), then (resumed) 10: step 4 scores best.
  copy_of(scored8, tmp_path)
  assert steps_on_disk(tmp_path) == [4, 6, 8]  # The last 2 and the best.
  train(tmp_path, scored_config(10), evaluators=[ScriptedEvaluator([0.2])])
  assert steps_on_disk(tmp_path) == [4, 8, 10]  # The last 2 and the best, read back from disk.
  mngr = checkpoints.manager(str(tmp_path), read_only=True)
  assert checkpoints.best_step(mngr, 'eval/score') == 4
  assert checkpoints.best_step(mngr, 'eval/score', 'min') == 10


@pytest.mark.parametrize('damage', ['cut short', 'changed in place'])
def test_a_damaged_metrics_file_is_moved_aside_not_a_traceback(tmp_path, scored8, damage,
                                                                capsys):
  """orbax reads the metrics of every step when a manager opens: a best step's
  `metrics/metrics` cut short raised the JSON parser's traceback from the trainer and every
  reader of the run; one changed in place (valid JSON, another score) ranked the step on a
  score it never had. Readers read on; the run moves the step aside (unranked, retention
  would delete it) naming the file, and goes on."""
  copy_of(scored8, tmp_path)
  assert steps_on_disk(tmp_path) == [4, 6, 8]
  metrics = tmp_path / 'checkpoints' / '4' / 'metrics' / 'metrics'
  text = metrics.read_text()
  assert '"eval/score": 0.9' in text
  metrics.write_text(text[:len(text) // 2] if damage == 'cut short'
                     else text.replace('"eval/score": 0.9', '"eval/score": 0.1'))
  capsys.readouterr()
  assert checkpoints.read_params(str(tmp_path))[2] == 8
  assert capsys.readouterr().err == ''
  train(tmp_path, scored_config(10), evaluators=[ScriptedEvaluator([0.2])])
  said = ('is not valid JSON (cut short or overwritten)' if damage == 'cut short' else
          'is damaged: its CRC-32 differs from the one saved with it in checksums.json')
  (moved,) = glob.glob(f'{tmp_path}/checkpoints.damaged/4.*')
  assert (f'warning: checkpoint {tmp_path}/checkpoints/4 is unreadable (metrics/metrics '
          f'{said}); moved it to '
          f'{moved}\n') in capsys.readouterr().err
  assert steps_on_disk(tmp_path) == [8, 10]


def test_best_mode_min_keeps_the_lowest(tmp_path):
  config = tiny_config(total_steps=8, eval_every=2, best_metric='eval/score', best_mode='min',
                       ema_decay=0.0)
  train(tmp_path, config, evaluators=[ScriptedEvaluator([0.5, 0.1, 0.3, 0.4])])
  assert steps_on_disk(tmp_path) == [4, 6, 8]


def test_unknown_best_metric_is_a_config_error(tmp_path):
  config = tiny_config(total_steps=2, best_metric='eval/accuracy', ema_decay=0.0)
  with pytest.raises(config_lib.ConfigError, match=r"best_metric='eval/accuracy'.*eval/score"):
    train(tmp_path, config, evaluators=[ScriptedEvaluator([0.5])])
  assert steps_on_disk(tmp_path) == [2]  # Reported after the save: no training is lost.


def test_a_best_metric_no_evaluator_makes_is_refused_before_training(tmp_path):
  config = tiny_config(total_steps=2, best_metric='holdout/accuracy', ema_decay=0.0)
  with pytest.raises(config_lib.ConfigError,
                     match=r"best_metric='holdout/accuracy': names no evaluation of this run: "
                           r'its metrics are eval/\.\.\.$'):
    train(tmp_path / 'a', config, evaluators=[ScriptedEvaluator([0.5])])
  with pytest.raises(config_lib.ConfigError, match=r'none \(it evaluates nothing\)$'):
    train(tmp_path / 'b', config)
  assert steps_on_disk(tmp_path / 'a') == []  # Refused before the first step.
  # The key that turned the evaluation off is named (it was 'eval_examples=0?', no section).
  from configs.mae import fashion_mnist as mae_config
  config = mae_config.get_config()
  config.update(best_metric='eval/loss', best_mode='min')
  config.mae.eval_examples = 0
  with pytest.raises(config_lib.ConfigError,
                     match=r'none \(it evaluates nothing: mae.eval_examples=0 and '
                           r'fewshot.enabled=False\)$'):
    loop.train(config, str(tmp_path / 'c'), loop.Task(
        init_params=None, loss_fn=None, train_data=None, evaluators=[]))


def test_a_best_metric_its_evaluator_does_not_make_is_refused_before_training(tmp_path):
  """A misspelt name, with eval_every=0, was found at the only evaluation: the last step."""
  stated = ScriptedEvaluator([0.5])
  stated.metric_names = ('score',)
  config = tiny_config(total_steps=2, eval_every=0, best_metric='eval/scroe', ema_decay=0.9)
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config.best_metric='eval/scroe': not among the metrics of this "
                           r"run's evaluation eval/score$"):
    train(tmp_path, config, evaluators=[stated])
  assert steps_on_disk(tmp_path) == []
  config.best_metric = 'eval_ema/scroe'  # The EMA evaluation states the same names.
  with pytest.raises(config_lib.ConfigError, match=r"evaluation eval_ema/score$"):
    train(tmp_path, config, evaluators=[stated])


def truncate_state(workdir, step, what='array data'):
  """Cuts files of a saved step in half, as a full disk or a dying host would: the array
  data (TensorStore's OCDBT files; not all of them are read), the tree metadata, the data
  iterator's JSON or the config's JSON."""
  pattern = {'array data': 'state/**/d/*', 'metadata': 'state/_METADATA',
             'iterator': 'data/*.json', 'config': 'config/metadata'}[what]
  files = glob.glob(f'{workdir}/checkpoints/{step}/{pattern}', recursive=True)
  assert files
  for name in files:
    with open(name, 'r+b') as f:
      f.truncate(os.path.getsize(name) // 2)


def test_a_finished_run_says_there_is_nothing_to_train(tmp_path, finished4, capsys):
  """Rerun as it was, or with total_steps lowered: no step is trained, no checkpoint written,
  and one line says why (before, the run resumed and ended silently)."""
  copy_of(finished4, tmp_path)
  finished = finished4.state
  capsys.readouterr()
  for total in (4, 2):
    again = train(tmp_path, tiny_config(total_steps=total))
    notes = [line for line in capsys.readouterr().out.splitlines() if 'nothing to train' in line]
    assert notes == [f'note: workdir {tmp_path} already holds step 4 >= total_steps {total}; '
                     f'nothing to train (raise --config.total_steps to continue)']
    assert_bitwise_equal(again, finished)
    assert steps_on_disk(tmp_path) == [2, 4]


def workdir_files(workdir) -> dict:
  """Every file under `workdir`: relative path -> (size, sha256, mtime_ns); every folder too.
  The lock file is left out: each run states itself its holder there (workdir_lock)."""
  import hashlib
  files = {}
  for root, dirs, names in os.walk(workdir):
    for name in dirs + names:
      path = os.path.join(root, name)
      key = os.path.relpath(path, workdir)
      if key == checkpoints.LOCK_FILE:
        continue
      if os.path.isdir(path):
        files[key] = 'folder'
        continue
      with open(path, 'rb') as f:
        files[key] = (os.path.getsize(path), hashlib.sha256(f.read()).hexdigest(),
                      os.stat(path).st_mtime_ns)
  return files


def test_a_refused_or_finished_rerun_writes_nothing_in_the_workdir(tmp_path, finished2,
                                                                    capsys):
  """A rerun with a config whose state does not fit, and one with nothing left to train, leave
  every file as it was (before, each wrote batch_contract.json, class_names.json and a new
  TensorBoard events file before the resume was refused)."""
  config = tiny_config(total_steps=2)
  task = dataclasses.replace(tiny_task(config), class_names=CLASS_NAMES)
  copy_of(finished2, tmp_path)  # loop.train(config, str(tmp_path), task), as `again` below.
  before = workdir_files(tmp_path)
  assert {'batch_contract.json', 'class_names.json', 'checkpoints/2'} <= set(before)
  assert len([f for f in before if f.startswith('events.out.tfevents')]) == 1
  capsys.readouterr()

  wider = tiny_config(total_steps=4)
  wider.model.hidden_size = 16
  with pytest.raises(UserError, match='cannot be resumed') as error:
    loop.train(wider, str(tmp_path),
               dataclasses.replace(tiny_task(wider), class_names=CLASS_NAMES))
  assert '\n' not in str(error.value)
  assert workdir_files(tmp_path) == before

  again = loop.train(config, str(tmp_path), task)
  assert again.metrics == {} and int(again.state.step) == 2
  out = capsys.readouterr().out
  assert [line for line in out.splitlines() if 'nothing to train' in line] == [
      f'note: workdir {tmp_path} already holds step 2 >= total_steps 2; nothing to train '
      '(raise --config.total_steps to continue)']
  assert 'batch contract' not in out
  assert workdir_files(tmp_path) == before


def test_damaged_latest_falls_back_to_previous(tmp_path, reference, finished6, capsys):
  copy_of(finished6, tmp_path)
  assert steps_on_disk(tmp_path) == [4, 6]
  truncate_state(tmp_path, 6)
  resumed = train(tmp_path)
  captured = capsys.readouterr()
  # The step and the file in plain words; none of TensorStore's status codes and store spec.
  assert re.search(rf'checkpoint {tmp_path}/checkpoints/6 is unreadable \(state/d/\w+ is cut '
                   r'short \(\d+ bytes, fewer than its index says\)\); trying the previous one',
                   captured.err), captured.err
  assert 'OUT_OF_RANGE' not in captured.err and 'tensorstore' not in captured.err
  assert f'resumed from {tmp_path} at step 4' in captured.out
  assert len(glob.glob(f'{tmp_path}/checkpoints.damaged/6.*/state')) == 1  # Kept, moved aside.
  assert steps_on_disk(tmp_path) == [6, 8]  # Step 6 saved anew.
  assert_bitwise_equal(resumed, reference)


def test_bytes_changed_in_place_are_caught_by_the_saved_crc32s(tmp_path, reference, finished6,
                                                               capsys):
  """What orbax reads without a word: 8 bytes inverted inside an array data file (zarr chunks
  carry no checksum), and the data iterator's position rewritten at the same length (a resume
  would have trained on other batches). Every step saves its files' CRC-32s
  (vit/step_checksums.py); the readers skip the changed step naming the file, the resume moves
  it aside and continues exactly from the previous one. A step copied to another number is
  told (its arrays' step counter is the old one's). A step saved without checksums (before
  them) reads as before."""
  from vit import step_checksums
  copy_of(finished6, tmp_path)
  ckpt = tmp_path / 'checkpoints'
  for step in (4, 6):
    assert step_checksums.saved(str(ckpt / str(step)))
    step_checksums.check(str(ckpt / str(step)))  # Nothing changed after the save finished.
  data = max(glob.glob(f'{ckpt}/6/state/ocdbt.process_0/d/*'), key=os.path.getsize)
  with open(data, 'r+b') as f:
    f.seek(os.path.getsize(data) // 2)
    middle = f.read(8)
    f.seek(-8, os.SEEK_CUR)
    f.write(bytes(b ^ 0xFF for b in middle))
  relative = os.path.relpath(data, ckpt / '6')
  crc = r'is damaged: its CRC-32 differs from the one saved with it in checksums\.json'
  capsys.readouterr()
  assert checkpoints.read_params(str(tmp_path))[2] == 4
  assert re.fullmatch(rf'warning: skipped the unreadable checkpoint {ckpt}/6 \('
                      rf'{re.escape(relative)} {crc}\); reading step 4\n',
                      capsys.readouterr().err)
  with open(data, 'r+b') as f:  # Mended; now the iterator's position.
    f.seek(os.path.getsize(data) // 2)
    f.write(middle)
  iterator = ckpt / '6' / 'data' / 'process_0-of-1.json'
  text = iterator.read_text()
  iterator.write_text(text.replace('"next_index": 6', '"next_index": 2'))
  assert len(iterator.read_text()) == len(text) != 0
  resumed = train(tmp_path)
  captured = capsys.readouterr()
  assert re.search(rf'checkpoint {ckpt}/6 is unreadable \(data/process_0-of-1\.json {crc}\); '
                   r'trying the previous one', captured.err), captured.err
  assert f'resumed from {tmp_path} at step 4' in captured.out
  assert len(glob.glob(f'{tmp_path}/checkpoints.damaged/6.*/checksums.json')) == 1
  assert steps_on_disk(tmp_path) == [6, 8]
  assert_bitwise_equal(resumed, reference)
  for step in (6, 8):
    step_checksums.check(str(ckpt / str(step)))
  shutil.copytree(ckpt / '8', ckpt / '12')  # Its state's own step counter says 8.
  capsys.readouterr()
  assert checkpoints.read_params(str(tmp_path))[2] == 8
  assert capsys.readouterr().err == (
      f'warning: skipped the unreadable checkpoint {ckpt}/12 (checksums.json was saved with '
      'step 8, not 12: the folder was copied or renamed from another step); reading step 8\n')
  shutil.rmtree(ckpt / '12')
  os.remove(ckpt / '8' / 'checksums.json')  # As saved before checksums: read unchecked.
  capsys.readouterr()
  assert checkpoints.read_params(str(tmp_path))[2] == 8
  assert capsys.readouterr().err == ''


def test_the_readers_close_every_manager_they_open(tmp_path, finished4, monkeypatch):
  """read_params, restore_params and the fine-tuner's look at a workdir's saved configs left
  their read-only managers open (the fine-tuner opened one per step); each closes what it
  opens, also when the caller stops early."""
  from supervised import finetune
  copy_of(finished4, tmp_path)
  opened, closed = [], []
  make, close = checkpoints.manager, checkpoints.Manager.close
  monkeypatch.setattr(checkpoints, 'manager', lambda *a, **k: opened.append(1) or make(*a, **k))
  monkeypatch.setattr(checkpoints.Manager, 'close', lambda self: closed.append(1) or close(self))
  _, newest, step = checkpoints.read_params(str(tmp_path))
  assert step == 4
  jax.tree.map(np.testing.assert_array_equal, checkpoints.restore_params(str(tmp_path), 4),
               newest)
  assert finetune._saved_backbone(str(tmp_path))[0].hidden_size == 8
  assert [step for step, _ in checkpoints.saved_configs(str(tmp_path))] == [4, 2]
  assert len(opened) == len(closed) == 4


def test_a_config_changed_in_place_is_damage_not_another_config(tmp_path, capsys):
  """Bytes changed in place in the newest step's saved config (one bit each: '8' -> '9',
  'a' -> 'b'). The resume compared it before its CRC-32s were checked, and refused the run
  as initialised from another config.init (advising a rerun with the damaged init); a
  resumed fine-tune adopted the damaged model.hidden_size (then stopped: 'num_heads=2: does
  not divide model.hidden_size=9'). Both skip the step as damaged, naming the file."""
  from supervised import finetune
  init = f'vit_jax:{tmp_path}/a.npz'
  train(tmp_path, tiny_config(total_steps=6, init=init))
  ckpt = tmp_path / 'checkpoints'
  metadata = ckpt / '6' / 'config' / 'metadata'
  text = metadata.read_text()
  damaged = text.replace('"hidden_size": 8', '"hidden_size": 9').replace('/a.npz', '/b.npz')
  assert len(damaged) == len(text) and damaged.count('9') > text.count('9') and 'b.npz' in damaged
  metadata.write_text(damaged)
  assert finetune._saved_backbone(str(tmp_path))[0].hidden_size == 8  # Step 4's config.
  capsys.readouterr()
  train(tmp_path, tiny_config(init=init))
  captured = capsys.readouterr()
  assert re.search(rf'checkpoint {ckpt}/6 is unreadable \(config/metadata is damaged: its '
                   r'CRC-32 differs from the one saved with it in checksums\.json\); trying the '
                   r'previous one', captured.err), captured.err
  assert f'resumed from {tmp_path} at step 4' in captured.out
  assert steps_on_disk(tmp_path) == [6, 8]


def test_a_step_whose_checksums_cannot_be_written_is_one_warning(tmp_path, caplog):
  """The save is complete when its checksums are written (a full disk then): the run goes on,
  one warning names the step and the reason, and the step reads unchecked."""
  import logging
  from vit import step_checksums
  step = tmp_path / 'checkpoints' / '4'
  (step / 'state').mkdir(parents=True)
  (step / 'state' / 'x').write_text('x')
  (step / 'checksums.json').mkdir()  # In the way of the file, as no room would be.
  with caplog.at_level(logging.WARNING, logger='vit.checkpoints'):
    checkpoints._write_checksums(str(step))
  (record,) = caplog.records
  assert record.getMessage().startswith(f'no checksums.json for the checkpoint {step} (')
  assert record.getMessage().endswith('); the step is complete and will be read without that '
                                      'check')
  os.rmdir(step / 'checksums.json')
  step_checksums.check(str(step))
  checkpoints._write_checksums(str(tmp_path / 'checkpoints' / '6'))  # Gone meanwhile: nothing.
  assert len(caplog.records) == 1


def test_cut_short_process_data_is_named_in_plain_words(tmp_path, capsys):
  """A single-process run's arrays lie in `state/ocdbt.process_0/d/`, where TensorStore's error
  names only the database (`state/`) and orbax wraps it in its store spec. Cut short there (as
  `truncate -s 100` does), the readers' skip warning, the resume's warning and the final error
  each name the step and a data file in plain words, none of TensorStore's text."""
  from vit import init_spec
  config = tiny_config(total_steps=4)
  # Wide enough that the kernels' data is read from the process's data files.
  config.model.hidden_size, config.model.transformer.mlp_dim = 16, 32
  train(tmp_path, config)
  ckpt = tmp_path / 'checkpoints'
  damaged = glob.glob(f'{ckpt}/4/state/ocdbt.process_0/d/*')
  assert damaged
  for name in damaged:
    os.truncate(name, 100)
  cut = (r'state/ocdbt\.process_0/d/\w+( \(or another of the \d+ files of that size\))? is cut '
         r'short \(100 bytes, fewer than its index says\)')
  capsys.readouterr()
  init_spec.load(f'supervised:{tmp_path}')
  err = capsys.readouterr().err
  assert re.fullmatch(rf'warning: supervised:{tmp_path}: its newest checkpoint step 4 is damaged '
                      rf'\({cut}\); using step 2, the newest that reads \(rerun its training '
                      r'command with the same --workdir to save it again\)\n', err), err
  for name in glob.glob(f'{ckpt}/2/state/ocdbt.process_0/d/*'):
    os.truncate(name, 100)
  with pytest.raises(UserError, match=rf'^{ckpt}: no checkpoint step could be read \({ckpt}/4: '
                                      rf'{cut}; {ckpt}/2: {cut}\)$') as error:
    init_spec.load(f'supervised:{tmp_path}')
  assert 'TensorStore' not in str(error.value)
  with pytest.raises(UserError, match=rf'^{ckpt}: no checkpoint step could be restored '
                                      rf'\({ckpt}/4: {cut}; {ckpt}/2: {cut}\); nothing was moved'):
    train(tmp_path, tiny_config(total_steps=6, model=config.model))
  err = capsys.readouterr().err
  assert re.search(rf'checkpoint {ckpt}/4 is unreadable \({cut}\); trying the previous one',
                   err), err
  assert 'TensorStore' not in err and 'tensorstore' not in err
  assert steps_on_disk(tmp_path) == [2, 4]


def test_no_usable_checkpoint_is_a_clear_error(tmp_path, finished4):
  copy_of(finished4, tmp_path)
  truncate_state(tmp_path, 2, 'iterator')
  truncate_state(tmp_path, 4, 'array data')
  ckpt = tmp_path / 'checkpoints'
  with pytest.raises(UserError, match=rf'^{ckpt}: no checkpoint step could be restored \({ckpt}/4: '
                     r'state/d/\w+ is cut short \(\d+ bytes, fewer than its index says\); '
                     rf'{ckpt}/2: data/process_0-of-1.json is not valid JSON \(cut short or '
                     r'overwritten\)\); nothing was moved; to start afresh instead, use another '
                     r'--workdir$'):
    train(tmp_path)
  assert steps_on_disk(tmp_path) == [2, 4]  # Nothing is moved when nothing could be restored.


def test_partly_written_checkpoint_is_never_read(tmp_path, reference, finished4, capsys):
  copy_of(finished4, tmp_path)
  # What `kill -9` during an asynchronous save leaves: orbax's temporary directory, never
  # renamed to its step.
  partial = tmp_path / 'checkpoints' / '6.orbax-checkpoint-tmp-1234567'
  (partial / 'state').mkdir(parents=True)
  (partial / 'state' / '_METADATA').write_text('{"tree_metadata": {')
  resumed = train(tmp_path)
  assert 'at step 4' in capsys.readouterr().out
  assert not partial.exists()  # Cleaned up when the manager opened the directory.
  assert_bitwise_equal(resumed, reference)


def test_a_closed_manager_has_removed_the_unfinished_steps(tmp_path):
  """A writable manager removes what a killed save left (`*.orbax-checkpoint-tmp`) in a
  background thread that orbax's close does not wait for: before the fix, the folder was still
  there after close in 10 of 20 tries. Five tries, each checked right after the close."""
  folder = tmp_path / 'checkpoints'
  checkpoints.manager(str(tmp_path)).close()
  for step in range(5):
    partial = folder / f'{step}.orbax-checkpoint-tmp'
    (partial / 'state').mkdir(parents=True)
    (partial / 'state' / '_METADATA').write_text('{"tree_metadata": {' + ' ' * 4096)
    checkpoints.manager(str(tmp_path)).close()
    assert os.listdir(folder) == [], step


def test_readers_skip_a_half_written_newest_step(tmp_path, finished4, capsys):
  """The issue's recipe: a finished run's newest step copied to a higher number, its state
  files cut in half. Every reader (export, the supervised:/mpp: init specs) reads the newest
  step that reads, saying which it skipped; when none reads, one line names them all."""
  from vit import init_spec
  copy_of(finished4, tmp_path)
  ckpt = tmp_path / 'checkpoints'
  shutil.copytree(ckpt / '4', ckpt / '9')
  for name in glob.glob(f'{ckpt}/9/state/**/*', recursive=True):
    if os.path.isfile(name):
      with open(name, 'r+b') as f:
        f.truncate(os.path.getsize(name) // 2)
  capsys.readouterr()
  loaded = init_spec.load(f'supervised:{tmp_path}')
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(
      f'warning: supervised:{tmp_path}: its newest checkpoint step 9 is damaged (') and (
          '); using step 4, the newest that reads' in err[0]), err
  want = checkpoints.restore_params(str(tmp_path), 4, use_ema=True)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded.params),
                                                   jax.tree.leaves(want)))
  assert steps_on_disk(tmp_path) == [2, 4, 9]  # A reader moves nothing.
  export = commands.run_module('vit.export', f'--checkpoint={tmp_path}', '--format=vit_jax',
                               f'--out={tmp_path / "m.npz"}', timeout=900)
  assert export.returncode == 0, export.stderr[-3000:]
  assert 'Traceback' not in export.stderr
  assert export.stderr.strip().splitlines()[-1].startswith(
      f'warning: --checkpoint {tmp_path}: its newest checkpoint step 9 is damaged (')
  truncate_state(tmp_path, 4, 'config')
  truncate_state(tmp_path, 2, 'metadata')
  with pytest.raises(UserError, match=rf'^{ckpt}: no checkpoint step could be read \({ckpt}/9: '
                                      r'state/\S+ is [^;]+; '
                                      rf'{ckpt}/4: config/metadata is not valid JSON \(cut short '
                                      rf'or overwritten\); {ckpt}/2: state/_METADATA is not '
                                      r'valid JSON \(cut short or overwritten\)\)$'):
    init_spec.load(f'supervised:{tmp_path}')


def test_an_interrupted_newest_save_is_one_warning_naming_its_folder(tmp_path, reference,
                                                                     finished6, capsys,
                                                                     monkeypatch):
  """A save cut short (kill -9, a crash) leaves orbax's temporary folder and no step folder:
  orbax lists finished steps only, so a resume and every reader took the previous step without
  a word ('at step 4 of 6', the run stopped there by its look). One warning now names the run,
  the folder and the step used; a reader removes nothing, and the resumed run saves it anew.
  In a job of several processes (a fine-tune's --config.init) every process said the reader's
  line, naming the same folder; process 0 alone names it now, and the others still say a
  damaged step, which is each one's own read."""
  from vit import init_spec
  copy_of(finished6, tmp_path)
  ckpt = tmp_path / 'checkpoints'
  partial = ckpt / '6.orbax-checkpoint-tmp'
  os.rename(ckpt / '6', partial)  # A save whose last act, orbax's rename, did not happen.
  spec = f'supervised:{tmp_path}'
  capsys.readouterr()
  loaded = init_spec.load(spec)
  assert capsys.readouterr().err.splitlines() == [
      f'warning: {spec}: its newest checkpoint step 6 was never completed (its save was '
      f'interrupted, leaving {partial}); using step 4, the newest complete one (rerun its '
      'training command with the same --workdir to save it again)']
  assert loaded.step == 4 and init_spec.unfinished(spec, loaded) is None  # Said once.
  assert init_spec.origin(spec, loaded) == f'{spec} at step 4 of 6, not its unfinished step 6'
  monkeypatch.setattr(jax, 'process_index', lambda: 1)  # Process 1 of a job.
  assert init_spec.load(spec).step == 4
  assert capsys.readouterr().err == ''
  read_newest = checkpoints.read_newest
  monkeypatch.setattr(checkpoints, 'read_newest', lambda *a, **k: read_newest(*a, **k)._replace(
      skipped=((5, 'state/x is cut short'),)))  # As if a step 5 had not read there.
  damaged = 'step 5 is damaged (state/x is cut short); using step 4, the newest that reads'
  again = '(rerun its training command with the same --workdir to save {} again)'
  init_spec.load(spec)
  assert capsys.readouterr().err.splitlines() == [
      f'warning: {spec}: its newest checkpoint {damaged} {again.format("it")}']
  monkeypatch.setattr(jax, 'process_index', lambda: 0)
  init_spec.load(spec)
  assert capsys.readouterr().err.splitlines() == [
      f'warning: {spec}: its newest checkpoint step 6 was never completed (its save was '
      f'interrupted, leaving {partial}) and {damaged} {again.format("them")}']
  monkeypatch.undo()
  assert checkpoints.read_params(str(tmp_path))[2] == 4  # vit.inspect's reader.
  assert capsys.readouterr().err.splitlines() == [
      f'warning: skipped the unfinished checkpoint {partial} (its save was interrupted); '
      'reading step 4']
  assert partial.is_dir() and checkpoints.steps_on_disk(str(tmp_path)) == [4]  # Nothing removed.
  resumed = train(tmp_path)
  captured = capsys.readouterr()
  assert [line for line in captured.err.splitlines() if line.startswith('warning:')] == [
      f'warning: {tmp_path}: its newest checkpoint step 6 was never completed (its save was '
      f'interrupted, leaving {partial}, which orbax now removes); resuming from step 4, the '
      'newest complete one']
  assert f'resumed from {tmp_path} at step 4' in captured.out
  assert steps_on_disk(tmp_path) == [6, 8] and not partial.exists()
  assert_bitwise_equal(resumed, reference)


def test_an_interrupted_first_save_is_said_when_the_run_starts_again(tmp_path, capsys):
  """A run killed during its first save started again from step 0 without a word."""
  partial = tmp_path / 'checkpoints' / '2.orbax-checkpoint-tmp'
  (partial / 'state').mkdir(parents=True)
  train(tmp_path, tiny_config(total_steps=2))
  assert [line for line in capsys.readouterr().err.splitlines()
          if line.startswith('warning:')] == [
      f'warning: {tmp_path}: its newest checkpoint step 2 was never completed (its save was '
      f'interrupted, leaving {partial}, which orbax now removes); starting from step 0, as no '
      'step was saved before it']
  assert steps_on_disk(tmp_path) == [2] and not partial.exists()


def test_a_run_whose_only_save_was_interrupted_is_told_so_by_its_readers(tmp_path):
  """A run killed during its first save leaves only orbax's temporary folder: its readers
  said 'no checkpoint found ... (its run stopped before saving a step)', as if it had saved
  nothing. They now name the unfinished save, and remove nothing; a run still training on this
  host is told so, its folder being the save in progress."""
  from vit import init_spec
  partial = tmp_path / 'checkpoints' / '6.orbax-checkpoint-tmp'
  (partial / 'state').mkdir(parents=True)
  (tmp_path / 'batch_contract.json').write_text('{}')  # A run's, as a trainer writes it.
  told = (f'no finished checkpoint step under {tmp_path}/checkpoints, as its only checkpoint '
          f'step 6 was never completed (its save was interrupted, leaving {partial}); rerun its '
          'training command with the same --workdir to train and save it again, from step 0')
  with pytest.raises(UserError) as error:
    checkpoints.read_params(str(tmp_path))  # vit.inspect's reader.
  assert str(error.value) == f'{tmp_path}: {told}'
  with pytest.raises(UserError) as error:
    init_spec.load(f'supervised:{tmp_path}')
  assert str(error.value) == f'supervised:{tmp_path}: {told}'
  with pytest.raises(UserError) as error:
    init_spec.load_workdir(str(tmp_path))  # vit.export's --checkpoint.
  assert str(error.value) == f'--checkpoint {tmp_path}: {told}'
  assert partial.is_dir()  # Nothing removed.
  # Our parent stands for the trainer: a live process on this host (no start time to compare).
  lock = f'pid {os.getppid()}\nhost {socket.gethostname()}\n'
  (tmp_path / checkpoints.LOCK_FILE).write_text(lock)
  with pytest.raises(UserError, match=r' yet; its run is training now \(process '):
    checkpoints.read_params(str(tmp_path))


def test_an_empty_step_folder_is_said_once(tmp_path, finished2, caplog, capsys):
  """orbax logged 'Metadata file does not exist: .../99/_CHECKPOINT_METADATA' (absl's raw
  W-line) before the reader's own line, which names the step and why."""
  import logging
  from vit import init_spec
  copy_of(finished2, tmp_path)
  (tmp_path / 'checkpoints' / '99').mkdir()
  caplog.set_level(logging.INFO)
  capsys.readouterr()
  assert init_spec.load(f'supervised:{tmp_path}').step == 2
  assert 'Metadata file does not exist' not in caplog.text
  assert capsys.readouterr().err.strip().splitlines() == [
      f'warning: supervised:{tmp_path}: its newest checkpoint step 99 is damaged (the step '
      'folder is empty); using step 2, the newest that reads (rerun its training command with '
      'the same --workdir to save it again)']


def test_an_unreadable_step_is_said_in_plain_words(tmp_path):
  """vit.checkpoints.unreadable_reason, for what no test above damages: an empty JSON file, one that
  is not UTF-8, a missing file, and an error it knows nothing of (its own line, the step's path
  cut)."""
  import json
  step = tmp_path / '4'
  (step / 'config').mkdir(parents=True)
  (step / 'config' / 'metadata').write_text('')
  (step / 'config' / 'commit_success.txt').write_text('Checkpoint commit was successful')
  decode = json.JSONDecodeError('Expecting value', '', 0)
  assert checkpoints.unreadable_reason(str(step), decode) == 'config/metadata is empty'
  # Bytes that are not UTF-8 (orbax's JSON reads raised Python's own line, naming no file).
  (step / 'config' / 'metadata').write_bytes(b'{"a": "\xff\xfe"}')
  undecodable = UnicodeDecodeError('utf-8', b'\xff', 0, 1, 'invalid start byte')
  assert checkpoints.unreadable_reason(str(step), undecodable) == (
      'config/metadata is not valid JSON (cut short or overwritten)')
  missing = FileNotFoundError(2, 'No such file or directory', str(step / 'data' / 'p.json'))
  assert checkpoints.unreadable_reason(str(step), missing) == 'data/p.json is missing'
  assert checkpoints.unreadable_reason(str(step), RuntimeError(f'odd: {step}/state/x')) == (
      'RuntimeError: odd: state/x')


def test_readers_name_other_damage_in_one_line(tmp_path, finished4, capsys):
  """Damage beside the issue's cut state files, in a copy of the newest step: a file deleted
  (orbax names some only in its text), the OCDBT manifest deleted, the folder emptied; each
  skipped in one line naming the file. A cut `state/array_metadatas/` file fails the read of
  every array at once, and TensorStore's abandoned reads printed two dozen 'Event loop is
  closed' tracebacks on vit.export's stderr beside that line."""
  copy_of(finished4, tmp_path)
  ckpt = tmp_path / 'checkpoints'
  cases = {'config/metadata': 'config/metadata is missing',
           'state/_METADATA': 'state/_METADATA is missing',
           'state/manifest.ocdbt': 'state/manifest.ocdbt is missing',
           None: 'the step folder is empty'}
  for name, reason in cases.items():
    shutil.rmtree(ckpt / '9', ignore_errors=True)
    shutil.copytree(ckpt / '4', ckpt / '9')
    for path in [ckpt / '9' / name] if name else (ckpt / '9').iterdir():
      shutil.rmtree(path) if path.is_dir() else path.unlink()
    capsys.readouterr()
    assert checkpoints.read_params(str(tmp_path))[2] == 4
    assert capsys.readouterr().err == (f'warning: skipped the unreadable checkpoint {ckpt}/9 '
                                       f'({reason}); reading step 4\n')
  shutil.rmtree(ckpt / '9')
  shutil.copytree(ckpt / '4', ckpt / '9')
  (metadata,) = glob.glob(f'{ckpt}/9/state/array_metadatas/*')
  os.truncate(metadata, os.path.getsize(metadata) // 2)
  export = commands.run_module('vit.export', f'--checkpoint={tmp_path}', '--format=vit_jax',
                               f'--out={tmp_path / "m.npz"}', timeout=900)
  assert export.returncode == 0, export.stderr[-3000:]
  assert export.stderr.splitlines() == [
      f'warning: --checkpoint {tmp_path}: its newest checkpoint step 9 is damaged (state/'
      f'array_metadatas/{os.path.basename(metadata)} is not valid JSON (cut short or '
      'overwritten)); using step 4, the newest that reads (rerun its training command with the '
      'same --workdir to save it again)'], export.stderr[-3000:]


def test_incompatible_config_lists_keys_and_shapes(tmp_path, finished2):
  copy_of(finished2, tmp_path)
  wider = tiny_config(total_steps=4)
  wider.model.hidden_size = 16
  wider.model.transformer.mlp_dim = 32
  with pytest.raises(UserError) as error:
    train(tmp_path, wider)
  message = str(error.value)
  assert 'cannot be resumed' in message
  assert ('model.hidden_size: 8 -> 16' in message
          and 'model.transformer.mlp_dim: 16 -> 32' in message)
  assert 'total_steps' not in message.split('state arrays differ')[0]  # Only relevant keys.
  assert 'float32[8] -> float32[16]' in message  # e.g. a LayerNorm scale.
  assert steps_on_disk(tmp_path) == [2]


def _params_shapes(config, build):
  """{'params': ShapeDtypeStructs} of the objective `build(config, model)` makes (no compile)."""
  obj = build(config, config_lib.validate(config))
  return {'params': nn.unbox(jax.eval_shape(obj.init_params, jax.random.key(0)))}


def _resume_refusal(saved_config, now_config, build_saved, build_now) -> str:
  """The refusal's text from the config keys it names to the count of differing arrays."""
  with pytest.raises(UserError) as error:
    checkpoints.check_compatible(saved_config.to_dict(), _params_shapes(saved_config, build_saved),
                                 _params_shapes(now_config, build_now), now_config, where='W')
  message = str(error.value)
  assert message.startswith('W was saved with another config and cannot be resumed: ')
  return message.split('config keys differ: ')[1].split(' state arrays differ')[0]


def test_refusal_names_the_keys_that_shape_the_state_first():
  """A supervised rerun of an MPP workdir names the objective and its trainer, in one short
  line (before: 'model.num_classes' only, then every key and a hundred arrays); another
  data.channels is named, not the seed or batch size that changed beside it (before: those
  two, and data.channels left out as a data key)."""
  from configs.mpp import fashion_mnist as mpp_config
  from configs.supervised import fashion_mnist as supervised_config
  from mpp import objective as mpp_objective

  def tiny(config):
    config.model.hidden_size = 8
    config.model.transformer.update(mlp_dim=16, num_heads=2, num_layers=1)
    return config

  mpp, supervised = tiny(mpp_config.get_config()), tiny(supervised_config.get_config())
  with pytest.raises(UserError) as error:
    checkpoints.check_compatible(mpp.to_dict(), _params_shapes(mpp, mpp_objective.build),
                                 _params_shapes(supervised, objective.build), supervised,
                                 where='W')
  assert str(error.value) == ('W holds a run of another objective (config.mpp; this config has '
                              'no objective section) and cannot be resumed here; resume it with '
                              'python -m mpp.train, or use another --workdir')

  grey = tiny(supervised_config.get_config())
  grey.data.channels = 1
  colour = tiny(supervised_config.get_config())
  colour.update(seed=1, batch_size=64, total_steps=99)
  colour.optimizer.learning_rate = 0.1
  keys = _resume_refusal(grey, colour, objective.build, objective.build)
  assert keys.startswith('data.channels: 1 -> 3; '), keys
  assert not any(k in keys for k in ('seed', 'batch_size', 'total_steps', 'learning_rate'))


def test_a_fine_tune_aimed_at_a_pretraining_workdir_names_the_objective():
  """`supervised.finetune --config.init=mae:runs/mae --workdir runs/mae` was told 'rerun
  without config.init to resume it', which supervised.finetune cannot do either."""
  from configs.mae import fashion_mnist as mae_config
  from configs.supervised import fashion_mnist as supervised_config
  from mae import objective as mae_objective

  def tiny(config):
    config.model.hidden_size = 8
    config.model.transformer.update(mlp_dim=16, num_heads=2, num_layers=1)
    return config

  mae, finetune = tiny(mae_config.get_config()), tiny(supervised_config.get_config())
  finetune.init = 'mae:runs/mae'
  with pytest.raises(UserError) as error:
    checkpoints.check_compatible(mae.to_dict(), _params_shapes(mae, mae_objective.build),
                                 _params_shapes(finetune, objective.build), finetune, where='W')
  assert str(error.value) == ('W holds a run of another objective (config.mae; this config has '
                              'no objective section) and cannot be resumed here; resume it with '
                              'python -m mae.train, or use another --workdir')
  # The other way round, a fine-tune's workdir given to mae.train: the program that resumes a
  # run with an init is supervised.finetune (supervised.train refuses config.init).
  with pytest.raises(UserError) as error:
    checkpoints.check_compatible(finetune.to_dict(), _params_shapes(finetune, objective.build),
                                 _params_shapes(mae, mae_objective.build), mae, where='W')
  assert str(error.value).endswith('resume it with python -m supervised.finetune '
                                   '--config.init=mae:runs/mae, or use another --workdir')


@pytest.mark.parametrize('old, new, cure', [
    ('mae:runs/mae', None, 'rerun python -m supervised.finetune with --config.init=mae:runs/mae '
                           'to resume it'),
    (None, 'mae:runs/mae', 'rerun python -m supervised.train without config.init to resume it'),
])
def test_the_origin_refusal_names_the_program_that_resumes_it(old, new, cure):
  """A fine-tune's workdir given to supervised.train was told 'rerun with --config.init=...',
  which supervised.train refuses (only supervised.finetune reads it), and the other way round:
  advice that looped."""
  from configs.supervised import fashion_mnist as supervised_config
  config = supervised_config.get_config()
  config.model.hidden_size = 8
  config.model.transformer.update(mlp_dim=16, num_heads=2, num_layers=1)
  saved = config.to_dict()
  saved['init'], config.init = old, new
  shapes = _params_shapes(config, objective.build)
  with pytest.raises(UserError) as error:
    checkpoints.check_compatible(saved, shapes, shapes, config, where='W')
  assert cure in str(error.value), str(error.value)


def test_unwritable_workdir_fails_before_training(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  config = tiny_config()
  task = tiny_task(config)
  calls = []
  task = dataclasses.replace(task, init_params=lambda rng: calls.append(rng))
  with pytest.raises(UserError, match=rf'^--workdir {blocker}/run: not writable \({blocker} is '
                                      r'a file, not a directory\)$'):
    loop.train(config, str(blocker / 'run'), task)
  with pytest.raises(UserError, match=rf'^--workdir {blocker}: a file, not a directory$'):
    loop.train(config, str(blocker), task)
  # It said "--workdir : not writable (No such file or directory)".
  with pytest.raises(UserError, match=r"^--workdir '': empty; name the directory of the run$"):
    loop.train(config, '', task)
  assert calls == [] and blocker.read_text() == 'not a directory'


def test_a_checkpoints_file_in_the_workdir_is_refused_before_anything_is_written(tmp_path):
  (tmp_path / 'checkpoints').write_text('x')
  config = tiny_config()
  task = dataclasses.replace(tiny_task(config), init_params=lambda rng: 1 / 0)
  with pytest.raises(UserError, match=rf'^{tmp_path}/checkpoints: a file, not a directory$'):
    loop.train(config, str(tmp_path), task)
  assert os.listdir(tmp_path) == ['checkpoints']
  assert (tmp_path / 'checkpoints').read_text() == 'x'


def test_a_workdir_inside_a_runs_checkpoints_folder_is_refused_naming_the_run(tmp_path,
                                                                             monkeypatch):
  """`--workdir runs/sup/checkpoints/6`, meant as "resume at step 6", trained a new run from
  scratch inside the saved step's folder."""
  run = tmp_path / 'run'
  (run / 'checkpoints' / '6').mkdir(parents=True)
  (run / 'batch_contract.json').write_text('{}')
  config = tiny_config()
  task = dataclasses.replace(tiny_task(config), init_params=lambda rng: 1 / 0)
  for inside in (run / 'checkpoints', run / 'checkpoints' / '6', run / 'checkpoints' / '6' / 'x'):
    with pytest.raises(UserError, match=rf'^--workdir {inside}: inside the checkpoints folder of '
                                        rf'the run {run}, .* give --workdir {run} '):
      loop.train(config, str(inside), task)
  assert os.listdir(run / 'checkpoints') == ['6'] and os.listdir(run / 'checkpoints' / '6') == []
  # A folder only named so, in no run, is an ordinary workdir's parent, saved steps or not.
  plain = tmp_path / 'checkpoints' / 'mine'
  (tmp_path / 'checkpoints' / '1').mkdir(parents=True)
  assert checkpoints.run_holding_checkpoints(str(plain)) is None
  # The run is named as the user spelt it; through a link, by its real path.
  monkeypatch.chdir(tmp_path)
  assert checkpoints.run_holding_checkpoints('run/./checkpoints/6/x') == 'run'
  assert checkpoints.run_holding_checkpoints('checkpoints/../run/checkpoints') == 'run'
  os.symlink(run / 'checkpoints' / '6', tmp_path / 'latest')
  assert checkpoints.run_holding_checkpoints('latest/x') == str(run)
  assert checkpoints.run_holding_checkpoints('run') is None



def test_sigint_saves_and_resumes_exactly(tmp_path, reference, capsys):
  # Python's default_int_handler, or SIG_IGN when the suite runs as a background job.
  handler_before = signal.getsignal(signal.SIGINT)
  sent = []

  def interrupt_at_step_3(state, step, writer):
    if step == 3 and not sent:
      sent.append(step)
      os.kill(os.getpid(), signal.SIGINT)

  with pytest.raises(checkpoints.Preempted) as stop:
    train(tmp_path, hook=interrupt_at_step_3)
  assert stop.value.code == 0 and stop.value.step == 4  # Noticed after the next step.
  assert 'stopped after step 4 (SIGINT)' in capsys.readouterr().out
  assert steps_on_disk(tmp_path) == [2, 4]
  assert signal.getsignal(signal.SIGINT) is handler_before  # Handler restored.
  assert_bitwise_equal(train(tmp_path), reference)


def test_nonfinite_step_stops_and_keeps_last_good_checkpoint(tmp_path, reference):
  # Step 6 is a save step but not a log step (log_every=4): the guard runs before the save.
  config = tiny_config(log_every=4)
  with pytest.raises(loop.NonFiniteError, match=r'^step 6: non-finite loss=nan; set '
                     r'config.skip_nonfinite_steps=True'):
    train(tmp_path, config, poison_steps=(6,))
  assert steps_on_disk(tmp_path) == [2, 4]
  mngr = checkpoints.manager(str(tmp_path), read_only=True)
  saved = mngr.restore(4, args=checkpoints.ocp.args.Composite(
      state=checkpoints.ocp.args.StandardRestore()))['state']
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(saved['params']))


def test_skip_nonfinite_steps_counts_and_leaves_state_unchanged(tmp_path, capsys):
  params = {}

  def record(state, step, writer):
    params[step] = host_tree(state.params)

  config = tiny_config(skip_nonfinite_steps=True, log_every=4)
  state = train(tmp_path, config, poison_steps=(3, 5), hook=record)
  assert int(state.skipped_steps) == 2 and int(state.step) == 8
  out = capsys.readouterr().out
  assert 'step 4/8 ' in out and 'skipped_steps 1 ' in out and 'skipped_steps 2 ' in out
  for skipped in (3, 5):
    assert all(params[skipped][k].tobytes() == params[skipped - 1][k].tobytes()
               for k in params[skipped])
  assert any(params[4][k].tobytes() != params[3][k].tobytes() for k in params[4])
  assert all(np.isfinite(v).all() for v in host_tree(state.params).values())


def test_an_init_is_the_same_spelled_otherwise_or_moved_but_not_replaced(tmp_path):
  from vit.checkpoints import _same_init  # pylint: disable=protected-access
  a, b = tmp_path / 'a' / 'e30.npz', tmp_path / 'b' / 'e30.npz'
  a.parent.mkdir(), b.parent.mkdir()
  a.write_bytes(b'x'), b.write_bytes(b'x')
  assert _same_init(f'vit_jax:{a}', f'vit_jax:{a.parent}/./e30.npz')
  assert not _same_init(f'vit_jax:{a}', f'vit_jax:{b}')  # Both there: another file.
  assert not _same_init(f'vit_jax:{a}', f'hf:{a}')
  gone = tmp_path / 'old_checkout' / 'e30.npz'  # The run moved to another machine or folder.
  assert _same_init(f'vit_jax:{gone}', f'vit_jax:{b}')
  assert not _same_init(f'vit_jax:{gone}', f'vit_jax:{tmp_path}/b')  # Another name.
  assert not _same_init(f'vit_jax:{a}', None) and _same_init(None, '')


def test_reads_abandoned_after_a_failed_restore_are_not_reported():
  """When every step's data files are damaged, the reads a failed restore abandoned were
  reported when collected, by timing (2 of 4 runs, up to 7,000 lines): asyncio's '... exception
  was never retrieved' of TensorStore's failed reads, and coroutines never awaited. They are
  dropped; other records and warnings are not."""
  import logging
  import warnings
  checkpoints._quiet_abandoned_reads()
  (drop,) = [f for f in logging.getLogger('asyncio').filters
             if isinstance(f, checkpoints._UnretrievedReadFilter)]

  def record(message, error):
    return logging.LogRecord('asyncio', logging.ERROR, 'base_events.py', 1771, message, (),
                             (type(error), error, None))
  read = ValueError('OUT_OF_RANGE: Error reading "opt_state.mu/0.0" in OCDBT database at '
                    'local file "/w/checkpoints/8/state/": Requested byte range [0, 9) is not '
                    'valid for value of size 5')
  for head in ('Future', 'Task', '_GatheringFuture'):
    assert not drop.filter(record(f'{head} exception was never retrieved\nfuture: <...>', read))
  assert drop.filter(record('Task exception was never retrieved', ValueError('ours')))
  assert drop.filter(record('Exception in callback', read))
  with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter('always')
    checkpoints._quiet_abandoned_reads()
    warnings.warn("coroutine '_read_array_index_and_device_put' was never awaited",
                  RuntimeWarning)
    warnings.warn("coroutine 'our_step' was never awaited", RuntimeWarning)
  assert [str(w.message) for w in seen] == ["coroutine 'our_step' was never awaited"]
