#!/usr/bin/env bash
# Static checks of the non-Python artefacts. Every ci/checks.d/*.sh runs; any failure fails the build.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
for check in ci/checks.d/*.sh; do
  echo "== $check"
  bash "$check"
done
