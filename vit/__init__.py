"""The shared ViT library: models, data, sharding, training core, checkpoints, evaluators."""
import os
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


if _program_is_ours():
  sys.excepthook = _one_line_for_ctrl_c
