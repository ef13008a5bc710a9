#!/usr/bin/env bash
# Debian packages the tests need: real Prometheus/promtool, Alertmanager/amtool, docker-compose (config only),
# Chromium for the review workbench's browser tests (driven by Playwright through executable_path; no
# browser download), PostgreSQL for the schema registry's storage (the registry tests start their own server);
# on CI also a JDK and Maven for the Kafka tier (elsewhere a machine without them skips it).
set -euo pipefail
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v amtool >/dev/null || need+=(prometheus-alertmanager)
command -v docker-compose >/dev/null || need+=(docker-compose)
[ -x /usr/bin/chromium ] || need+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ "${CI:-}" = "true" ]; then
  command -v java >/dev/null || need+=(openjdk-17-jdk-headless)
  command -v mvn >/dev/null || need+=(maven)
fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
