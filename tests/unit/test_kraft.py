"""Cluster ids for the embedded KRaft nodes (the format itself runs in tests/integration/test_kraft_format)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import kraft


def test_a_new_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first draw encodes to "-..." (first six bits 62), the second to an ordinary id.
    draws: Iterator[uuid.UUID] = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x10" + bytes(15))])
    monkeypatch.setattr(kraft.uuid, "uuid4", lambda: next(draws))
    cluster_id = kraft.new_cluster_id()
    assert cluster_id == "EAAAAAAAAAAAAAAAAAAAAA"
    assert len(cluster_id) == 22


def test_the_format_command_binds_the_id_to_its_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(kraft.subprocess, "Popen", lambda cmd, **_: seen.append(cmd))
    kraft.KraftNode(1, tmp_path, 1, 2).format(tmp_path, "-AAAAAAAAAAAAAAAAAAAAA")
    (cmd,) = seen
    args = cmd[cmd.index("kafka.tools.StorageTool") + 1:]
    assert args[:2] == ["format", "--cluster-id=-AAAAAAAAAAAAAAAAAAAAA"]
    assert "-t" not in args
