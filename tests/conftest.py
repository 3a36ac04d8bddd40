import atexit
import os
import shutil
import tempfile

# Tests run on the CPU whatever is installed (libtpu would otherwise probe for a TPU).
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# The XLA flags the entry points start with (vit.cli.run), so tests compile what users run.
from vit import xla_flags  # noqa: E402

xla_flags.apply_defaults()
# One difference from what users run: LLVM's optimisation of XLA:CPU's generated code is off in
# the tests and the entry points they start (children inherit XLA_FLAGS; a test that sets its
# children's XLA_FLAGS itself compiles them as users do). The suite is bound by compiling many
# tiny programs, not by running them: a cold tiny training run takes 6.4 instead of 11 CPU-s,
# test_tensorboard 34 instead of 48 s. XLA's own passes, fusions and the library calls for dots
# are unchanged; only the code of element-wise fusions is less optimised (rounding may differ in
# the last bit, e.g. a multiply-add not contracted), which no assertion depends on: comparisons
# with other code (transformers, timm, vit_jax) have tolerances, and bitwise ones compare two
# programs of the same setting. Speeds are measured in benchmarks/, which never set this.
# A second: XLA:CPU's older elemental emitters write the fusions' code, not its MLIR fusion
# emitters (users' default), whose lowering pipeline costs more than the tiny programs' run:
# test_objective and test_sharding took 60 instead of 108 CPU-s, one MPP short run's compiles
# 8.2 instead of 14.9 s (4977507, measured one after the other). The same HLO, fusions and
# library calls; as above, only how an element-wise fusion is written into code differs (the
# last bit of a transcendental may), which no assertion depends on. `make demo`, the study and
# the Bazel MPP run (`make bazel-test`) compile with the users' emitters.
xla_flags.apply_defaults(defaults={'xla_backend_optimization_level': '0',
                                   'xla_cpu_use_fusion_emitters': 'false'})

# The console the entry points show the library's messages on (vit.cli.run installs it): tests
# that call the library in-process read those lines from capsys as a user reads them.
from vit import cli  # noqa: E402

cli.log_to_console()

# One persistent XLA cache for the whole run, shared by the tests in this process and the entry
# points they start (vit.cli.run reads JAX_COMPILATION_CACHE_DIR): most tests compile the same
# tiny models' init, step and evaluation, and each distinct program then compiles once. Every
# entry is kept (no minimum compile time or size), as a resumed run's steps are in real use.
# Tests of the cache itself, or that must compile (a full disk), set their own.
# Under pytest-xdist (`make test` runs two workers) each worker process makes its own: a worker
# inherits the variable from the process that started it, and two test processes that compile the
# same programs at once would share one cache while jax writes an entry in place (open, write; no
# rename), so one could read the other's half-written entry: a warning on the stderr of an entry
# point that should print one line, and a recompile. VIT_TESTS_XLA_CACHE_DIR marks a cache made
# here, to tell it from a user's own JAX_COMPILATION_CACHE_DIR, which is kept.
_cache = os.environ.get('JAX_COMPILATION_CACHE_DIR')
if _cache is None or _cache == os.environ.get('VIT_TESTS_XLA_CACHE_DIR'):
  _cache = tempfile.mkdtemp(prefix='vit-tests-xla-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = os.environ['VIT_TESTS_XLA_CACHE_DIR'] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
# The entry points the tests start keep every entry too (jax reads these variables when it is
# imported): with jax's defaults a child writes only programs that took a second or more to
# compile, and each child compiles the many small ones again.
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
import jax  # noqa: E402

jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)

import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope='module', autouse=True)
def _release_compiled_programs():
  """Drops jax's in-memory compiled programs after each test file.

  A test process otherwise keeps every executable it ever compiled: measured on seven files run
  in one process, RSS grew from 1.8 to 4.4 GB, and each of `make test`'s two workers reached
  about 5 GB, too much for an 8 GB laptop. Cleared after each file, the same seven files peaked
  at 2.6 GB (torch's import is most of the rest), and over the whole suite each worker peaked at
  3.6 GB (63fe46c). A later file's programs come back from the persistent cache above: those
  seven files took 497 s instead of 463 s (one run each, on a shared machine). Autouse and
  module-scoped, it is set up before a file's other module fixtures and so torn down after them.
  """
  yield
  jax.clear_caches()
  gc.collect()
