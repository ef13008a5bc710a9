#!/usr/bin/env bash
# Compose runs the schema registry the tests prove: Apicurio at the version of ci/registry/pom.xml, SQL variant
# (what the pom builds), on the PostgreSQL major version the registry tests start (Debian's postgresql).
set -euo pipefail
cd "$(dirname "$0")/../.."
pom=$(sed -n 's#.*<apicurio.version>\(.*\)</apicurio.version>.*#\1#p' ci/registry/pom.xml)
for f in compose/docker-compose.yml .env.example; do
  grep -q "apicurio/apicurio-registry-sql:$pom" "$f" || { echo "$f: registry image is not apicurio/apicurio-registry-sql:$pom (ci/registry/pom.xml)"; exit 1; }
done
major=$(grep -o 'REGISTRY_DB_IMAGE:-postgres:[0-9]*' compose/docker-compose.yml | sed 's/.*postgres://')
grep -q "REGISTRY_DB_IMAGE=postgres:$major\." .env.example || { echo ".env.example: REGISTRY_DB_IMAGE is not postgres:$major.x like compose"; exit 1; }
echo "compose registry Apicurio $pom (SQL) on PostgreSQL $major matches the test tier"
