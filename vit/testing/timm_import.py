"""`import_timm()`: timm without torchvision, for the tests and benchmarks that compare with it.

timm is installed with --no-deps (requirements-bench.txt): its torchvision dependency would pull
a CUDA build of torch. timm imports torchvision at module level for BatchNorm freezing and data
transforms only, which a plain ViT never uses, so a stand-in module answers those imports.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


class _Missing(type):
  """A torchvision name timm imports but a plain ViT never uses: usable in annotations and
  dicts, an ImportError when called."""

  def __getattr__(cls, name):
    if name.startswith('__'):
      raise AttributeError(name)
    return _Missing(name, (), {})

  def __call__(cls, *args, **kwargs):
    raise ImportError(f'torchvision is not installed (timm asked for {cls.__name__})')


class _MissingModule(types.ModuleType):
  def __getattr__(self, name):
    if name.startswith('__'):
      raise AttributeError(name)
    return _Missing(name, (), {})


class _TorchvisionStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Lets `import timm` succeed without torchvision, whose wheel would pull a CUDA torch:
  timm imports it at module level for BatchNorm freezing and data transforms only."""

  def find_spec(self, name, path, target=None):
    if name == 'torchvision' or name.startswith('torchvision.'):
      return importlib.machinery.ModuleSpec(name, self, is_package=True)
    return None

  def create_module(self, spec):
    return _MissingModule(spec.name)

  def exec_module(self, module):
    module.__path__ = []


def import_timm():
  """The timm module; raises ImportError when timm itself is not installed.

  The stand-in exists only while timm is imported (timm keeps the names it bound): left in
  `sys.modules` or `sys.meta_path`, it would make `importlib.util.find_spec('torchvision')`
  succeed, and transformers, believing torchvision installed, fails parsing its version 'N/A'.
  """
  try:
    import torchvision  # noqa: F401  (torch: optional; a real one, when installed, is used as is)
  except ImportError:
    pass
  else:
    import timm  # Optional (torch): only the timm comparisons and exports need it.
    return timm
  stand_in = _TorchvisionStandIn()
  sys.meta_path.append(stand_in)
  try:
    import timm  # Optional (torch), imported past the stand-in above.
  finally:
    sys.meta_path.remove(stand_in)
    for name in [n for n, m in sys.modules.items() if isinstance(m, _MissingModule)]:
      del sys.modules[name]
  return timm


def import_timm_or_skip():
  """`import_timm()` at a test module's top: the module is skipped in one line where timm is not
  installed (`make test` installs it: requirements-bench.txt)."""
  import pytest  # Only test modules call this; the benchmarks use `import_timm`.
  try:
    return import_timm()
  except ImportError:
    pytest.skip('timm is not installed (make test installs requirements-bench.txt)',
                allow_module_level=True)
