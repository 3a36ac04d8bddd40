"""What every entry point shares: the --config/--workdir flags and one-line user errors."""
from __future__ import annotations

import os
import sys
from typing import Callable

from absl import app, flags, logging
from ml_collections import config_flags

from vit.errors import UserError


def define_config_flags(default_config: str | None = None, workdir_required: bool = True):
  config = config_flags.DEFINE_config_file(
      'config', default_config, 'Path to an ml_collections config file; override any field '
      'with --config.a.b=value.', lock_config=True)
  workdir = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard '
                                'events and the batch contract; rerunning resumes from it.',
                                required=workdir_required)
  return config, workdir


def run(main: Callable[[list[str]], None]) -> None:
  """absl's app.run, with UserError printed as one line (no traceback) and exit status 2."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

  def wrapped(argv):
    logging.set_verbosity(logging.WARNING)
    try:
      main(argv)
    except UserError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    except FloatingPointError as e:
      print(f'error: {e}; the last good checkpoint is kept', file=sys.stderr)
      sys.exit(3)

  app.run(wrapped)
