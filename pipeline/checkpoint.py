"""The transactional checkpoint: a batch's outputs and its consumed offsets in one Kafka transaction.

Both stateful roles (the scorer and the correlator) publish through it: ``begin()``, produce outputs
with ``producer.produce``, then ``commit()`` sends the consumer's positions into the transaction and
commits. A crash at any point publishes all of a batch's outputs with its offsets, or none of them.
When a transaction fails, ``recover()`` aborts it, or replaces a producer the broker no longer knows.

Example::

    cp = Checkpoint(settings, consumer, Checkpoint.transactional_id("scorer", group, instance_id))
    cp.begin()
    cp.producer.produce(topic, value, key=key)
    cp.commit()                                  # raises KafkaException; then cp.recover() and rewind
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from .settings import Settings

log = logging.getLogger(__name__)

# How long past its own timeout a transactional call may block before the producer is given up on.
# librdkafka can block in send_offsets_to_transaction/commit_transaction well past the timeout it was
# given after the transaction coordinator's broker dies (seen on a 3-broker Apache Kafka cluster:
# rd_kafka_txn_op_req0 -> cnd_wait, tests/integration/test_broker_failover.py). A blocked call would
# hold the consumer's partitions forever; the watchdog turns it into a failed batch instead.
HANG_GRACE_SECONDS = 15.0
TRANSACTION_LINGER_MS = 100
"""linger.ms of the transactional producers. A batch's records are sent at the latest by its commit, which
flushes whatever lingers, so the linger adds nothing to latency; it only decides how many produce requests
a batch costs, and each request costs the broker CPU (Tansu about 0.5 ms). 5 ms sent a scorer's batch in
tens of requests; at 100 ms Tansu's CPU over the correlation benchmark fell from 6.2 to 3.3 s without the
correlator and from 10.1 to 5.7 s with it (docs/performance.md)."""


class Checkpoint:
    """One transactional producer bound to one consumer's positions."""

    # Set when the broker refused a record for its own sake (e.g. MESSAGE_TOO_LARGE): librdkafka's
    # idempotent sequence is then broken ("skipped sequence numbers" on every later transaction, seen on
    # Apache Kafka), so the producer is replaced after the abort instead of reused.
    replace_after_abort = False

    def __init__(self, settings: Settings, consumer: Consumer, transactional_id: str, **producer_extra: Any) -> None:
        self.consumer = consumer
        self._conf = settings.kafka_config(**{
            "transactional.id": transactional_id,
            "linger.ms": TRANSACTION_LINGER_MS, "compression.type": "lz4", "transaction.timeout.ms": 60000,
            "message.max.bytes": settings.max_message_bytes,  # the record cap of pipeline/limits.py
            **producer_extra,
        })
        self.producer = Producer(self._conf)
        self.producer.init_transactions(30)
        # Producers abandoned with a call still blocked inside librdkafka: never destroyed (destroying a
        # handle with a call in flight is unsafe), fenced by the replacement's init_transactions.
        self._abandoned: list[Producer] = []
        self._hung = False

    @staticmethod
    def transactional_id(role: str, group: str, instance_id: str | None) -> str:
        """Stable per slot when ``instance_id`` is set: the restarted process's ``init_transactions`` then
        ends the open transaction of the one it replaces, instead of leaving it to block read_committed
        readers until the broker times it out (Tansu never does)."""
        if instance_id:
            return f"agentgov-{role}-{group}-{instance_id}"
        return f"agentgov-{role}-{uuid.uuid4()}"

    def begin(self) -> None:
        self.producer.begin_transaction()

    def commit(self, *, wrote: bool = True) -> None:
        """Send the consumer's current positions into the open transaction and commit it.

        ``wrote=False`` (the batch produced no record; most correlator batches): there is nothing to make
        atomic with the positions, so no transaction is made of it. The empty transaction commits locally
        (librdkafka sends no EndTxn for a transaction without partitions or offsets) and the positions are
        committed directly, synchronously: one request instead of four (AddOffsetsToTxn, TxnOffsetCommit,
        EndTxn, and the direct commit that Tansu 0.6 needed after them: it drops the offsets of a
        transaction that holds no record). The group's generation fences a direct commit as it fences a
        transactional one. A failed direct commit is logged, not raised: nothing was produced, the
        positions go with the next batch's commit, and a replay of the facts since the last commit
        publishes nothing twice (finding ids are deterministic)."""
        producer = self.producer
        offsets = self.consumer.position(self.consumer.assignment())
        if not wrote:
            producer.commit_transaction(10)  # empty: no broker call
            committed = [tp for tp in offsets if tp.offset >= 0]
            if not committed:
                return
            try:
                self.consumer.commit(offsets=committed, asynchronous=False)
            except KafkaException as exc:
                log.warning("direct offset commit of a batch without records failed; the next batch's commit "
                            "carries its positions", extra={"kv": {"error": str(exc)}})
            return
        group = self.consumer.consumer_group_metadata()
        self._bounded("send_offsets_to_transaction",
                      lambda: producer.send_offsets_to_transaction(offsets, group, 30), 30)
        self._bounded("commit_transaction", lambda: producer.commit_transaction(60), 60)

    def _bounded(self, name: str, call: Callable[[], None], timeout: float) -> None:
        """Run ``call`` (which has its own ``timeout``) with a watchdog: if it is still blocked
        ``HANG_GRACE_SECONDS`` after that, raise a timed-out KafkaException so the batch is aborted and
        replayed, and mark the producer for replacement by :meth:`recover`."""
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                call()
                outcome.append(None)
            except BaseException as exc:  # handed to the caller's thread below
                outcome.append(exc)

        worker = threading.Thread(target=run, name=f"txn-{name}", daemon=True)
        worker.start()
        worker.join(timeout + HANG_GRACE_SECONDS)
        if worker.is_alive():
            self._hung = True
            log.error("transactional call blocked past its timeout; the producer will be replaced",
                      extra={"kv": {"call": name, "timeout_s": timeout}})
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"{name} blocked past {timeout:g}s"))
        if outcome and outcome[0] is not None:
            raise outcome[0]

    def recover(self) -> None:
        """After a failed transaction: abort it, or replace the producer if it cannot be brought back."""
        if self._hung:  # a call is still blocked in the old producer: aborting on it would block too
            self._abandoned.append(self.producer)
            # Never deallocated, not even at interpreter exit: rd_kafka_destroy on a handle with a call in
            # flight can block the process's exit. One leaked handle per hang (a rare, logged event).
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(self.producer))
            self._hung = False
            self.new_producer(flush_old=False)
            return
        # Serve the failed transaction's delivery reports first: a role's on_delivery learns there which
        # records the broker refused (it may set replace_after_abort).
        with contextlib.suppress(Exception):
            self.producer.poll(0)
        if self.replace_after_abort:
            self.replace_after_abort = False
            self.abort()
            self.new_producer()
        elif not self.abort():
            self.new_producer()

    def abort(self, attempts: int = 2) -> bool:
        """Abort the open transaction; False if the producer cannot be brought back to a usable state."""
        for _ in range(attempts):
            try:
                self.producer.abort_transaction(10)
                return True
            except KafkaException as exc:
                err = exc.args[0]
                log.error("abort failed", extra={"kv": {"error": str(exc)}})
                if err.code() == KafkaError._STATE:
                    return True  # no transaction open: nothing to abort
                # Not after a timeout: resuming an abort the broker has forgotten (a restarted in-memory
                # broker) was seen to end the process with no traceback. Replace the producer instead.
                if err.fatal() or err.code() == KafkaError._TIMED_OUT or not err.retriable():
                    return False
        return False

    def new_producer(self, attempts: int = 10, flush_old: bool = True) -> None:
        """Replace a producer the broker no longer recognises (e.g. a restarted in-memory broker lost its
        transaction state). The same transactional.id fences anything the old one left open."""
        if flush_old:
            with contextlib.suppress(Exception):
                self.producer.flush(0)
        for attempt in range(1, attempts + 1):
            try:
                producer = Producer(self._conf)
                producer.init_transactions(30)
                self.producer = producer
                log.warning("transactional producer replaced", extra={"kv": {"attempt": attempt}})
                return
            except KafkaException as exc:
                log.error("producer init failed", extra={"kv": {"attempt": attempt, "error": str(exc)}})
                time.sleep(min(2.0 * attempt, 10.0))
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "cannot re-create the transactional producer"))

    def flush(self, timeout: float = 10) -> None:
        self.producer.flush(timeout)
