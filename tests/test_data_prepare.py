"""`python -m vit.data.prepare`: image folders and Fashion-MNIST into TFDS ArrayRecord datasets."""
import logging
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vit import config as config_lib
from vit.data import decoding, pipeline, prepare
from vit.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ('cat', 'dog', 'eel')


def write_folder(root, per_class=3, split=None):
  """Images whose pixel value is 10 * class + index: JPEG-safe as they are flat."""
  for c, name in enumerate(CLASSES):
    folder = os.path.join(root, *([split] if split else []), name)
    os.makedirs(folder, exist_ok=True)
    for i in range(per_class):
      image = np.full((9 + i, 11, 3), 10 * c + i, np.uint8)
      ext = 'png' if i % 2 else 'jpg'
      Image.fromarray(image).save(os.path.join(folder, f'{i}.{ext}'))
  return root


def config_for(out, split='train'):
  config = config_lib.defaults()
  config.image_size, config.batch_size, config.eval_batch_size = 8, 3, 4
  config.model.num_classes = len(CLASSES)
  config.data.source = f'array_record:{out}'
  config.data.eval_split = split
  return config


def valid_examples(config):
  pairs = []
  for batch in pipeline.eval_batches(config):
    pairs += [(int(i), int(l)) for i, l, m in
              zip(batch['image'][:, 4, 4, 0], batch['label'], batch['mask']) if m]
  return sorted(pairs)


def test_folder_becomes_a_tfds_dataset_with_class_names(tmp_path, capsys):
  folder = write_folder(str(tmp_path / 'images'))
  Image.fromarray(np.full((5, 5), 21, np.uint8)).save(f'{folder}/eel/gray.png')
  Image.fromarray(np.full((5, 5, 4), 22, np.uint8)).save(f'{folder}/eel/rgba.png')
  out = str(tmp_path / 'out')
  path = prepare.prepare(f'folder:{folder}', out)
  assert os.path.exists(os.path.join(path, 'dataset_info.json'))
  assert '100%' in capsys.readouterr().err  # The tqdm progress bar reached its end.
  source = pipeline.make_source(config_for(out), 'train')
  assert source.class_names == CLASSES and len(source) == 11
  # RGBA (22, 22, 22, alpha 22) over white: round((22 * 22 + 255 * 233) / 255) = 235.
  expected = sorted([(10 * c + i, c) for c in range(3) for i in range(3)] + [(21, 2), (235, 2)])
  assert valid_examples(config_for(out)) == expected  # Labels follow the sorted class names.


def test_split_folders_and_tfds_split_syntax(tmp_path):
  folder = str(tmp_path / 'images')
  write_folder(folder, per_class=2, split='train')
  write_folder(folder, per_class=1, split='test')
  out = str(tmp_path / 'out')
  prepare.prepare(f'folder:{folder}', out)
  assert valid_examples(config_for(out, 'test')) == [(0, 0), (10, 1), (20, 2)]
  assert len(pipeline.make_source(config_for(out), 'train[:50%]')) == 3
  by_name = config_for(out, 'test')
  by_name.data.source, by_name.data.data_dir = f'tfds:{prepare.NAME}', out
  assert valid_examples(by_name) == [(0, 0), (10, 1), (20, 2)]


def test_refuses_to_overwrite_without_the_flag_and_replaces_with_it(tmp_path):
  folder = write_folder(str(tmp_path / 'images'), per_class=1)
  out = str(tmp_path / 'out')
  command = [sys.executable, '-m', 'vit.data.prepare', f'--source=folder:{folder}',
             f'--out={out}']
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
  assert first.returncode == 0, first.stderr
  assert 'train: 100%' in first.stderr and 'train 3 images, 3 classes' in first.stdout
  info = os.path.join(out, prepare.NAME, '1.0.0', 'dataset_info.json')
  before = os.path.getmtime(info)
  write_folder(folder, per_class=2)
  again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
  assert again.returncode == 2
  assert again.stderr.strip().splitlines()[-1] == (
      f'error: --out {out}: exists and is not empty; pass --overwrite to replace the dataset '
      f'in it')
  assert os.path.getmtime(info) == before
  prepare.prepare(f'folder:{folder}', out, overwrite=True)
  assert len(pipeline.make_source(config_for(out), 'train')) == 6


def test_bad_folders_are_named(tmp_path):
  empty = tmp_path / 'empty'
  (empty / 'cat').mkdir(parents=True)
  (empty / 'cat' / 'notes.txt').write_text('no images here')
  with pytest.raises(UserError, match=rf'{empty}: no images \(.png, .jpg, .jpeg, .bmp, .gif, '
                                      rf'.webp, .tif, .tiff\)'):
    prepare.prepare(f'folder:{empty}', str(tmp_path / 'out'))
  with pytest.raises(UserError, match=r'--source folder:/nonexistent/x: no such directory'):
    prepare.prepare('folder:/nonexistent/x', str(tmp_path / 'out'))
  loose = write_folder(str(tmp_path / 'loose'), per_class=1)
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(f'{loose}/stray.png')
  with pytest.raises(UserError, match=r'stray.png: images must be inside a class sub-folder'):
    prepare.prepare(f'folder:{loose}', str(tmp_path / 'out'))


def test_undecodable_file_is_named_or_skipped(tmp_path, caplog):
  folder = write_folder(str(tmp_path / 'images'), per_class=2)
  with open(f'{folder}/dog/broken.jpg', 'wb') as f:
    f.write(b'\xff\xd8\xff not really a jpeg')
  out = str(tmp_path / 'out')
  with pytest.raises(UserError, match=r'dog/broken.jpg: cannot decode the image \(not a '
                                      r'recognised image format\); pass --skip_bad'):
    prepare.prepare(f'folder:{folder}', out)
  # Nothing half-written is left, nor the --out folder this build made (it stayed, empty).
  assert not os.path.exists(out)
  with caplog.at_level(logging.INFO):
    prepare.prepare(f'folder:{folder}', out, skip_bad=True)
  assert len(pipeline.make_source(config_for(out), 'train')) == 6
  assert f'skipped 1 undecodable file: {folder}/dog/broken.jpg' in caplog.messages  # 'files'


def test_skip_bad_counts_what_was_written_per_class(tmp_path, caplog):
  """The class table counted a PNG cut short as a 'dog' image, which --skip_bad then left out:
  3 dogs said, 2 written. The table of what was written is told apart by its first line (both
  began '3 classes:')."""
  folder = write_folder(str(tmp_path / 'images'), per_class=2)
  Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)).save(
      f'{folder}/dog/cut.png')
  with open(f'{folder}/dog/cut.png', 'r+b') as f:  # A copy stopped halfway.
    f.truncate(os.path.getsize(f'{folder}/dog/cut.png') // 2)
  out = str(tmp_path / 'out')
  with caplog.at_level(logging.INFO):
    prepare.prepare(f'folder:{folder}', out, skip_bad=True)
  assert f'skipped 1 undecodable file: {folder}/dog/cut.png' in caplog.messages
  tables = [m.splitlines() for m in caplog.messages if m.startswith('3 classes:')]
  assert len(tables) == 1  # Found, before the build.
  assert tables[0][-2:] == ['    1      3  dog', '    2      2  eel']
  written = [m.splitlines() for m in caplog.messages if m.startswith('written, after')]
  assert written == [['written, after skipping the undecodable files:', 'label  train  class',
                      '    0      2  cat', '    1      2  dog', '    2      2  eel']]
  labels = [label for _, label in valid_examples(config_for(out))]
  assert [labels.count(c) for c in range(3)] == [2, 2, 2]


def test_fashion_mnist_subset(tmp_path):
  out = str(tmp_path / 'fm')
  prepare.prepare('fashion_mnist', out, limit=20)
  config = config_for(out, 'test')
  config.image_size, config.model.num_classes = 28, 10
  source = pipeline.make_source(config, 'test')
  assert len(source) == 20 and source.class_names[0] == 'T-shirt/top'
  from vit.data import fashion_mnist
  images, labels = fashion_mnist.load('test')
  got = [b for b in pipeline.eval_batches(config)]
  got_images = np.concatenate([b['image'][b['mask']] for b in got])[..., 0]
  got_labels = np.concatenate([b['label'][b['mask']] for b in got])
  order = [int(np.flatnonzero((images[:20, ..., 0] == g).all(axis=(1, 2)))[0]) for g in got_images]
  assert sorted(order) == list(range(20))  # Lossless: every image found bit for bit.
  np.testing.assert_array_equal(got_labels, labels[order])


def test_scan_skips_hidden_entries_follows_links_and_reports(tmp_path):
  folder = write_folder(str(tmp_path / 'images'), per_class=1)
  os.makedirs(f'{folder}/.ipynb_checkpoints')  # Would sort first and shift every label.
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(f'{folder}/.ipynb_checkpoints/x.png')
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(f'{folder}/cat/._0.png')
  extra = tmp_path / 'more_cats'
  write_folder(str(extra), per_class=2)
  os.symlink(extra / 'cat', f'{folder}/cat/linked')  # Two more cats, through a link.
  os.symlink('..', f'{folder}/cat/linked_back')  # A loop: back to the top, cat included.
  os.makedirs(f'{folder}/fox')
  (tmp_path / 'images' / 'fox' / 'fox.heic').write_bytes(b'not read')
  scan = prepare.scan_folder(folder)
  assert scan.class_names == ('cat', 'dog', 'eel', 'fox')
  train = scan.splits['train']
  assert [os.path.relpath(p, folder) for p in train.items] == [
      'cat/0.jpg', 'cat/linked/0.jpg', 'cat/linked/1.png', 'dog/0.jpg', 'eel/0.jpg']
  assert list(train.labels) == [0, 0, 0, 1, 2]
  assert [os.path.relpath(p, folder) for p in scan.hidden] == ['.ipynb_checkpoints', 'cat/._0.png']
  assert scan.not_followed == [
      f'{folder}/cat/linked_back -> {os.path.realpath(folder)} (a link loop)']
  assert scan.empty == [f'{folder}/fox (1 other file: fox.heic)']
  assert scan.not_images == [f'{folder}/fox/fox.heic']
  assert scan.report()[:2] == [
      f'skipped 2 hidden entries: {folder}/.ipynb_checkpoints, {folder}/cat/._0.png',
      f'skipped 1 file without an image extension ({" ".join(decoding.IMAGE_SUFFIXES)}): '
      f'{folder}/fox/fox.heic']
  assert scan.report()[-6:] == ['4 classes:', 'label  train  class', '    0      3  cat',
                                '    1      1  dog', '    2      1  eel', '    3      0  fox']


def test_failed_overwrite_leaves_the_old_dataset(tmp_path, capsys):
  folder = write_folder(str(tmp_path / 'images'), per_class=1)
  out = str(tmp_path / 'out')
  prepare.prepare(f'folder:{folder}', out)
  assert 'label  train  class\n    0      1  cat\n' in capsys.readouterr().out
  write_folder(folder, per_class=2)
  with open(f'{folder}/dog/broken.png', 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n truncated')
  with pytest.raises(UserError, match=r'dog/broken.png: cannot decode the image'):
    prepare.prepare(f'folder:{folder}', out, overwrite=True)
  assert len(pipeline.make_source(config_for(out), 'train')) == 3  # The old one, intact.
  assert os.listdir(out) == [prepare.NAME]  # No staging folder left behind.
  os.remove(f'{folder}/dog/broken.png')
  prepare.prepare(f'folder:{folder}', out, overwrite=True)
  assert len(pipeline.make_source(config_for(out), 'train')) == 6
  assert os.listdir(out) == [prepare.NAME]


def test_stored_pixels_follow_the_decoding_rules(tmp_path):
  folder = str(tmp_path / 'images')
  os.makedirs(f'{folder}/a')
  Image.fromarray(np.full((8, 8), 100 * 257, np.uint16)).save(f'{folder}/a/sixteen.png')
  exif = Image.Exif()
  exif[0x0112] = 6  # Rotate 90 degrees clockwise to display: stored 12 wide, shown 12 high.
  Image.fromarray(np.full((8, 12), 50, np.uint8)).save(f'{folder}/a/turned.png', exif=exif)
  out = str(tmp_path / 'out')
  prepare.prepare(f'folder:{folder}', out)
  source = pipeline.make_source(config_for(out), 'train')
  from vit.data import transforms
  images = [transforms.decode_image(source[i]['image']) for i in range(len(source))]
  assert [(im.shape, int(im.min()), int(im.max())) for im in images] == [
      ((8, 8, 1), 100, 100), ((12, 8, 1), 50, 50)]


def test_val_folder_is_the_validation_split_and_mixed_layouts_are_refused(tmp_path):
  folder = str(tmp_path / 'images')
  write_folder(folder, per_class=2, split='train')
  write_folder(folder, per_class=1, split='val')
  scan = prepare.scan_folder(folder)
  assert scan.class_names == CLASSES and list(scan.splits) == ['train', 'validation']
  assert list(scan.splits['validation'].labels) == [0, 1, 2]
  write_folder(folder, per_class=1, split='valid')
  with pytest.raises(UserError, match=r': both val/ and valid/ are the validation split; '):
    prepare.scan_folder(folder)
  mixed = str(tmp_path / 'mixed')
  write_folder(mixed, per_class=1, split='train')
  write_folder(mixed, per_class=1)
  with pytest.raises(UserError) as e:
    prepare.scan_folder(mixed)
  assert str(e.value).startswith(f'--source folder:{mixed}: mixes split folders (train) with '
                                 f'class folders (cat, dog, eel);')


def test_bad_arguments_are_refused_before_anything_is_written(tmp_path):
  folder = write_folder(str(tmp_path / 'images'), per_class=1)
  out = str(tmp_path / 'out')
  for limit in (0, -3):
    with pytest.raises(UserError, match=rf'^--max_per_split={limit}: must be a positive '):
      prepare.prepare('fashion_mnist', out, limit=limit)
  inside = f'{folder}/out'
  with pytest.raises(UserError, match=rf'^--out {inside}: is inside --source folder:{folder};'):
    prepare.prepare(f'folder:{folder}', inside)
  assert not os.path.exists(out) and not os.path.exists(inside)
  with pytest.raises(UserError, match=r': is a file, not a directory of class folders$'):
    prepare.prepare(f'folder:{folder}/cat/0.jpg', out)
  os.symlink(str(tmp_path / 'gone'), f'{folder}/cat/more')
  scan = prepare.scan_folder(folder)
  assert scan.not_followed == [f'{folder}/cat/more -> {tmp_path}/gone (a dangling link)']
  assert scan.not_images == []


# `python -m vit.data.prepare ARGS` whose build stops after its first image, in the staging
# folder with TFDS writing, and says so on stdout: the parent signals a process in that known
# state, however loaded the machine (a signal sent on a line printed earlier could land anywhere
# in the start-up or after the dataset was already replaced).
# A terminal's Ctrl-C reaches `prepare` with Python's KeyboardInterrupt handler. A test run
# started as a background job of a script (`make test &`: bash without job control) starts every
# child with SIGINT ignored, and Python then installs no handler, so the signal would be lost and
# the child would wait forever; the script restores what a terminal gives.
_PAUSED_PREPARE = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from vit import cli
from vit.data import prepare
encoded = prepare._encoded
def paused(items, skip_bad, chunk=256):
  images = encoded(items, skip_bad, chunk)
  yield next(images)
  print('paused mid-build', flush=True)
  while True:  # Until the parent's signal.
    time.sleep(1)
prepare._encoded = paused
cli.run(prepare.main)
"""


def _paused_prepare(folder, out):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONUNBUFFERED': '1'}
  run = subprocess.Popen([sys.executable, '-c', _PAUSED_PREPARE, f'--source=folder:{folder}',
                          f'--out={out}', '--overwrite'], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for line in run.stdout:
    if line.strip() == 'paused mid-build':
      return run
  _, err = run.communicate(timeout=900)
  raise AssertionError(f'the build ended before its first image: {err[-2000:]}')


# SIGTERM (a job's time limit) ended the build without a word, its staging folder left in --out.
@pytest.mark.parametrize('sig, status, said', [(signal.SIGINT, 130, 'interrupted'),
                                               (signal.SIGTERM, 143, 'stopped (SIGTERM)')])
def test_interrupt_says_the_previous_dataset_is_unchanged(tmp_path, sig, status, said):
  folder = write_folder(str(tmp_path / 'images'), per_class=1)
  out = str(tmp_path / 'out')
  prepare.prepare(f'folder:{folder}', out)
  write_folder(folder, per_class=2)
  run = _paused_prepare(folder, out)
  assert any(n.startswith(f'.{prepare.NAME}-partial-') for n in os.listdir(out))
  run.send_signal(sig)
  _, err = run.communicate(timeout=900)
  assert run.returncode == status, err[-2000:]
  assert err.strip().splitlines()[-1] == (
      f'{said}; the previous dataset at {out}/{prepare.NAME} is unchanged')
  assert len(pipeline.make_source(config_for(out), 'train')) == 3
  assert os.listdir(out) == [prepare.NAME]  # The staging folder went with the interrupt.


def test_a_killed_build_leaves_nothing_after_the_next_run(tmp_path):
  folder = write_folder(str(tmp_path / 'images'), per_class=1)
  out = str(tmp_path / 'out')
  prepare.prepare(f'folder:{folder}', out)
  run = _paused_prepare(folder, out)
  run.kill()  # SIGKILL: no handler runs, the staging folder stays.
  run.communicate(timeout=900)
  assert len(os.listdir(out)) == 2
  assert len(pipeline.make_source(config_for(out), 'train')) == 3
  write_folder(folder, per_class=2)
  prepare.prepare(f'folder:{folder}', out, overwrite=True)
  assert os.listdir(out) == [prepare.NAME]
  assert len(pipeline.make_source(config_for(out), 'train')) == 6
