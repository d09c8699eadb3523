"""A gateway whose ``[store] key_file`` does not open the keys the store holds stops at
start-up with an error naming the key, on both backends: it must not start, serve no
certificate and record failed orders in rows the rest of the fleet shares."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.gateway import CLI, write_config
from tests.support import make_config
from webgateway.config import Config, ConfigError
from webgateway.storefactory import open_store


def _key_file(path: Path) -> Path:
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


def _gateway(tmp_path: Path, name: str, store: dict[str, Any], key: Path | None) -> Config:
    section = {**store, **({"key_file": str(key)} if key else {})}
    return make_config(tmp_path / name, store=section)


async def test_a_gateway_with_another_key_file_or_none_does_not_start(
        tmp_path: Path, store_section: dict[str, Any]) -> None:
    shared = dict(store_section)
    if "url" not in shared:  # one SQLite file, reopened by a gateway with another key file
        shared["path"] = str(tmp_path / "shared.db")
    fleet_key = _key_file(tmp_path / "fleet.key")
    first = await open_store(_gateway(tmp_path, "gw1", shared, fleet_key).store)
    await first.close()
    again = await open_store(_gateway(tmp_path, "gw2", shared, fleet_key).store)
    await again.close()  # the same file: fine, every time

    with pytest.raises(ConfigError) as wrong:
        await open_store(_gateway(tmp_path, "gw3", shared,
                                  _key_file(tmp_path / "other.key")).store)
    assert wrong.value.key == "store.key_file"
    assert "does not open" in wrong.value.reason and "same file" in wrong.value.reason
    with pytest.raises(ConfigError) as none:
        await open_store(_gateway(tmp_path, "gw4", {**shared, "plaintext_keys": True},
                                  None).store)
    assert none.value.key == "store.key_file"
    assert "has none" in none.value.reason


def test_run_with_the_wrong_key_file_exits_naming_the_key(tmp_path: Path) -> None:
    def config(name: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        return write_config(d, store={"path": str(tmp_path / "gw.db"),
                                      "key_file": str(_key_file(d / "store.key"))})

    first = subprocess.run([*CLI, "owner", "add", "alice", "--config", str(config("a"))],
                           capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    other = subprocess.run([*CLI, "run", "--config", str(config("b"))],
                           capture_output=True, text=True, timeout=30)
    assert other.returncode == 2
    assert "config error: store.key_file:" in other.stderr
    assert "does not open" in other.stderr
