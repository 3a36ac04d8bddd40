"""The shared ViT library: models, data, sharding, training core, checkpoints, evaluators."""
import os
import signal
import sys

# TensorFlow is imported only by TFDS and TensorBoard writers; keep its C++ start-up chatter
# off the console unless the user asked for it (3: also its errors, e.g. a TensorBoard flush on
# a full disk, which the training loop reports in one line of its own).
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # TF does no compute here.


def _one_line_for_ctrl_c(kind, value, tb, _python_hook=sys.excepthook):
  if issubclass(kind, KeyboardInterrupt):
    sys.stderr.write('interrupted while starting: nothing was written\n')
    return  # Python then exits by SIGINT itself (status 130 in a shell), as without the hook.
  _python_hook(kind, value, tb)


# An entry point (`python -m mpp.train`) spends seconds importing jax, TF and orbax before
# vit.cli.run catches Ctrl-C, and Python printed a KeyboardInterrupt traceback for it. Only when
# one of this repository's modules is the program: `python -m` imports its package (each entry
# package imports vit first) while sys.argv[0] is still '-m', and sys.orig_argv names the
# module. A library import, or another package's `python -m`, never changes the program's hook.
_OURS = ('mae', 'mpp', 'simmim', 'study', 'supervised', 'vit')


def _program_is_ours() -> bool:
  argv = getattr(sys, 'orig_argv', [])
  if sys.argv[:1] != ['-m'] or '-m' not in argv[1:-1]:
    return False
  return argv[argv.index('-m', 1) + 1].split('.')[0] in _OURS


# A Ctrl-C that lands while a garbage-collection callback of jax's runs (`_xla_gc_callback`,
# often during its import) is dropped by Python, which prints 'Exception ignored in' and a
# traceback; the run then trained to its end. The handler records it too: vit.cli.run stops
# before starting, the loop's StopSignal stops as for a signal during start-up.
interrupted = False


def _record_ctrl_c(signum, frame):
  global interrupted
  interrupted = True
  signal.default_int_handler(signum, frame)  # KeyboardInterrupt, as Python's own handler.


def _quiet_dropped_ctrl_c(unraisable, _python_hook=sys.unraisablehook):
  if not (interrupted and isinstance(unraisable.exc_value, KeyboardInterrupt)):
    _python_hook(unraisable)


def _one_line_for_sigterm(signum, frame):
  """SIGTERM while an entry point imports: Python's default ended it without a word (exit
  status 143 in a shell). One line, then the same end by the signal itself: nothing to clean
  up, and an exception raised here could be dropped as a Ctrl-C is (above)."""
  del frame
  sys.stderr.write('stopped while starting (SIGTERM): nothing was written\n')
  sys.stderr.flush()
  signal.signal(signum, signal.SIG_DFL)
  signal.raise_signal(signum)


# For the imports only: vit.cli.run gives SIGTERM back to its default before anything is
# written and before jax.distributed starts (its preemption notifier takes SIGTERM in a job of
# several processes), then a trainer's start-up takes it over (`vit.cli.Terminated`).
_one_line_for_sigterm.vit_while_importing = True


if _program_is_ours():
  sys.excepthook = _one_line_for_ctrl_c
  if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # Not an ignored SIGINT.
    signal.signal(signal.SIGINT, _record_ctrl_c)
    sys.unraisablehook = _quiet_dropped_ctrl_c
  if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # Not one its parent ignores.
    signal.signal(signal.SIGTERM, _one_line_for_sigterm)
