"""Sinks: where assessments are stored. ``clickhouse`` is the audit store."""
