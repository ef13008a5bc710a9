"""Formatting an embedded KRaft node with the cluster ids it can meet.

One random id in 64 starts with ``-`` (URL-safe base64). Passed as ``-t ID``, ``kafka-storage format`` read
such an id as an option, printed its usage and failed, and ``agentgov run`` with the durable embedded Kafka
did not start (seen once in a CI run). New ids never start with ``-``; an id file an older agentgov wrote can
still hold one, and must still format."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.broker import free_port
from pipeline.kraft import KraftNode, kafka_libs, new_cluster_id

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


def leading_dash_id() -> str:
    """A real 16-byte id whose base64 starts with ``-`` (the first six bits are 62)."""
    raw = bytearray(uuid.uuid4().bytes)
    raw[0] = 0xF8 | (raw[0] & 0x03)
    cluster_id = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    assert cluster_id.startswith("-")
    return cluster_id


@pytest.mark.parametrize("make_id", [leading_dash_id, new_cluster_id], ids=["old-id-with-leading-dash", "new-id"])
def test_a_node_formats_with_its_cluster_id(tmp_path: Path, make_id: Callable[[], str]) -> None:
    cluster_id = make_id()
    node = KraftNode(1, tmp_path / "node-1", free_port(), free_port())
    node.write_config(f"1@127.0.0.1:{node.controller_port}", 1, {})
    proc = node.format(kafka_libs(), cluster_id)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out.decode()[-1500:]
    meta = (node.data / "meta.properties").read_text()
    assert f"cluster.id={cluster_id}" in meta.splitlines()
