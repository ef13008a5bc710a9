#!/usr/bin/env bash
# Compose runs the Kafka the tests prove: same version as ci/kafka/pom.xml, same replication settings as
# the test harness (pipeline/kraft.py: RF 3, min.insync.replicas 2, transaction log RF 3 / min ISR 2).
set -euo pipefail
cd "$(dirname "$0")/../.."
pom=$(sed -n 's#.*<kafka.version>\(.*\)</kafka.version>.*#\1#p' ci/kafka/pom.xml)
for f in compose/docker-compose.yml .env.example; do
  grep -q "apache/kafka:$pom" "$f" || { echo "$f: Kafka image is not apache/kafka:$pom (ci/kafka/pom.xml)"; exit 1; }
done
for kv in "KAFKA_DEFAULT_REPLICATION_FACTOR: 3" "KAFKA_MIN_INSYNC_REPLICAS: 2" \
          "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR: 3" "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR: 2" \
          "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR: 3"; do
  grep -q "$kv" compose/docker-compose.yml || { echo "compose/docker-compose.yml: missing '$kv'"; exit 1; }
done
echo "compose Kafka $pom with RF 3 / min ISR 2 matches the test harness"
