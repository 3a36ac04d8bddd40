"""Runs a project module as `python -m MODULE` would, from the directory `bazel run` was called in.

`bazel run` starts binaries inside their runfiles tree; relative `--config` and `--workdir`
paths should mean what they mean on the command line, so move back to BUILD_WORKING_DIRECTORY.
The module itself is still imported from the runfiles tree (Bazel's PYTHONPATH), i.e. the built
sources and their declared dependencies.
"""
import os
import runpy
import sys


def run(module: str) -> None:
  if 'BUILD_WORKING_DIRECTORY' in os.environ:
    os.chdir(os.environ['BUILD_WORKING_DIRECTORY'])
  sys.argv[0] = module
  runpy.run_module(module, run_name='__main__', alter_sys=True)
