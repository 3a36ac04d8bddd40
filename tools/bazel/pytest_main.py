"""Runs one pytest file as a Bazel py_test: `pytest_main.py tests/test_x.py [pytest args]`.

Native py_test runs a script, not pytest, so each test target runs this with its file. The
JUnit report goes where Bazel collects it (XML_OUTPUT_FILE), so failures show per test case.
"""
import os
import sys

import pytest


def main(argv: list[str]) -> int:
  args = ['-q', '-p', 'no:cacheprovider', *argv]
  if 'XML_OUTPUT_FILE' in os.environ:
    args.append('--junitxml=' + os.environ['XML_OUTPUT_FILE'])
  return pytest.main(args)


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
