"""A leading `~` in a path is the home directory wherever a user gives one (flags, --config,
init specs, config keys), never a folder named `~` in the current directory; `~user` of no
user is one line naming the flag. Readers of a workdir name the step they read and warn of a
run that stopped before its end; a saved step given for a workdir points at the workdir."""
import logging
import os
import shutil
import subprocess
import sys

import pytest
from absl import flags

from configs.finetune import fashion_mnist as ft_config
from supervised import finetune
from vit import cli, config as config_lib, init_spec, user_paths
from vit.data import fashion_mnist, pipeline
from vit.errors import ConfigError, UserError
from vit.testing import commands

NO_USER = '~no_such_user_of_vit'
# The compiled steps of the other tests, found before a test moves HOME.
CACHE = os.environ.get('JAX_COMPILATION_CACHE_DIR',
                       os.path.join(os.path.expanduser('~'), '.cache', 'vit_jax', 'xla'))

# mae.train as `python -m mae.train` runs it, with a SIGTERM after step 1 (the user's kill).
_STOPPED_AFTER_STEP_1 = """
import os, signal
from mae import objective, train
from vit import checkpoints, cli
check_saves = checkpoints.check_saves
def kill_after_step_1(mngr, step, sync):
  check_saves(mngr, step, sync)
  if step == 1:
    os.kill(os.getpid(), signal.SIGTERM)
checkpoints.check_saves = kill_after_step_1
cli.define_config_flags('configs/mae/fashion_mnist.py', objective=objective.DEFINITION)
cli.run(train.main)
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
  """HOME is tmp/home, the current directory tmp/cwd (where no `~` may appear)."""
  (tmp_path / 'home').mkdir()
  (tmp_path / 'cwd').mkdir()
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  monkeypatch.chdir(tmp_path / 'cwd')
  return tmp_path / 'home'


def test_a_leading_tilde_is_the_home_and_an_unknown_user_is_refused(home):
  assert user_paths.expanded('~/runs/x') == f'{home}/runs/x'
  assert user_paths.expanded('~') == str(home)
  for path in ('runs/~x', '/tmp/~', 'a~b', ''):
    assert user_paths.expanded(path) == path
  assert user_paths.expanded(f'{NO_USER}/x') is None
  with pytest.raises(UserError) as e:
    user_paths.expand(f'{NO_USER}/x', '--out')
  assert str(e.value) == (f'--out {NO_USER}/x: {NO_USER} is not the home of any user here (a '
                          'leading ~ is read as a home directory); write the path in full')
  assert user_paths.expand_spec('mae:~/runs/mae') == f'mae:{home}/runs/mae'
  assert user_paths.expand_spec('fashion_mnist') == 'fashion_mnist'
  with pytest.raises(UserError, match=f'^--source folder:{NO_USER}/x: {NO_USER} is not the'):
    user_paths.expand_spec(f'folder:{NO_USER}/x', '--source')
  assert user_paths.expand_key('data.source', 'array_record:~/d', spec=True) == f'{home}/d'
  with pytest.raises(ConfigError, match=f"^config.data.data_dir='{NO_USER}': {NO_USER} is not"):
    user_paths.expand_key('data.data_dir', NO_USER)


def test_every_string_flag_and_the_config_file_are_expanded(home):
  fv = flags.FlagValues()
  flags.DEFINE_string('out', None, '', flag_values=fv)
  flags.DEFINE_string('name', 'a~b', '', flag_values=fv)
  flags.DEFINE_integer('steps', 1, '', flag_values=fv)
  fv(['prog', '--out=~/x.npz', '--steps=2'])
  cli.expand_home(fv)
  assert (fv.out, fv.name, fv.steps) == (f'{home}/x.npz', 'a~b', 2)
  fv.out = f'{NO_USER}/x.npz'
  with pytest.raises(UserError, match=f'^--out {NO_USER}/x.npz: {NO_USER} is not the home'):
    cli.expand_home(fv)
  assert cli.home_expanded_config(['prog', '--config=~/c.py:arg', '--config.init=mae:~/w']) == [
      'prog', f'--config={home}/c.py:arg', '--config.init=mae:~/w']
  with pytest.raises(UserError, match=f'^--config {NO_USER}/c.py: '):
    cli.home_expanded_config(['prog', f'--config={NO_USER}/c.py'])
  # absl reads `--config FILE` too (quoted, bash leaves its `~`); the next argument only.
  assert cli.home_expanded_config(['prog', '--config', '~/c.py', '~/other', '-config=~/d.py']
                                  ) == ['prog', '--config', f'{home}/c.py', '~/other',
                                        f'-config={home}/d.py']


def test_config_data_paths_are_expanded(home):
  os.symlink(fashion_mnist.DEFAULT_DIR, home / 'fm')
  config = config_lib.defaults()
  config.data.data_dir = '~/fm'
  assert len(pipeline.make_source(config, 'test')) == 10000
  config.data.data_dir = NO_USER
  with pytest.raises(ConfigError, match=f"^config.data.data_dir='{NO_USER}': "):
    pipeline.make_source(config, 'test')
  config.data.data_dir, config.data.source = None, f'array_record:{NO_USER}/d'
  with pytest.raises(ConfigError, match=f"^config.data.source='array_record:{NO_USER}/d': "):
    pipeline.make_source(config, 'test')


def _run(cwd, home, *args):
  """A command in `cwd` with HOME=`home`, the repository importable, the usual compile cache."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', HOME=str(home), PYTHONPATH=commands.ROOT,
             JAX_COMPILATION_CACHE_DIR=CACHE)
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=600)


@pytest.fixture(scope='module')
def stopped_mae(tmp_path_factory):
  """(home, cwd): an MAE run at ~/nu_runs/mae stopped by SIGTERM after step 1 of 30, started
  with --workdir=~/..., --config=~/mae.py and --config.data.data_dir=~/fm from cwd."""
  home, cwd = tmp_path_factory.mktemp('home'), tmp_path_factory.mktemp('cwd')
  shutil.copy(os.path.join(commands.ROOT, 'configs/mae/fashion_mnist.py'), home / 'mae.py')
  os.symlink(fashion_mnist.DEFAULT_DIR, home / 'fm')
  run = _run(cwd, home, '-c', _STOPPED_AFTER_STEP_1, '--config=~/mae.py',
             '--workdir=~/nu_runs/mae', '--config.data.data_dir=~/fm', '--config.total_steps=30',
             *commands.TINY_BACKBONE, '--config.batch_size=16', '--config.eval_batch_size=64',
             '--config.mae.eval_examples=64', '--config.mae.decoder.hidden_size=8',
             '--config.mae.decoder.num_layers=1', '--config.mae.decoder.mlp_dim=16')
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'stopped after step 1 (SIGTERM)' in run.stdout, run.stdout
  assert os.listdir(cwd) == []  # No folder named ~ (nor anything else) where it ran.
  assert os.listdir(home / 'nu_runs/mae/checkpoints') == ['1']
  return home, cwd


def test_export_reads_and_writes_under_home_and_names_the_step(stopped_mae):
  home, cwd = stopped_mae
  run = _run(cwd, home, '-m', 'vit.export', '--checkpoint=mae:~/nu_runs/mae',
             '--format=vit_jax', '--out=~/x.npz')
  assert run.returncode == 0, run.stderr[-3000:]
  assert (home / 'x.npz').is_file() and os.listdir(cwd) == []
  assert 'exported mae:~/nu_runs/mae at step 1 of 30 (patches (4, 4), hidden 16' in run.stdout
  assert run.stderr.strip().splitlines() == [
      'warning: mae:~/nu_runs/mae: the run stopped before its end (step 1 of its '
      'config.total_steps 30); using step 1 anyway (rerun its training command with the same '
      '--workdir to finish it)']
  refused = _run(cwd, home, '-m', 'vit.export', '--checkpoint=~/nu_runs/mae',
                 '--format=vit_jax', f'--out={NO_USER}/x.npz')
  assert refused.returncode == 2 and os.listdir(cwd) == []
  assert refused.stderr.strip().splitlines() == [
      f'error: --out {NO_USER}/x.npz: {NO_USER} is not the home of any user here (a leading ~ '
      'is read as a home directory); write the path in full']


def test_finetune_names_the_step_and_warns_of_an_unfinished_run(stopped_mae, monkeypatch,
                                                                 caplog):
  home, cwd = stopped_mae
  monkeypatch.setenv('HOME', str(home))
  monkeypatch.chdir(cwd)
  monkeypatch.setattr(finetune.loop, 'train', lambda *a, **k: None)  # The lines, not training.
  config = ft_config.get_config()
  config.init = 'mae:~/nu_runs/mae'
  images, labels = fashion_mnist.load('test')
  caplog.set_level(logging.INFO)
  finetune.finetune(config, str(home / 'ft'),
                    train_source=fashion_mnist.ArraySource(images[:16], labels[:16]))
  workdir = f'{home}/nu_runs/mae'
  assert config.init == f'mae:{workdir}'  # Saved so: a resume from elsewhere finds it.
  assert f'fine-tuning from mae:{workdir} at step 1 of 30: patches (4, 4)' in caplog.text
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert warnings == [f'mae:{workdir}: the run stopped before its end (step 1 of its '
                      'config.total_steps 30); using step 1 anyway (rerun its training command '
                      'with the same --workdir to finish it)']
  assert os.listdir(cwd) == []


def test_a_saved_step_given_for_a_workdir_points_at_the_workdir(stopped_mae, monkeypatch):
  home, _ = stopped_mae
  monkeypatch.chdir(home)
  for given in ('nu_runs/mae/checkpoints/1', 'nu_runs/mae/checkpoints'):
    with pytest.raises(UserError) as e:
      init_spec.load(f'mae:{given}')
    assert str(e.value) == (
        f'mae:{given}: inside the checkpoints folder of the run nu_runs/mae; give the run '
        'itself, mae:nu_runs/mae (the folder that holds checkpoints/): its newest step that '
        'reads is taken, and no earlier step can be chosen')
  with pytest.raises(UserError, match=r'^--checkpoint nu_runs/mae/checkpoints/1: inside the '
                     r'checkpoints folder of the run nu_runs/mae; give the run itself, '
                     r'nu_runs/mae \('):
    init_spec.load_workdir('nu_runs/mae/checkpoints/1')
  ckpt = init_spec.load('mae:nu_runs/mae')
  assert (ckpt.step, ckpt.total_steps) == (1, 30)


def test_a_leading_double_slash_is_the_root(stopped_mae):
  """`//tmp/x` is /tmp/x to Linux, but tensorstore (orbax's checkpoints) refuses it: a finished
  run given as `mae://...` read as 'no checkpoint step could be read (... Invalid file path)', and
  `--workdir=//...` trained to its end, then failed at its save with a traceback. Leading
  slashes become one where a path enters, as `~` is expanded there."""
  home, _ = stopped_mae
  assert user_paths.expanded('//tmp/x') == '/tmp/x'
  assert user_paths.expanded('///tmp/x') == '/tmp/x'
  for path in ('/tmp//x', '/', 'runs//x'):
    assert user_paths.expanded(path) == path
  assert user_paths.expand_spec('mae://tmp/x') == 'mae:/tmp/x'
  fv = flags.FlagValues()
  flags.DEFINE_string('workdir', None, '', flag_values=fv)
  fv(['prog', '--workdir=//tmp/x'])
  cli.expand_home(fv)
  assert fv.workdir == '/tmp/x'
  assert init_spec.load(f'mae:/{home}/nu_runs/mae').step == 1
  assert init_spec.load_workdir(f'/{home}/nu_runs/mae').step == 1


def test_a_run_still_training_is_told_apart_from_a_stopped_one(tmp_path):
  """An export of a run in progress warned that it 'stopped' and to rerun its command, which
  the lock would refuse. The lock file names its last holder; a live one is still training.
  A reader that fell back from newer steps that did not read says that, not 'stopped'."""
  import socket
  import subprocess
  early = init_spec.Checkpoint({}, None, None, 28, 3, None, 600, 1200)
  live = subprocess.Popen(['sleep', '60'])
  try:
    (tmp_path / '.lock').write_text(f'pid {live.pid}\nhost {socket.gethostname()}\n')
    assert init_spec.unfinished(f'mae:{tmp_path}', early) == (
        f'mae:{tmp_path}: the run is still training (process {live.pid} on '
        f'{socket.gethostname()}); using its newest saved step, 600 of its config.total_steps '
        '1200')
    assert 'still training' in init_spec.unfinished(str(tmp_path), early)
    # A workdir named from the home directory: the lock read is the expanded path's.
    os.environ['HOME'], home = str(tmp_path.parent), os.environ.get('HOME')
    try:
      assert 'still training' in init_spec.unfinished(f'mae:~/{tmp_path.name}', early)
    finally:
      if home is None:
        del os.environ['HOME']
      else:
        os.environ['HOME'] = home
  finally:
    live.kill()
    live.wait()
  assert 'the run stopped before its end' in init_spec.unfinished(f'mae:{tmp_path}', early)
  (tmp_path / '.lock').write_text(f'pid {os.getpid()}\nhost elsewhere\n')  # Not this host's.
  assert 'the run stopped before its end' in init_spec.unfinished(f'mae:{tmp_path}', early)
  # Newer steps on disk that did not read (the run may well have finished): said so, not
  # 'stopped before its end'.
  (tmp_path / 'checkpoints' / '1200').mkdir(parents=True)  # One step: 'it', not 'them'.
  assert init_spec.unfinished(f'mae:{tmp_path}', early) == (
      f'mae:{tmp_path}: using step 600 of its config.total_steps 1200, as its newer step 1200 '
      'did not read (rerun its training command with the same --workdir to save it again)')
  (tmp_path / 'checkpoints' / '900').mkdir(parents=True)
  assert init_spec.unfinished(f'mae:{tmp_path}', early) == (
      f'mae:{tmp_path}: using step 600 of its config.total_steps 1200, as its newer steps 900, '
      '1200 did not read (rerun its training command with the same --workdir to save them '
      'again)')


def test_a_finished_run_and_a_published_format_get_no_warning():
  finished = init_spec.Checkpoint({}, None, None, 28, 3, None, 30, 30)
  assert init_spec.origin('mae:w', finished) == 'mae:w at step 30 of 30'
  assert init_spec.unfinished('mae:w', finished) is None
  published = init_spec.Checkpoint({}, None, None, 28, 3)
  assert init_spec.origin('vit_jax:m.npz', published) == 'vit_jax:m.npz'
  assert init_spec.unfinished('vit_jax:m.npz', published) is None


def test_inspect_warns_of_an_unfinished_run_as_fine_tuning_and_export_do(stopped_mae, caplog,
                                                                         tmp_path):
  """Figures of a run stopped at step 1 of 30 were drawn without a word; the readers of a
  workdir (fine-tuning, export, few-shot, predict, inspect) share init_spec.warn_if_unfinished."""
  from vit.inspect import report
  home, _ = stopped_mae
  spec = f'mae:{home}/nu_runs/mae'
  caplog.set_level(logging.WARNING)
  report.inspect(spec, str(tmp_path / 'figures'), max_images=2, show=1, batch_size=2)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert f'{spec}: the run stopped before its end (step 1 of its config.total_steps 30); using ' \
         'step 1 anyway (rerun its training command with the same --workdir to finish it)' \
         in warnings, warnings
  assert os.path.exists(tmp_path / 'figures' / 'inspect.json')
