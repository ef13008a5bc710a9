#!/usr/bin/env bash
# Resolve the Apache Kafka server jars named in ci/kafka/pom.xml into .cache/kafka/<pom hash>/libs (ignored),
# once: a second run finds them and returns at once. The Kafka test tier and AGENTGOV_EMBEDDED_BROKER=kafka
# run from them. Without a JDK or Maven it says so in one line and exits 0 (the tier is then skipped),
# except under CI=true, where it fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
start=$(date +%s)
if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
  msg="no JDK/Maven: install a JDK 17+ and Maven (Debian: apt-get install openjdk-17-jdk-headless maven)"
  if [ "${CI:-}" = "true" ]; then echo "kafka tier cannot run on CI: $msg" >&2; exit 1; fi
  echo "kafka tier will be skipped: $msg"
  exit 0
fi
libs=$("$PY" -c 'from pipeline.kraft import kafka_libs; print(kafka_libs())')
echo "kafka jars: $libs ($(ls "$libs" | wc -l) files, $(( $(date +%s) - start ))s)"
bash ci/registry/build.sh
