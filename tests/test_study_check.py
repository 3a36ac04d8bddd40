"""study/check.py: the study config and every trainer config it builds are validated before a
run or a worker starts, in the process the user started."""
import os
import re

import pytest

from configs.study import converged, demo
from study import run as run_lib
from vit.errors import ConfigError, UserError
from vit.testing import commands


def test_the_study_configs_pass(tmp_path):
  """Every run of every cell of the study as registered, and of `make demo`; no results yet,
  so the runs that wait for a choice are checked at a stand-in point of their grid."""
  for module in (converged, demo):
    study = module.get_config()
    study.results = str(tmp_path / 'results')
    if module is converged:
      assert run_lib.preflight(study) > 100
    else:  # Raw pixels, the MPP pretraining, and one fine-tuning of each arm.
      assert run_lib.preflight(study) == 4


def test_a_bad_override_seen_only_in_the_runs_names_the_run():
  study = demo.get_config()
  study.results = '/nonexistent'
  study.sweep.crop_padding = (2, 28)  # A translation as large as the 28-px image.
  with pytest.raises(UserError, match=r"^study run \S+_pad28: config.data.crop_padding=28: "
                                      r"must be an integer in \[0, image_size\)$"):
    run_lib.preflight(study)
  study = demo.get_config()
  study.classifier.optimizer.decay = 'cosin'
  with pytest.raises(ConfigError, match=r"^config.classifier.optimizer.decay='cosin': "):
    run_lib.preflight(study)


def test_a_bad_override_with_workers_is_one_line_of_the_parent(tmp_path):
  """Before, the parent started its workers, each failed in its own log, and the parent said
  only 'workers exited with [2, 2]'."""
  workdir = tmp_path / 'work'
  out = commands.run_module(
      'study.run', '--config=configs/study/demo.py', f'--workdir={workdir}',
      '--config.workers=2', '--config.pretrainer.mpp.target=colour',
      f'--config.results={tmp_path / "results"}', timeout=900)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines() == [
      "error: config.pretrainer.mpp.target='colour': must be one of mean_color, "
      "downsampled_color, pixels"]
  assert 'worker' not in out.stdout and not os.path.exists(workdir)  # No worker started.


@pytest.mark.parametrize('key, value, problem', [
    ('seeds', (), 'must be a non-empty tuple'),
    ('sweep.learning_rates', (), 'must be a non-empty tuple'),
    ('sweep.crop_padding', (), 'must be a non-empty tuple'),
    ('workers', 0, r'must be an integer >= 1'),
    ('only_priority', -1, r'must be an integer >= 0')])
def test_an_empty_or_out_of_range_study_key_is_named(key, value, problem):
  """Before, seeds=() was an IndexError traceback; empty sweeps and workers=0 passed and
  the study started (with nothing, or no worker, to run)."""
  study = converged.get_config()
  study.results = '/nonexistent'
  parent, _, leaf = key.rpartition('.')
  (study[parent] if parent else study)[leaf] = value
  with pytest.raises(ConfigError, match=rf'^config.{key}={re.escape(repr(value))}: {problem}$'):
    run_lib.preflight(study)


def test_a_study_config_missing_keys_is_one_line_naming_them(tmp_path):
  """Before, a study file that set only `seeds` ended in an AttributeError traceback ("'results'")
  naming neither the file nor the key."""
  partial = tmp_path / 'partial.py'
  partial.write_text('import ml_collections\n\n\ndef get_config():\n'
                     '  return ml_collections.ConfigDict({"seeds": (0, 1)})\n')
  out = commands.run_module('study.run', f'--config={partial}', f'--workdir={tmp_path / "w"}',
                            timeout=900)
  assert out.returncode == 2, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      f'error: --config {partial}: the study config has no config.'), lines
  assert 'config.results' in lines[0] and 'config.seeds' not in lines[0], lines[0]
  assert not os.path.exists(tmp_path / 'w')


def test_a_trainer_config_is_named_as_one_not_listed_as_missing_study_keys():
  """Before, configs/mae/fashion_mnist.py given to study.run listed 25 missing study keys."""
  from configs.mae import fashion_mnist
  with pytest.raises(UserError, match=r"^--config c.py: a trainer's config, not a study config; "
                                      r'a study runs configs/study/converged.py or '
                                      r'configs/study/demo.py$'):
    run_lib.preflight(fashion_mnist.get_config(), '--config c.py')


def test_study_check_is_an_entry_point(tmp_path):
  """`python -m study.check --help` printed nothing (exit status 0): the module had no main."""
  helped = commands.run_module('study.check', '--help', timeout=900)
  assert helped.returncode == 0 and 'python -m study.check' in helped.stdout, helped.stderr
  assert '--config: Path to an ml_collections config file' in helped.stdout
  out = commands.run_module('study.check', '--config=configs/study/demo.py',
                            f'--config.results={tmp_path / "results"}', timeout=900)
  assert out.returncode == 0, out.stderr[-2000:]
  assert re.fullmatch(r'configs/study/demo.py: the study config and its \d+ distinct trainer '
                      r'configs validate\n', out.stdout), out.stdout
  assert not os.listdir(tmp_path)  # Writes nothing.

