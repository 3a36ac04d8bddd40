# First, as `python -m` imports this package: Ctrl-C while an entry point starts (imports take
# seconds) is then one line, not a traceback (vit/__init__.py).
import vit  # noqa: F401
