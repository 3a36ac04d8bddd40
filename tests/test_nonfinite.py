"""A diverging run of the real CLI stops with one line naming the step and the metric, exit 3,
no traceback; the checkpoints before it stay. (The exact step, skipping and counting, and the
guard before a save step: tests/test_checkpoints.py.)"""
import glob
import os
import re

import numpy as np

from benchmarks import chaos

# SGD at 1e30 without clipping: the first update sends the weights to ~1e30, and the second
# step overflows. Which metric overflows first depends on the LayerNorm's arithmetic (flax's
# gives a NaN loss; vit/models/layer_norm.py's variance overflows to inf, the normalised output
# stays finite and only the gradient is inf), so the message may name either.
DIVERGE = ('--config.optimizer.name=sgd', '--config.optimizer.learning_rate=1e30',
           '--config.optimizer.grad_clip_norm=0', '--config.optimizer.warmup_steps=0',
           '--config.checkpoint_every=1')


def test_nonfinite_loss_stops_with_one_line_and_keeps_checkpoints(tmp_path):
  out = chaos.run(str(tmp_path), 10, extra=DIVERGE)
  assert out['rc'] == 3, out['output'][-2000:]
  errors = [line for line in out['output'].splitlines() if line.startswith('error:')]
  assert len(errors) == 1, out['output'][-2000:]
  assert re.fullmatch(r'error: step 2: non-finite (loss=(nan|-?inf), )?grad_norm=(nan|inf); set '
                      r'config\.skip_nonfinite_steps=True to skip such steps; the state of that '
                      r'step was not saved', errors[0]), errors[0]
  assert 'Traceback' not in out['output']
  steps = sorted(int(os.path.basename(p)) for p in glob.glob(f'{tmp_path}/checkpoints/*'))
  assert steps == [1]  # Step 2's state was never saved.
  saved = chaos.final_state(str(tmp_path), 1)
  assert all(np.isfinite(v).all() for k, v in saved.items() if 'params' in k)
