"""Kafka principals and ACLs, one-shot: ``python -m consumers.kafka_access`` (compose's ``kafka-access``).

Connects as the cluster's super user (``AGENTGOV_KAFKA_SASL_*``), sets the SCRAM-SHA-512 credential of
each agentgov principal from ``SCRAM_PASSWORD_<ROLE>`` and creates the ACLs of pipeline/acls.py. Every
principal is named after its role. Idempotent: run it again after changing a password.
"""

from __future__ import annotations

import logging
import os
import sys

from confluent_kafka.admin import AdminClient

from pipeline.acls import apply_acls, create_users, passwords_from_env
from pipeline.errors import AgentgovError
from pipeline.logs import configure_logging
from pipeline.settings import Settings

log = logging.getLogger("consumers.kafka_access")


def main() -> int:
    try:
        settings = Settings.load()
        configure_logging(settings.log_level, settings.log_format)
        passwords = passwords_from_env(os.environ)
        admin = AdminClient(settings.kafka_config())
        create_users(admin, passwords)
        applied = apply_acls(admin, settings, {role: role for role in passwords})
    except AgentgovError as exc:
        log.error("kafka access not applied", extra={"kv": {"reason": exc.reason, "error": exc.message}})
        return 1
    log.info("kafka access applied", extra={"kv": {"principals": len(passwords), "acls": applied}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
