#!/bin/sh
# Broker start-up for compose: render the JAAS file (SASL PLAIN for the super user `admin`, which brokers and
# controllers use between themselves; SCRAM-SHA-512 for every agentgov principal) and the admin client
# properties the healthcheck uses, from BROKER_ADMIN_PASSWORD, then run the image's own start script.
# The password must not contain a double quote or a backslash (JAAS quoting).
# tests/integration/test_compose_kafka.py runs this same script with BROKER_CONF_DIR and BROKER_RUN set.
set -eu
: "${BROKER_ADMIN_PASSWORD:?set KAFKA_ADMIN_PASSWORD in .env}"
dir=${BROKER_CONF_DIR:-/tmp}
umask 077
cat > "$dir/kafka_jaas.conf" <<JAAS
KafkaServer {
  org.apache.kafka.common.security.plain.PlainLoginModule required
    username="admin" password="${BROKER_ADMIN_PASSWORD}" user_admin="${BROKER_ADMIN_PASSWORD}";
  org.apache.kafka.common.security.scram.ScramLoginModule required;
};
JAAS
cat > "$dir/admin.properties" <<PROPS
security.protocol=SASL_PLAINTEXT
sasl.mechanism=PLAIN
sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="${BROKER_ADMIN_PASSWORD}";
PROPS
exec ${BROKER_RUN:-/etc/kafka/docker/run} "$@"
