"""A gateway process for tests: write a config file, run ``webgateway``, call the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support import raw_config

CLI = [sys.executable, "-m", "webgateway.cli"]


def write_config(tmp: Path, **sections: dict[str, Any]) -> Path:
    doc = raw_config(tmp, **sections)
    lines: list[str] = []
    for section, values in doc.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            if isinstance(v, dict):
                inner = ", ".join(f"{json.dumps(a)} = {json.dumps(b)}" for a, b in v.items())
                lines.append(f"{k} = {{ {inner} }}")
            else:
                lines.append(f"{k} = {json.dumps(v)}")
    path = tmp / "webgateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_http(url: str, proc: subprocess.Popen[str], seconds: float = 20) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"exited early: {proc.returncode}: {err}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/healthz", timeout=1):
            return
        time.sleep(0.05)
    raise AssertionError(f"{url} did not come up")


@contextlib.contextmanager
def running(cfg: Path, command: str = "api") -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = tomllib.loads(cfg.read_text())["api"]["listen"].rsplit(":", 1)[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([*CLI, command, "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_http(url, proc)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


