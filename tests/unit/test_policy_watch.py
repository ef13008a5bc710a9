"""A changed policy file is picked up between batches; an invalid one is rejected and the last good
policy stays in force."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.policy_watch import PolicyWatcher
from pipeline.scoring.policy import load_policy

GOOD = Path("policies/default.yaml").read_text()


def _write(path: Path, text: str, bump: int) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, (st.st_atime, st.st_mtime + bump))  # mtime granularity must not hide the change


def test_reload_on_change_and_keep_last_good_on_error(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    _write(path, GOOD, 0)
    watcher = PolicyWatcher(path, load_policy(path), interval=0)
    assert watcher.poll() is None  # unchanged

    _write(path, GOOD.replace('version: "2026.11.0"', 'version: "2026.11.1"'), 10)
    new = watcher.poll()
    assert new is not None and new.version == "2026.11.1"

    _write(path, "version: [not, valid\n", 20)
    assert watcher.poll() is None
    assert watcher.current.version == "2026.11.1"

    _write(path, GOOD.replace('version: "2026.11.0"', 'version: "2026.11.1"'), 30)  # same content again
    assert watcher.poll() is None


def test_a_non_utf8_policy_file_is_a_config_error_and_the_old_policy_stays(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    _write(path, GOOD, 0)
    watcher = PolicyWatcher(path, load_policy(path), interval=0)
    newer = GOOD.replace('version: "2026.11.0"', 'version: "2026.11.2"').encode()
    path.write_bytes(newer + b"\n# \xff\xfe latin-1 \xe9\n")
    st = path.stat()
    os.utime(path, (st.st_atime, st.st_mtime + 10))
    assert watcher.poll() is None  # rejected, not raised: a scorer keeps scoring
    assert watcher.current.version == "2026.11.0"
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_policy(path)
