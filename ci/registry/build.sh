#!/usr/bin/env bash
# Build the runnable Apicurio Registry (SQL variant) named in ci/registry/pom.xml into .cache/registry/<hash>/ (ignored),
# once: a second run finds it and returns at once. The registry tests (marker kafka) run it.
# Called by ci/kafka/resolve.sh, so `make test` and `make kafka-jars` build it; same JDK/Maven rule as there.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
start=$(date +%s)
if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
  exit 0  # ci/kafka/resolve.sh has said why (and failed under CI=true)
fi
app=$("$PY" -c 'from pipeline.apicurio import registry_app; print(registry_app())')
echo "schema registry: $app ($(( $(date +%s) - start ))s)"
