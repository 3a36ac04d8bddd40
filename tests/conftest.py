import os

# Tests run on the CPU whatever is installed (libtpu would otherwise probe for a TPU).
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# The XLA flags the entry points start with (vit.cli.run), so tests compile what users run.
from vit import xla_flags  # noqa: E402

xla_flags.apply_defaults()

# The console the entry points show the library's messages on (vit.cli.run installs it): tests
# that call the library in-process read those lines from capsys as a user reads them.
from vit import cli  # noqa: E402

cli.log_to_console()
