#!/bin/sh
# The interpreter of every py_binary / py_test: the project's .venv, found from this script's
# real location (Bazel runs it through runfiles symlinks), so the pinned packages resolve
# wherever the checkout lives. VIT_PYTHON overrides it (e.g. a system-wide environment).
if [ -n "$VIT_PYTHON" ]; then
  exec "$VIT_PYTHON" "$@"
fi
root=$(dirname "$(dirname "$(dirname "$(readlink -f "$0")")")")
if [ ! -x "$root/.venv/bin/python" ]; then
  echo "error: $root/.venv/bin/python not found: run 'make setup' first" >&2
  exit 2
fi
exec "$root/.venv/bin/python" "$@"
