"""A loopback port for the coordinator of a `jax.distributed` run a test starts in children.

A port that is found free, closed, then bound by a child once it has imported jax (a minute on a
loaded machine) can be taken in between by any other process: another test suite on the same
machine picking its own port, or a connection's ephemeral port. `reserved()` keeps it bound
(SO_REUSEPORT, not listening) until the run has ended: no other bind or connection gets it, and
the coordinator's gRPC server, which binds with SO_REUSEPORT as the same user, still can.
"""
from __future__ import annotations

import contextlib
import socket
from typing import Iterator


@contextlib.contextmanager
def reserved() -> Iterator[int]:
  """A free port on 127.0.0.1, held until the `with` block ends."""
  with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(('127.0.0.1', 0))
    yield s.getsockname()[1]
