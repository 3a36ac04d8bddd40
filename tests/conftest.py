import os

# Tests run on the CPU whatever is installed (libtpu would otherwise probe for a TPU).
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
