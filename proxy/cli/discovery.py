"""Where a running proxy serves: ``memproxy serve`` announces itself in its data directory.

The GDPR commands (``forget``, ``export``, ``migrate``, ``audit``) then talk to it through its memory
API instead of opening a store the proxy holds (the embedded store admits one process at a time),
so they act with the serving proxy's own configuration: its upstream, its Assistants mode.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

ANNOUNCEMENT = "serve.json"


def announce(data_dir: Path, url: str) -> None:
    """Say that this process serves ``data_dir`` at ``url`` (until :func:`withdraw`)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / ANNOUNCEMENT).write_text(json.dumps({"url": url, "pid": os.getpid()}))


def withdraw(data_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (data_dir / ANNOUNCEMENT).unlink()


def serving(data_dir: Path) -> str | None:
    """The URL of the proxy serving ``data_dir`` now, or None (no announcement, or its process is gone)."""
    try:
        found = json.loads((data_dir / ANNOUNCEMENT).read_text())
        os.kill(int(found["pid"]), 0)  # signal 0: is it alive?
    except (OSError, ValueError, KeyError, TypeError):
        return None
    url = found.get("url")
    return url if isinstance(url, str) else None


def local_url(host: str, port: int) -> str:
    """How a command on this machine reaches a proxy listening on ``host``."""
    reachable = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{reachable}:{port}"
