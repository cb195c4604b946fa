"""A full disk for tests: a real small tmpfs where the machine allows one, else an injected ENOSPC.

``on_a_small_disk`` mounts a tmpfs of ``size`` in a private mount namespace (``unshare -rm``,
no privileges needed where user namespaces are enabled) and runs a Python script there with
the disk's path as its argument; the test is skipped where no such mount can be made.
``disk_full_on`` makes writes to files whose name contains a marker fail as a full disk does
(the file is created, the write raises ENOSPC), for machines without the tmpfs.
"""

from __future__ import annotations

import builtins
import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def on_a_small_disk(tmp_path: Path, script: str, size: str = "512k") -> dict[str, Any]:
    """Run ``script`` (which prints one JSON object) with a fresh tmpfs of ``size`` as ``sys.argv[1]``."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not shutil.which("unshare"):
        pytest.skip("no unshare here to mount a small tmpfs")
    trial = ["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(disk)]
    probe = subprocess.run(trial, check=False, capture_output=True)
    if probe.returncode != 0:
        pytest.skip("this machine does not let a test mount a tmpfs in a private namespace")
    code = tmp_path / "on_a_small_disk.py"
    code.write_text(script)
    mount = f"mount -t tmpfs -o size={size} tmpfs {disk} && exec {sys.executable} {code} {disk}"
    out = subprocess.run(["unshare", "-rm", "sh", "-c", mount], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def disk_full_on(monkeypatch: pytest.MonkeyPatch, marker: str) -> list[str]:
    """Files opened for writing whose name contains ``marker`` fail as on a full disk; the paths it failed."""
    real_open = builtins.open
    failed: list[str] = []

    class FullDisk:
        def __init__(self, handle: Any) -> None:
            self.handle = handle

        def write(self, data: bytes) -> int:
            failed.append(self.handle.name)
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.handle, name)

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

    def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        return FullDisk(handle) if "w" in mode and marker in str(file) else handle

    monkeypatch.setattr(builtins, "open", open_)
    return failed
