"""agentgov: a governance pipeline for AI agents that make IAM decisions.

Data flow: ``events`` -> ``serde`` -> ``consumer`` -> ``scoring`` -> ``sinks.clickhouse`` -> ``metrics``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("agentgov")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+src"

__all__ = ["__version__"]
