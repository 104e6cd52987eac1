"""Unix socket paths for the engines the router starts itself (the `${SOCKET}` macro in a model's command).

llama-server b11312 listens on a Unix socket when `--host` ends in `.sock` (tools/server/server-http.cpp:500-505).
Against a new TCP connection per request to 127.0.0.1 it saves the router about 95 µs of CPU and 90 µs of latency
per request (docs/benchmark-history.md), and only the router's user can reach the engine: the directory is 0700.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path

from router_app.engines.supervisors.base import SupervisorError

# sockaddr_un.sun_path holds 108 bytes with the terminating NUL; cpp-httplib refuses longer paths
# (vendor/cpp-httplib/httplib.cpp:2366) and the engine would exit with "couldn't bind".
MAX_PATH_BYTES = 107


class SocketPathTooLong(SupervisorError):
    """The socket directory's path leaves no room for a socket name."""


class SocketDir:
    """A private directory (mode 0700) for the engines' sockets: made on first use, removed by `remove()`.

    Under $RUNTIME_DIRECTORY (systemd's RuntimeDirectory=), else $XDG_RUNTIME_DIR, else the temp directory.
    Each engine instance gets its own name once and keeps it across restarts.
    """

    def __init__(self) -> None:
        self._path: Path | None = None
        self._numbers = itertools.count(1)

    def ready_path(self, path: str | None) -> str:
        """`path` (a new one if None) with nothing left there: llama-server does not remove its socket on exit,
        and cannot bind where one is left."""
        path = path or self._new_path()
        Path(path).unlink(missing_ok=True)
        return path

    def _new_path(self) -> str:
        if self._path is None:
            base = (os.environ.get("RUNTIME_DIRECTORY") or "").split(":")[0] or os.environ.get("XDG_RUNTIME_DIR")
            self._path = Path(tempfile.mkdtemp(prefix="llm-router-", dir=base or None))
        path = str(self._path / f"engine-{next(self._numbers)}.sock")
        if len(os.fsencode(path)) > MAX_PATH_BYTES:
            raise SocketPathTooLong(
                f"engine socket path {path!r} is longer than {MAX_PATH_BYTES} bytes (a Unix socket's limit): "
                "point TMPDIR (or XDG_RUNTIME_DIR) at a shorter directory"
            )
        return path

    def remove(self) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None
