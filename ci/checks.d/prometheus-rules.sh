#!/usr/bin/env bash
# Alert and recording rules parse, and their promtool unit tests pass (firing and not firing).
set -euo pipefail
cd "$(dirname "$0")/../.."
promtool check rules compose/prometheus/rules/*.yml
promtool test rules compose/prometheus/rules/tests/*.yml
