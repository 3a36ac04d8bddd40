"""Training writes TensorBoard event files that TensorBoard's own reader understands."""
import glob
import io
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator, plugin_event_accumulator
from tensorboard.util import tensor_util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_TAGS = ('loss', 'learning_rate', 'grad_norm', 'accuracy', 'images_per_s')
EVAL_TAGS = ('eval/accuracy',)


def _scalars(acc: event_accumulator.EventAccumulator, tag: str) -> dict[int, float]:
  # TF2 summaries (what clu writes) arrive as tensors; older writers as scalars.
  if tag in acc.Tags()['scalars']:
    return {e.step: e.value for e in acc.Scalars(tag)}
  return {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}


# `python -m MODULE ARGS...` as `python -c _RUN_MODULE OUT MODULE ARGS...`, which then writes to
# OUT whether the run imported TensorFlow.
_RUN_MODULE = """
import runpy, sys
out, module = sys.argv.pop(1), sys.argv.pop(1)
try:
  runpy.run_module(module, run_name='__main__', alter_sys=True)
finally:
  with open(out, 'w') as f:
    f.write(str('tensorflow' in sys.modules))
"""


def test_supervised_run_writes_readable_event_files(tmp_path):
  workdir = tmp_path / 'run'
  overrides = dict(total_steps=4, log_every=2, batch_size=32, eval_batch_size=1000,
                   **{'optimizer.warmup_steps': 2, 'optimizer.learning_rate': 1e-3,
                      'model.hidden_size': 16, 'model.transformer.mlp_dim': 32,
                      'model.transformer.num_heads': 2, 'model.transformer.num_layers': 1})
  imported = tmp_path / 'imported_tensorflow'
  cmd = [sys.executable, '-c', _RUN_MODULE, str(imported), 'supervised.train',
         '--config', 'configs/supervised/fashion_mnist.py', '--workdir', str(workdir)]
  cmd += [f'--config.{k}={v}' for k, v in overrides.items()]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  # Its events are written without TensorFlow (vit.training.events): ~4 CPU-s per run.
  assert imported.read_text() == 'False'
  files = glob.glob(str(workdir / '**' / 'events.out.tfevents.*'), recursive=True)
  assert files, f'no event files under {workdir}'
  acc = event_accumulator.EventAccumulator(os.path.dirname(files[0]),
                                           size_guidance={'scalars': 0, 'tensors': 0})
  acc.Reload()
  tags = set(acc.Tags()['scalars']) | set(acc.Tags()['tensors'])
  missing = [t for t in TRAIN_TAGS + EVAL_TAGS if t not in tags]
  assert not missing, f'missing tags {missing}; have {sorted(tags)}'
  for tag in TRAIN_TAGS:
    values = _scalars(acc, tag)
    assert sorted(values) == [2, 4], (tag, values)
    assert all(np.isfinite(v) for v in values.values()), (tag, values)
  lr = _scalars(acc, 'learning_rate')
  # Linear warmup over 2 steps, averaged over the logged steps: step 0 -> 0, step 1 -> 5e-4.
  np.testing.assert_allclose(lr[2], 2.5e-4, rtol=1e-5)
  assert 0.0 < _scalars(acc, 'loss')[2] < 5.0 and _scalars(acc, 'images_per_s')[4] > 0
  assert 0.0 <= _scalars(acc, 'eval/accuracy')[4] <= 1.0
  assert all(0.0 <= v <= 1.0 for v in _scalars(acc, 'accuracy').values())

  from vit import objective
  from vit.inspect import runs
  row = runs.summarise(str(workdir))
  # 1 block of width 16 (mlp 32) on 4x4x3 patches, 49 patches + class token, 10 classes.
  block = 2 * 2 * 16 + 4 * (16 * 16 + 16) + (16 * 32 + 32) + (32 * 16 + 16)
  expected = (4 * 4 * 3 * 16 + 16) + 16 + 50 * 16 + block + 2 * 16 + (16 * 10 + 10)
  assert row == dict(run='run', params=expected, backbone_params=expected - (16 * 10 + 10),
                     steps=4, metric=objective.CLASSIFIER_METRIC,
                     value=_scalars(acc, 'eval/accuracy')[4],
                     images_per_s=_scalars(acc, 'images_per_s')[4])
  lines = runs.table([row]).splitlines()
  assert lines[0] == '| run | parameters | ViT backbone | steps | test accuracy | images/s |'
  assert lines[2].startswith(f'| run | {expected:,} | {expected - 170:,} | 4 | ')


def _read(logdir, reader) -> dict:
  """{tag: (plugin, data class, {step: value})} of the summaries in `logdir` as `reader` (an
  event_accumulator module: the plain one, or the plugin one TensorBoard's server uses) reads
  them; a scalar's value is a float, an image's is (width, height, [pixels of each PNG])."""
  acc = reader.EventAccumulator(str(logdir), size_guidance={'tensors': 0})
  acc.Reload()
  out = {}
  for tag in acc.Tags()['tensors']:
    metadata = acc.SummaryMetadata(tag)
    values = {}
    for e in acc.Tensors(tag):
      x = tensor_util.make_ndarray(e.tensor_proto)
      values[e.step] = (x.item() if x.ndim == 0 else (int(x[0]), int(x[1]), [
          np.asarray(Image.open(io.BytesIO(png))).tolist() for png in x[2:]]))
    out[tag] = (metadata.plugin_data.plugin_name, metadata.data_class, values)
  return out


def test_the_trainers_events_read_as_tf_summarys(tmp_path):
  """The trainers' writer (vit.training.events) and clu's TensorFlow one (tf.summary), given the
  same values, write what TensorBoard reads alike: tags, steps, plugins, values, pixels."""
  from clu import metric_writers
  from vit.training import events
  rng = np.random.default_rng(0)
  scalars = {'loss': 2.302585, 'learning_rate': np.float32(2.5e-4), 'skipped_steps': 0,
             'eval/examples': np.int64(10000), 'grad_norm': np.array(0.84)}
  images = {'mpp/original_corrupted_predicted': rng.integers(0, 256, (1, 9, 13, 3), np.uint8),
            'grey': rng.integers(0, 256, (2, 5, 4, 1), np.uint8),
            'rgba': rng.integers(0, 256, (3, 6, 4), np.uint8)}
  for name, writer in (('tf', metric_writers.create_default_writer(str(tmp_path / 'tf'),
                                                                   asynchronous=False)),
                       ('ours', events.EventWriter(str(tmp_path / 'ours')))):
    for step in (2, 4):
      writer.write_scalars(step, scalars)
      writer.write_images(step, images)
    writer.close()
  for reader in (event_accumulator, plugin_event_accumulator):
    ours = _read(tmp_path / 'ours', reader)
    assert ours == _read(tmp_path / 'tf', reader)
    assert sorted(ours) == sorted([*scalars, *images])
    assert ours['learning_rate'][:1] == ('scalars',)
    assert ours['learning_rate'][2] == {2: float(np.float32(2.5e-4)), 4: float(np.float32(2.5e-4))}
    assert ours['grey'][:1] == ('images',)
    assert ours['grey'][2][4] == (4, 5, [images['grey'][i, ..., 0].tolist() for i in (0, 1)])
    assert ours['rgba'][2][2] == (6, 3, [images['rgba'].tolist()])


_FILL_THE_FILE = """
import sys
from vit.training import events
writer = events.EventWriter(sys.argv[1])
step = 0
try:
  while True:
    step += 1
    writer.write_scalars(step, {'loss': 1.0 / step})
except OSError as e:
  failed = e
for again in (lambda: writer.write_scalars(step + 1, {'loss': 0.0}), writer.flush,
              writer.close):
  try:
    again()
  except OSError as e:
    assert e is failed, e
  else:
    raise AssertionError('a write after the failed one succeeded')
print(step, failed.strerror)
"""


def test_a_failed_write_leaves_the_steps_before_it_readable(tmp_path):
  """A file that cannot grow (`ulimit -f 1`, as a full disk): the write of the step that does
  not fit raises its OSError, and so does every later call; the steps before it read back, and
  nothing is said at exit (`-X dev` would show an 'Exception ignored' of a buffer flushed when
  the file is collected, or a ResourceWarning of a file left open)."""
  proc = subprocess.run(['bash', '-c', 'ulimit -f 1 && exec "$@"', 'bash', sys.executable,
                         '-X', 'dev', '-c', _FILL_THE_FILE, str(tmp_path)], cwd=ROOT,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0 and proc.stderr == '', proc.stderr[-3000:]
  failed_step, reason = proc.stdout.split(maxsplit=1)
  assert reason.strip() == 'File too large'
  acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={'tensors': 0})
  acc.Reload()
  steps = [e.step for e in acc.Tensors('loss')]
  assert steps == list(range(1, int(failed_step))) and len(steps) > 5, (failed_step, steps)


def _finished_run(workdir, config, scalars: dict, params=None) -> None:
  """A workdir as a run leaves it, made directly: one checkpoint of `params` (a 3-parameter
  state by default) saved with `config`, and `scalars` ({tag: value}) logged at step 2."""
  from clu import metric_writers
  from vit import checkpoints
  mngr = checkpoints.manager(str(workdir))
  params = params or {'w': np.zeros(3, np.float32)}
  checkpoints.save(mngr, 2, {'params': params}, None, config)
  checkpoints.wait_for_saves(mngr)
  writer = metric_writers.create_default_writer(str(workdir), asynchronous=False)
  writer.write_scalars(2, dict(loss=1.0, images_per_s=100.0, **scalars))
  writer.close()


def test_runs_table_labels_each_objective_by_what_it_measures(tmp_path):
  """An MPP run's colour accuracy on corrupted patches is not shown as 'test accuracy' (before,
  both shared that column); an MPP run with the pixels target (no accuracy) shows its loss; a
  classifier evaluated on another split shows its accuracy on that split."""
  from configs.mpp import fashion_mnist as mpp_config
  from configs.supervised import fashion_mnist as supervised_config
  from vit.inspect import runs
  pixels = mpp_config.get_config()
  pixels.mpp.target = 'pixels'
  _finished_run(tmp_path / 'sup', supervised_config.get_config(), {'eval/accuracy': 0.8125},
                {'embedding': np.zeros(2, np.float32), 'head': np.zeros(1, np.float32)})
  _finished_run(tmp_path / 'mpp', mpp_config.get_config(),
                {'eval/accuracy': 0.4375, 'eval/loss': 1.5},
                {'backbone': {'embedding': np.zeros(1, np.float32)},
                 'head': np.zeros(2, np.float32)})
  _finished_run(tmp_path / 'px', pixels, {'eval/loss': 0.0625})
  table = runs.table([runs.summarise(str(tmp_path / n)) for n in ('sup', 'mpp', 'px')])
  assert table.splitlines() == [
      '| run | parameters | ViT backbone | steps | test accuracy | MPP colour accuracy '
      '(corrupted patches) | MPP loss (corrupted patches) | images/s |',
      '|---|---:|---:|---:|---:|---:|---:|---:|',
      '| sup | 3 | 2 | 2 | 81.25% | - | - | 100 |',
      '| mpp | 3 | 1 | 2 | - | 43.75% | - | 100 |',
      '| px | 3 | 3 | 2 | - | - | 0.0625 | 100 |']
  # Evaluated on held-out images, not the test split: shown as what it is, in its own column
  # (it was 'test accuracy', beside the test-split runs).
  held_out = supervised_config.get_config()
  held_out.data.update(holdout=100, eval_split='holdout')
  _finished_run(tmp_path / 'ho', held_out, {'eval/accuracy': 0.75},
                {'embedding': np.zeros(2, np.float32), 'head': np.zeros(1, np.float32)})
  table = runs.table([runs.summarise(str(tmp_path / n)) for n in ('sup', 'ho')])
  assert table.splitlines() == [
      "| run | parameters | ViT backbone | steps | test accuracy | accuracy on 'holdout' | "
      'images/s |',
      '|---|---:|---:|---:|---:|---:|---:|',
      '| sup | 3 | 2 | 2 | 81.25% | - | 100 |',
      '| ho | 3 | 2 | 2 | - | 75.00% | 100 |']


def test_runs_table_shows_the_readable_runs_and_names_each_unreadable_one(tmp_path):
  """One damaged run of several no longer refuses the whole table: the readable rows are
  printed, and one line per run left out names its folder and why; the exit status is 1."""
  from configs.supervised import fashion_mnist as supervised_config
  config = supervised_config.get_config()
  for name in ('good', 'no_events', 'damaged_events', 'no_checkpoint', 'damaged_checkpoint'):
    _finished_run(tmp_path / name, config, {'eval/accuracy': 0.5})
  for f in glob.glob(str(tmp_path / 'no_events' / 'events.out.tfevents.*')):
    os.remove(f)
  for f in glob.glob(str(tmp_path / 'damaged_events' / 'events.out.tfevents.*')):
    with open(f, 'wb') as out:
      out.write(b'not a record' * 8)
  shutil.rmtree(tmp_path / 'no_checkpoint' / 'checkpoints')
  for f in glob.glob(str(tmp_path / 'damaged_checkpoint' / 'checkpoints' / '2' / 'state' / '**'),
                     recursive=True):
    if os.path.isfile(f):
      with open(f, 'wb') as out:
        out.write(b'garbage')
  names = ['good', 'no_events', 'damaged_events', 'no_checkpoint', 'damaged_checkpoint',
           'missing']
  proc = subprocess.run([sys.executable, '-m', 'vit.inspect.runs',
                         *[str(tmp_path / n) for n in names]],
                        cwd=ROOT, capture_output=True, text=True, timeout=900,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 1, proc.stderr
  assert proc.stdout.splitlines() == [
      '| run | parameters | ViT backbone | steps | test accuracy | images/s |',
      '|---|---:|---:|---:|---:|---:|', '| good | 3 | 3 | 2 | 50.00% | 100 |']
  errors = proc.stderr.strip().splitlines()
  assert len(errors) == 5, errors
  expected = [('no_events', ': no TensorBoard event files'),
              ('damaged_events', ': no scalar in its 1 event file(s) (damaged'),
              ('no_checkpoint', ': no checkpoint found under'),
              ('damaged_checkpoint', '/checkpoints: no checkpoint step could be read'),
              ('missing', ': no such directory')]
  for line, (name, reason) in zip(errors, expected):
    assert line.startswith(f'error: {tmp_path / name}{reason}'), line
    assert line.endswith('; left out of the table'), line


def test_a_resumed_run_counts_each_step_once_with_its_own_values(tmp_path):
  """A run killed (kill -9) after logging steps 1..5 with its last checkpoint at step 2 resumes
  at step 3 and logs 3..6 into a second event file: TensorBoard's reader (as vit.inspect.runs
  reads) sees each step once, the resumed run's values from step 3 on, and none of the killed
  run's steps past what the resumed run has logged so far (its SessionLog START at step 3)."""
  import time
  from vit.inspect import runs
  from vit.training import events
  killed = events.EventWriter(str(tmp_path), first_step=1)
  for step in range(1, 6):
    killed.write_scalars(step, {'loss': float(step)})
  killed.close()  # What kill -9 leaves: every write was flushed.
  time.sleep(1.01 - time.time() % 1)  # Files are named by the second they start, read in order.
  resumed = events.EventWriter(str(tmp_path), first_step=3)
  for step in (3, 4):
    resumed.write_scalars(step, {'loss': 10.0 * step})
  assert runs.scalars(str(tmp_path))['loss'] == {1: 1.0, 2: 2.0, 3: 30.0, 4: 40.0}
  for step in (5, 6):
    resumed.write_scalars(step, {'loss': 10.0 * step})
  resumed.close()
  assert len(glob.glob(str(tmp_path / 'events.out.tfevents.*'))) == 2
  assert runs.scalars(str(tmp_path))['loss'] == {1: 1.0, 2: 2.0, 3: 30.0, 4: 40.0, 5: 50.0,
                                                 6: 60.0}
  acc = plugin_event_accumulator.EventAccumulator(str(tmp_path), size_guidance={'tensors': 0})
  acc.Reload()  # What the TensorBoard server plots: one point per step, no duplicate.
  assert [e.step for e in acc.Tensors('loss')] == [1, 2, 3, 4, 5, 6]
