"""Helpers for the serving tests (imported by name: tests/serving is on sys.path): re-sealing an
export as an attacker with write access would (rewriting every checksum), the documented export
digest computed independently, and a live uvicorn server on a free localhost port."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reseal_export(export_dir: Path) -> None:
    """Rewrite each size folder's checksums.json and the root checksums.json so that they match the
    files as they are now: what someone who can write to the export can always do."""
    index = json.loads((export_dir / "index.json").read_text())
    root = {"index.json": sha256(export_dir / "index.json")}
    for entry in index["entries"].values():
        folder = export_dir / entry["dir"]
        if not folder.is_dir():
            continue
        sums = {
            p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != "checksums.json"
        }
        (folder / "checksums.json").write_text(json.dumps(sums, indent=2, sort_keys=True))
        root[f"{entry['dir']}/checksums.json"] = sha256(folder / "checksums.json")
    (export_dir / "checksums.json").write_text(json.dumps(root, indent=2, sort_keys=True))


def reference_digest(export_dir: Path) -> str:
    """The export digest as docs/serving.md defines it, computed from the files themselves:
    sha256 over the sorted ``"<sha256>  <path>\\n"`` lines of index.json and every size's checksums.json."""
    index = json.loads((export_dir / "index.json").read_text())
    paths = ["index.json", *(f"{e['dir']}/checksums.json" for e in index["entries"].values())]
    lines = "".join(f"{sha256(export_dir / p)}  {p}\n" for p in sorted(paths))
    return hashlib.sha256(lines.encode()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(app, limits) -> Iterator[int]:
    """Run ``app`` under uvicorn with ``limits`` (serving.server.ServerLimits) on a free localhost
    port in a thread; yields the port."""
    import uvicorn

    from serving.server import uvicorn_config

    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, limits, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
