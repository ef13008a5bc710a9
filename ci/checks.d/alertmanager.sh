#!/usr/bin/env bash
# Alertmanager config is valid as committed and as rendered for tests; critical pages, warning tickets.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}; [ -x "$PY" ] || PY=python3
cfg=compose/alertmanager/alertmanager.yml
amtool check-config "$cfg"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$PY" compose/alertmanager/render.py --pager http://127.0.0.1:1/pager --ticket http://127.0.0.1:1/ticket --fast \
  > "$tmp/alertmanager.yml"
amtool check-config "$tmp/alertmanager.yml"
for c in "$cfg" "$tmp/alertmanager.yml"; do
  amtool config routes test --config.file="$c" --verify.receivers=pager severity=critical alertname=AgentgovHiddenEscalation 2>/dev/null
  amtool config routes test --config.file="$c" --verify.receivers=ticket severity=warning alertname=AgentgovBehaviourDrift 2>/dev/null
done
