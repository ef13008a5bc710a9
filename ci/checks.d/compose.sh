#!/usr/bin/env bash
# The compose stack renders (production and laptop variants, with .env.example) and Prometheus' config
# (with its rule files) is valid. No Docker engine needed.
set -euo pipefail
cd "$(dirname "$0")/../.."
docker-compose --env-file .env.example -f compose/docker-compose.yml config -q
docker-compose --env-file .env.example -f compose/docker-compose.yml -f compose/docker-compose.laptop.yml config -q
promtool check config compose/prometheus/prometheus.yml
