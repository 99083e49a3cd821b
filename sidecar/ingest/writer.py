"""The batch writer: one thread, one write connection, one transaction per batch, acks after.

The paho network thread calls ``submit``; the writer thread takes up to ``batch_size``
deliveries (or what arrived within ``flush_interval``), writes them in ONE transaction (an id
already stored is not inserted again), commits, and only then releases the acks, in receive order.
A database error never acks: the writer logs, backs off and retries the same batch.

With a ``sync`` (the group commit, ``[database] durability = "group"``) the acks of committed
batches are held until one sync has made all of them durable: at the first commit after
``sync_interval`` has passed since the first of them committed (or then, if no commit is due
within another ``sync_interval``), when they fill half the broker's in-flight window (so the
broker never waits on a sync), before a task runs, and at the end.

Other work (stop, session reset) comes through the same queue as task objects
(``sidecar.ingest.tasks``), so it runs in order, between two batches.

The keys of new events (``event_keys``) are indexed in large steps, not per batch
(``sidecar.storage.keys``): in the transaction of the batch that brings the unindexed tail to
``keys_batch`` events, at start (whatever a crash, an import or a seeding script left) and at a
clean stop.
"""

from __future__ import annotations

import hashlib
import queue
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import peewee

from models import DeadLetter, DeliveryId, Event
from sidecar.config import MQTTConfig, WriterConfig
from sidecar.core.events import DEAD_LETTER_COLUMNS, EVENT_COLUMNS, DeadLetterRow, EventRow, now_ms, uuid7
from sidecar.core.kv import KvEntry, KvWrite
from sidecar.core.reasons import dead_letter_kind
from sidecar.core.stats import Stats
from sidecar.errors import RequestError
from sidecar.ingest.bulk import BulkInsert
from sidecar.ingest.conflicts import find_conflicts, new_events
from sidecar.ingest.tasks import STOP, KvOutcome, KvTask, SessionReset, WriterTask
from sidecar.logs import RateLimited, get_logger
from sidecar.storage import dialect as dialects
from sidecar.storage import keys
from sidecar.storage import kv as kv_store
from sidecar.storage.projections import Folded, Folder
from sidecar.storage.sqlite_errors import describe as describe_error

log = get_logger("sidecar.writer")

T = TypeVar("T")
AckToken = tuple[int, int]  # (connection generation, packet id)
KV_ANSWER_WAIT = 30.0  # seconds a kv request waits for its write (a failing disk: retries)
AckFn = Callable[[Sequence[AckToken]], None]
MID_RANGE = 65536  # MQTT packet ids are 1..65535


def member_id_base(mqtt: MQTTConfig) -> int:
    """Where this sidecar records its packet ids in ``delivery_ids``: 0 alone; in a shared
    group a range of its own (``MID_RANGE`` ids from a base derived from the client id, which
    every member has its own), as all members' MQTT sessions number packets from 1."""
    if mqtt.shared_group is None:
        return 0
    return (zlib.crc32(mqtt.client_id.encode()) % 32767 + 1) * MID_RANGE  # fits INTEGER


class Delivery(NamedTuple):
    """One received message on its way to the database."""

    row: EventRow | DeadLetterRow
    qos: int
    mid: int = 0
    generation: int = 0
    dup: bool = False


class _Written(NamedTuple):
    """What one batch's transaction stored (for the stats and the commit signal)."""

    events: int  # event rows written or ignored
    inserted: int  # new events
    conflicts: int  # ids stored with another body: dead letters
    dead_letters: int  # every dead letter, conflicts included
    reasons: tuple[str, ...] = ()  # the dead letters' reasons (counted by kind)


# Errors worth retrying: the database is locked, busy, full, read-only or failing I/O. Anything
# else is about the data, and retrying the same batch would block ingest forever.
TRANSIENT_ERRORS = (sqlite3.OperationalError, peewee.OperationalError)
# On PostgreSQL a lost connection (server restart, network) also shows as InterfaceError
# ("connection already closed"): retried after reconnecting, never taken for bad data.
SERVER_TRANSIENT_ERRORS = (*TRANSIENT_ERRORS, peewee.InterfaceError)


def _insert_sql(model: type[peewee.Model], columns: Sequence[str], *, replace: bool = False) -> str:
    """The parametrised INSERT for ``columns``, built once through Peewee for the database the
    models are bound to: insert-or-ignore (``ON CONFLICT DO NOTHING`` on PostgreSQL), or
    insert-or-replace (an upsert on the primary key there); no ``RETURNING``."""
    query = model.insert({getattr(model, c): None for c in columns})
    if replace and not dialects.of(model._meta.database).files:
        key: Any = model._meta.primary_key
        query = query.on_conflict(conflict_target=(key,),
                                  preserve=[getattr(model, c) for c in columns if c != key.name])
    else:
        query = query.on_conflict_replace() if replace else query.on_conflict_ignore()
    sql, _ = query.returning().sql()
    return sql


def _inserted_seqs(cursor: Any, rows: list[EventRow]) -> tuple[list[int], list[EventRow]]:
    """PostgreSQL: the seqs the batch's new rows got and their payloads as stored (JSONB's
    text, what a rebuild folds), read back by id (the UNIQUE index, one query), in seq order.
    The rows are new: their ids were looked up under the commit-order lock, so no other writer
    stored one meanwhile (``EventInsert.run``)."""
    cursor.execute("SELECT id, seq, payload FROM events WHERE id = ANY(%s)", ([r.id for r in rows],))
    stored = {event_id: (seq, payload) for event_id, seq, payload in cursor.fetchall()}
    mine = sorted((stored[r.id][0], i) for i, r in enumerate(rows) if r.id in stored)
    return ([seq for seq, _ in mine],
            [rows[i]._replace(payload=stored[rows[i].id][1]) for _, i in mine])


class EventInsert:
    """Insert the events whose id is not stored yet, then the conflict check on the others:
    the one path by which events are stored (the writer's batches and ``letters`` re-ingest).

    There is no UNIQUE index on ``events.id`` (a B-tree keyed by a random value costs a page
    per event on every commit): the batch's ids are looked up in ``event_keys`` (one query per
    batch, ``sidecar.storage.keys``) inside the write transaction, and only the first copy of
    each id not stored is inserted."""

    def __init__(self, dialect: dialects.Dialect = dialects.SQLITE,
                 on_inserted: Callable[[list[int], list[EventRow]], None] | None = None) -> None:
        self._dialect = dialect
        sql = _insert_sql(Event, EVENT_COLUMNS)
        if dialect.fts_keys:
            self._bulk = BulkInsert.for_sqlite(sql, len(EVENT_COLUMNS))
        else:  # the UNIQUE index on id decides: a row a concurrent writer stored is skipped
            sql = sql.replace("ON CONFLICT DO NOTHING", 'ON CONFLICT ("id") DO NOTHING')
            self._bulk = BulkInsert(sql, len(EVENT_COLUMNS), max_variables=32767, param="%s")
        self._on_inserted = on_inserted  # (their seqs, the rows) in seq order: in the transaction

    def run(self, cursor: Any, events: Sequence[EventRow]) -> tuple[int, list[DeadLetterRow]]:
        """Insert ``events`` (all with an id) in the caller's transaction. Returns how many
        were new and the ``conflict`` dead letters for ids stored with another body; the rest
        (same body as the stored event) are redeliveries.

        On PostgreSQL it first waits for the commit-order lock (``Dialect.order_commits``):
        transactions inserting events then commit in ``seq`` order, and the lookup below sees
        every id another sidecar has committed, so its conflict check stays exact."""
        self._dialect.order_commits(cursor)
        fresh = new_events(cursor, events)
        inserted = self._bulk.run(cursor, fresh)  # few calls, few GIL waits
        if self._on_inserted is not None and fresh:
            if not self._dialect.fts_keys:
                self._on_inserted(*_inserted_seqs(cursor, fresh))
            elif inserted == len(fresh):
                # one writer, AUTOINCREMENT: the rows of this insert got consecutive seqs, the
                # last one is lastrowid (rows inserted by triggers do not change it)
                first = cursor.lastrowid - inserted + 1
                self._on_inserted(list(range(first, first + inserted)), fresh)
            else:  # cannot happen (fresh ids are not stored); never guess seqs
                log.error("projection_not_folded", rows=len(fresh), inserted=inserted,
                          hint="run kairo-sidecar project rebuild")
        if len(fresh) < len(events):  # ids already stored: redeliveries, or conflicts?
            kept = {id(row) for row in fresh}
            return inserted, find_conflicts(cursor, [r for r in events if id(r) not in kept])
        return inserted, []


def _as_dead_letter(delivery: Delivery, reason: str) -> Delivery:
    """``delivery`` turned into a dead letter (a row the database refused for its content)."""
    row = delivery.row
    raw = row.payload.encode("utf-8", "backslashreplace") if isinstance(row, EventRow) else b""
    return delivery._replace(row=DeadLetterRow(
        topic=row.topic.encode("utf-8", "backslashreplace").decode(),
        payload=raw[:65536], payload_size=len(raw), reason=reason[:1000],
        received_at=row.received_at))


def _digest(row: EventRow) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in (row.topic, row.type, row.source, row.payload, row.metadata):
        h.update(part.encode())
        h.update(b"\x00")
    return h.digest()


class Writer:
    """Owns the queue and the only write connection."""

    def __init__(self, db: peewee.Database, config: WriterConfig, *, ack: AckFn, window: int,
                 stats: Stats, on_commit: Callable[[], None] | None = None,
                 maintenance: Callable[[], None] | None = None,
                 on_full: Callable[[], None] | None = None,
                 sync: Callable[[], None] | None = None, sync_interval: float = 1.0,
                 kv_topic_base: str = "kairo-sidecar",
                 on_kv_change: Callable[[KvEntry], None] | None = None,
                 projections: Folder | None = None,
                 delivery_id_base: int = 0, keys_batch: int | None = None) -> None:
        self._db = db
        self._keys_batch = keys_batch or keys.KEYS_BATCH  # index event_keys once this many wait
        self._keys_waiting = 0  # events stored since the last catch-up (writer thread)
        self._projections = projections if projections else None  # folded in each batch
        self._server = not dialects.of(db).files  # PostgreSQL: reconnect after a lost connection
        self._transient = SERVER_TRANSIENT_ERRORS if self._server else TRANSIENT_ERRORS
        # Packet ids are recorded as ``delivery_id_base + mid``: in a shared group each member
        # (its own MQTT session, its own packet ids) keeps its records in its own range.
        self._id_base = delivery_id_base
        self._kv_topic_base = kv_topic_base  # kv events go on <base>/kv/state/<key>
        self._on_kv_change = on_kv_change  # after a durable kv change (the retained mirror)
        self._sync = sync  # group commit: makes every commit so far durable (storage.durability)
        self._sync_interval = sync_interval
        self._sync_at_acks = max(1, window // 2)
        self._unsynced: list[AckToken] = []  # acks of committed batches awaiting the sync
        self._sync_due = float("inf")  # when the oldest of them must be synced
        self._maintenance = maintenance  # one short step between batches (checkpoint, purge)
        self._on_full = on_full  # SQLITE_FULL: make room (the disk guard) before the retry
        self._config = config
        self._ack = ack
        self._on_commit = on_commit  # called after each commit that stored events (live replay)
        self._window = window
        self.stats = stats
        self._queue: queue.SimpleQueue[Delivery | WriterTask] = queue.SimpleQueue()
        self._received_qos1 = 0  # written by the network thread only
        self._acked_qos1 = 0  # written by the writer thread only
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._deadline = float("inf")
        self.heartbeat = time.monotonic()
        self.failing = False
        self._abandoned = 0  # deliveries left unwritten (and unacked) at a shutdown deadline
        self._room = threading.Event()  # set by the writer after it takes a batch
        self._overrun_log = RateLimited(period=60.0, burst=1)
        self._mapped: set[int] | None = None  # packet ids in delivery_ids (writer thread)
        self._event_insert = EventInsert(dialects.of(db),
                                         self._fold if self._projections is not None else None)
        self._dead_sql = _insert_sql(DeadLetter, DEAD_LETTER_COLUMNS)
        self._delivery_sql = _insert_sql(DeliveryId, ("mid", "event_id", "digest"), replace=True)
        self._delivery_delete_sql = DeliveryId.delete().where(DeliveryId.mid == 0).sql()[0]
        self._delivery_reset_sql, self._delivery_reset_args = DeliveryId.delete().where(
            DeliveryId.mid.between(delivery_id_base, delivery_id_base + MID_RANGE - 1)).sql()

    # -------------------------------------------------------------- network thread side
    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def inflight(self) -> int:
        """QoS 1 messages received and not acked yet (queued, being written, or awaiting the
        group commit's sync); read without a lock, so a moment's figure."""
        return max(0, self._received_qos1 - self._acked_qos1)

    def submit(self, delivery: Delivery) -> bool:
        """Queue a delivery. A QoS 0 one is refused (False) when the queue is full; QoS 1 never
        is: the broker's in-flight window, sized to the queue, bounds those. Should a broker
        send more than its window anyway, the caller (the network thread) waits here for room,
        which pushes back on the broker through TCP instead of growing the queue."""
        limit = self._config.queue_size
        if self._queue.qsize() >= limit:
            if delivery.qos == 0:
                self.stats.qos0_dropped += 1
                return False
            self._wait_for_room(limit)
        if delivery.qos:
            self._received_qos1 += 1
        self.stats.received += 1
        self._queue.put(delivery)
        return True

    def _wait_for_room(self, limit: int) -> None:
        allowed, _ = self._overrun_log.allow()
        if allowed:
            log.warning("broker_exceeded_receive_window", queue_size=limit,
                        hint="the broker sent more unacked QoS 1 messages than asked; waiting")
        while self._queue.qsize() >= limit and self.alive and not self._stopping.is_set():
            self._room.wait(0.05)
            self._room.clear()

    def submit_kv(self, task: KvTask) -> None:
        """Queue a kv write (a ``kv/set`` message's, with its ack, or a request's): it runs in
        order with the deliveries, and its packet counts in the broker's window like one."""
        if task.ack is not None:
            self._received_qos1 += 1
        self._queue.put(task)

    def kv(self, write: KvWrite, timeout: float = KV_ANSWER_WAIT) -> KvEntry | None:
        """Apply ``write`` on the writer thread and wait until it is durable (any thread but the
        writer's). Raises ``RequestError`` (``conflict``, ``not_found``; ``busy`` when the
        writer has not done it within ``timeout``: it may still be applied later)."""
        finished = threading.Event()
        result: list[KvOutcome] = []

        def done(outcome: KvOutcome) -> None:
            result.append(outcome)
            finished.set()

        if not self.alive or self._stopping.is_set():
            raise RequestError("busy", "the sidecar is stopping")
        self._queue.put(KvTask(write, done))
        if not finished.wait(timeout):
            raise RequestError("busy", f"the write was not durable within {timeout:g} s (the "
                               "database is failing or very busy); it may still happen")
        outcome = result[0]
        if isinstance(outcome, RequestError):
            raise outcome
        return outcome

    def session_reset(self, then: Callable[[], None]) -> None:
        """The broker started a new session: no message of the old one will come again, and
        packet ids start afresh, so the ids recorded for id-less events must be forgotten.

        After the messages queued before it are written, the records are deleted in their own
        transaction and ``then`` is called: the subscriber subscribes only then, so no message
        of the new session can meet a stale record, even across a crash.
        """
        self._queue.put(SessionReset(then))

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kairo-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Write and ack everything queued so far, then stop; False if the deadline passed."""
        self._deadline = time.monotonic() + timeout
        self._stopping.set()
        self._queue.put(STOP)
        if self._thread is None:
            return True
        self._thread.join(timeout + 1.0)
        left = 0 if self.alive else self._count_left()
        drained = not self.alive and not self._abandoned and not left
        if not drained:
            log.error("writer_not_drained", abandoned=self._abandoned, queued=left,
                      hint="unacked messages stay with the broker and come again at next start")
        return drained

    def _count_left(self) -> int:
        """Deliveries still queued after the thread ended (they were never acked)."""
        left = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return left
            left += not isinstance(item, WriterTask)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -------------------------------------------------------------- writer thread
    def _window_full(self) -> bool:
        """True when the broker will send no more QoS 1 messages until we ack some."""
        return self._received_qos1 - self._acked_qos1 >= self._window

    def _collect(self) -> tuple[list[Delivery], WriterTask | None]:
        """Block for the first delivery, then take more until a flush condition holds. A task
        ends the batch (it runs after it: the batch holds what was queued before the task)."""
        try:
            first = self._queue.get(timeout=min(0.5, max(0.0, self._sync_due - time.monotonic())))
        except queue.Empty:
            self._sync_if_due()
            return [], STOP if self._stopping.is_set() else None
        if isinstance(first, WriterTask):
            return [], first
        batch = [first]
        task = self._fill(batch)
        self._room.set()
        return batch, task

    def _fill(self, batch: list[Delivery]) -> WriterTask | None:
        """Add deliveries to ``batch`` until it is full, ``flush_interval`` has passed since the
        first, the broker's window is full, or the writer stops; a task stops the filling and
        is returned."""
        deadline = time.monotonic() + self._config.flush_interval
        size = self._config.batch_size
        get_nowait = self._queue.get_nowait
        while len(batch) < size:
            try:
                item = get_nowait()
            except queue.Empty:
                if self._stopping.is_set() or self._window_full():
                    break
                if deadline > self._sync_due + self._sync_interval:
                    self._sync_if_due()  # else this batch's commit, coming soon, syncs them all
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=min(remaining, 0.01))
                except queue.Empty:
                    continue
            if isinstance(item, WriterTask):
                return item
            batch.append(item)
        return None

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:
            log.exception("writer_crashed")  # the app sees the thread gone and exits non-zero
            raise

    def _loop(self) -> None:
        self._catch_up_keys("start")
        log.info("writer_started", batch_size=self._config.batch_size,
                 flush_interval=self._config.flush_interval, window=self._window,
                 delivery_id_base=self._id_base)
        while True:
            self.heartbeat = time.monotonic()
            batch, task = self._collect()
            if batch and not self._write_with_retry(batch):
                break  # shutdown deadline passed while the database failed: nothing acked
            if task is not None:
                self._sync_and_release()  # a task runs after the acks queued before it
                if not task.run(self):
                    break
            if self._stopping.is_set() and self._queue.empty():
                break
            if self._maintenance is not None and not self._stopping.is_set():
                self._run_maintenance(self._maintenance)
        self._sync_and_release()  # what was committed is made durable and acked
        if not self._abandoned:
            self._catch_up_keys("stop")
        log.info("writer_stopped", queued=self._queue.qsize())

    def _catch_up_keys(self, why: str) -> None:
        """Index every event waiting for its keys (in chunks); a failure leaves them waiting,
        which costs lookups a longer tail scan, never an answer."""
        try:
            keys.catch_up_all(self._db, why=why)
            self._keys_waiting = 0
        except TRANSIENT_ERRORS as exc:
            error, code = describe_error(exc)
            log.warning("event_keys_catch_up_failed", error=error, code=code, why=why)
            self._keys_waiting = self._keys_batch  # the next batch tries again

    @staticmethod
    def _run_maintenance(step: Callable[[], None]) -> None:
        """One maintenance step between two batches; its failure never stops the writer."""
        try:
            step()
        except Exception:
            log.exception("maintenance_failed")

    def _write_with_retry(self, batch: list[Delivery]) -> bool:
        """Write the batch and release its acks; False if abandoned at the shutdown deadline."""
        written = self._retrying(lambda: self._write_or_isolate(batch), len(batch))
        if written is None:
            return False
        self._release(written)
        return True

    def _write_or_isolate(self, batch: list[Delivery]) -> list[Delivery]:
        """A batch the database refuses for its content is written event by event so the
        offending one becomes a dead letter instead of blocking everything behind it."""
        try:
            self._write(batch)
            return batch
        except self._transient:
            raise
        except Exception as exc:
            log.error("batch_refused_isolating", error=repr(exc), rows=len(batch))
            return self._write_isolating(batch)

    def _retrying(self, action: Callable[[], T], rows: int) -> T | None:
        """Run ``action``, retrying transient database errors with back-off (nothing is acked
        meanwhile); ``None`` when the shutdown deadline passes first."""
        delay = 0.05
        while True:
            try:
                result = action()
            except self._transient as exc:
                self.failing = True
                self.stats.write_errors += 1
                error, code = describe_error(exc)  # the cause, not Peewee's failed ROLLBACK
                log.error("batch_write_failed", error=error, code=code, rows=rows, retry_in=delay)
                if time.monotonic() + delay > self._deadline:
                    log.error("batch_abandoned_at_shutdown", rows=rows)
                    self._abandoned += rows
                    return None
                if code == "SQLITE_FULL" and self._on_full is not None:
                    self._run_maintenance(self._on_full)
                if self._server:
                    self._drop_connection()
                self.heartbeat = time.monotonic()
                time.sleep(delay)
                delay = min(delay * 2, self._config.retry_max_delay)
                continue
            if self.failing:
                log.info("batch_write_recovered")
                self.failing = False
            return result

    def _drop_connection(self) -> None:
        """Close the (maybe broken) server connection: the retry opens a new one. Nothing was
        acked for the failed transaction, and its retry inserts with ON CONFLICT on id, so a
        COMMIT whose answer was lost with the connection does not make a second row."""
        try:
            self._db.close()
        except Exception:  # a broken connection may refuse even this: forget it
            state: Any = getattr(self._db, "_state", None)
            if state is not None:
                state.reset()
        self._mapped = None  # read the packet-id records again from what was committed

    def forget_delivery_ids(self) -> bool:
        """Delete every packet-id record (a ``SessionReset`` task, on the writer thread only),
        retrying like a batch; False if abandoned at the shutdown deadline."""
        return self._retrying(self._reset_delivery_ids, 0) is not None

    def apply_kv(self, write: KvWrite, ack: AckToken | None) -> tuple[bool, KvOutcome]:
        """A ``KvTask``'s write, in its own transaction with its event, retried like a batch;
        then one sync makes it (and every batch committed before it) durable, and the acks
        held for the sync, then ``ack``, are released. ``(False, None)`` if abandoned at the
        shutdown deadline (nothing acked)."""
        refused: list[RequestError] = []

        def transaction() -> KvEntry | None:
            refused.clear()
            try:
                with self._db.atomic("IMMEDIATE"):
                    return kv_store.apply(self._db, write, topic_base=self._kv_topic_base)
            except RequestError as exc:  # rolled back: nothing written
                refused.append(exc)
                return None
            except self._transient:
                raise  # retried below, like a batch
            except Exception as exc:  # refused for its content: answer it, keep the writer
                error, _ = describe_error(exc)
                log.error("kv_write_refused", key=write.key, op=write.op, error=error)
                refused.append(RequestError("internal", f"the database refused the write: "
                                            f"{error}"))
                return None

        done = self._retrying(lambda: (transaction(),), 1)
        if done is None:
            return False, None
        entry = done[0]
        if entry is not None:
            self._sync_now()
            if self._on_commit is not None:
                self._on_commit()
            log.debug("kv_written", op=write.op, key=write.key, version=entry.version)
        if ack is not None:
            self._send_acks([ack])
        if entry is not None and self._on_kv_change is not None:
            try:
                self._on_kv_change(entry)
            except Exception:
                log.exception("kv_change_callback_failed", key=write.key)
        return True, refused[0] if refused else entry

    def _sync_now(self) -> None:
        """Make every commit so far durable now (group commit) and release the held acks."""
        if self._sync is None:
            return
        if self._unsynced:
            self._sync_and_release()
            return
        try:
            self._sync()
        except OSError as exc:
            log.critical("journal_sync_failed", error=str(exc), unacked=0,
                         hint="the writer stops; the kv write is not answered")
            raise

    def _reset_delivery_ids(self) -> bool:
        with self._db.atomic("IMMEDIATE"):
            self._db.cursor().execute(self._delivery_reset_sql, self._delivery_reset_args)
        self._mapped = set()
        log.info("delivery_ids_reset")
        return True

    def _write_isolating(self, batch: list[Delivery]) -> list[Delivery]:
        """The slow path: one transaction per delivery; refused ones become dead letters."""
        written: list[Delivery] = []
        for delivery in batch:
            try:
                self._write([delivery])
            except self._transient:
                raise
            except Exception as exc:
                reason = f"storage refused the event: {exc!r}"
                delivery = _as_dead_letter(delivery, reason)
                self._write([delivery])
                log.warning("event_refused_by_storage", topic=delivery.row.topic, reason=reason)
            written.append(delivery)
        return written

    # -------------------------------------------------------------- one batch, one transaction
    def _write(self, batch: list[Delivery]) -> None:
        """Write ``batch`` in one transaction, then account for it. Id-less events get their id
        in ``batch`` (a DUP copy the id of its first copy), so retrying after a rollback reuses
        the ids; the packet-id records change only once the transaction has committed."""
        started = time.perf_counter()
        stale = self._obsolete_records(batch)
        with self._db.atomic("IMMEDIATE"):
            cursor = self._db.cursor()
            if stale:
                cursor.executemany(self._delivery_delete_sql,
                                   [(mid + self._id_base,) for (mid,) in stale])
            recorded = self._assign_ids(cursor, batch)
            written = self._insert_rows(cursor, batch)
            waiting = self._keys_waiting + written.inserted
            if written.inserted and waiting >= self._keys_batch:
                # At most START_CHUNK: a long tail (a failed catch-up at start) is indexed a
                # step per batch.
                full = keys.catch_up(cursor, limit=keys.START_CHUNK) >= keys.START_CHUNK
                waiting = self._keys_batch if full else 0
        elapsed = time.perf_counter() - started
        self._keys_waiting = waiting  # committed (a rollback raised before this line)
        self._remember_records(stale, recorded)
        self._count(batch, written, elapsed)
        if written.inserted and self._on_commit is not None:
            self._on_commit()
        log.debug("batch_committed", rows=written.events, inserted=written.inserted,
                  dead_letters=written.dead_letters, ms=round(elapsed * 1000, 2))

    def _recorded_mids(self) -> set[int]:
        """The packet ids recorded in ``delivery_ids`` (read once, then kept in step)."""
        if self._mapped is None:
            base = self._id_base
            known_mids: Any = DeliveryId.select(DeliveryId.mid).where(
                DeliveryId.mid.between(base, base + MID_RANGE - 1)).tuples()
            self._mapped = {mid - base for (mid,) in known_mids}
        return self._mapped

    def _obsolete_records(self, batch: list[Delivery]) -> list[tuple[int]]:
        """A fresh (not DUP) message with a recorded packet id proves the broker got our ack for
        the earlier one: its record is obsolete (else a later DUP copy could match it)."""
        mapped = self._recorded_mids()  # packet ids (without the base)
        return [(d.mid,) for d in batch if d.qos and not d.dup and d.mid in mapped]

    def _assign_ids(self, cursor: sqlite3.Cursor, batch: list[Delivery]) -> list[int]:
        """Give id-less events an id, in place in ``batch``; a redelivered copy (DUP, same
        packet id and content) gets the id its first copy got, so insert-or-ignore drops it.
        Records the packet id of each QoS 1 one and returns those packet ids."""
        id_less = [i for i, d in enumerate(batch) if type(d.row) is EventRow and d.row.id is None]
        if not id_less:
            return []
        known = self._ids_of_first_copies(batch, id_less)
        records: list[tuple[int, str, bytes]] = []
        for i in id_less:
            delivery = batch[i]
            row: EventRow = delivery.row  # type: ignore[assignment]
            event_id = None
            digest = _digest(row) if delivery.qos else b""
            if delivery.qos and delivery.dup:
                previous = known.get(delivery.mid)
                if previous is not None and previous[1] == digest:
                    event_id = previous[0]
            if event_id is None:
                event_id = uuid7()
            if delivery.qos:
                known[delivery.mid] = (event_id, digest)
                records.append((delivery.mid, event_id, digest))
            batch[i] = delivery._replace(row=row._replace(id=event_id))
        if records:
            base = self._id_base
            cursor.executemany(self._delivery_sql,
                               [(mid + base, event_id, d) for mid, event_id, d in records])
        return [mid for mid, _, _ in records]

    def _ids_of_first_copies(self, batch: list[Delivery], id_less: list[int]) -> dict[int, tuple[str, bytes]]:
        """packet id -> (event id, digest) recorded for the DUP deliveries among ``id_less``."""
        base = self._id_base
        dup_mids = [batch[i].mid + base for i in id_less if batch[i].dup and batch[i].qos]
        if not dup_mids:
            return {}
        rows: Any = DeliveryId.select(DeliveryId.mid, DeliveryId.event_id, DeliveryId.digest).where(
            DeliveryId.mid.in_(sorted(set(dup_mids)))).tuples()
        return {mid - base: (event_id, bytes(digest)) for mid, event_id, digest in rows}

    def _insert_rows(self, cursor: sqlite3.Cursor, batch: list[Delivery]) -> _Written:
        """Insert the events (all with an id now) and the dead letters, conflicts among them."""
        events: list[EventRow] = []
        dead: list[DeadLetterRow] = []
        for delivery in batch:
            if type(delivery.row) is EventRow:
                events.append(delivery.row)
            else:
                dead.append(delivery.row)  # type: ignore[arg-type]
        inserted = conflicts = 0
        if events:
            inserted, refused = self._event_insert.run(cursor, events)
            if refused:
                conflicts = len(refused)
                dead = [*dead, *refused]
        if dead:
            cursor.executemany(self._dead_sql, dead)
        return _Written(len(events), inserted, conflicts, len(dead),
                        tuple(row.reason for row in dead) if dead else ())

    def _fold(self, seqs: list[int], rows: list[EventRow]) -> None:
        """The projections, for the events this batch newly inserted (in its transaction, in
        seq order; a redelivery is not inserted, so never folded twice). A failure other than
        the database's rolls back the fold alone (a savepoint): the events are stored anyway."""
        folder = self._projections
        assert folder is not None
        matching = folder.matching
        events = [Folded(seq, row.type, row.source, row.payload, row.received_at)
                  for seq, row in zip(seqs, rows, strict=True) if matching(row.type)]
        if not events:
            return
        try:
            with self._db.atomic():
                result = folder.fold(self._db, events)
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            log.error("projection_failed", error=repr(exc), events=len(events),
                      first_seq=events[0].seq)
            return
        self.stats.projected += len(result.written)
        for name, skips in result.skipped.items():
            self.stats.projection_skipped += len(skips)
            log.warning("projection_skipped", projection=name, events=len(skips),
                        first_seq=skips[0].seq, reason=skips[0].reason)

    def _remember_records(self, stale: list[tuple[int]], recorded: list[int]) -> None:
        """Bring the in-memory packet-id set in step with the committed ``delivery_ids``."""
        if stale or recorded:
            mapped = self._recorded_mids()
            mapped.difference_update(mid for (mid,) in stale)
            mapped.update(recorded)

    def _count(self, batch: list[Delivery], written: _Written, seconds: float) -> None:
        """Account for a committed batch (``seconds``: its transaction, commit included)."""
        stats = self.stats
        stats.events_stored += written.inserted
        stats.duplicates += written.events - written.inserted - written.conflicts
        stats.dead_letters += written.dead_letters
        kinds = stats.dead_letter_kinds
        for reason in written.reasons:
            kind = dead_letter_kind(reason)
            kinds[kind] = kinds.get(kind, 0) + 1
        stats.batches += 1
        stats.batch_rows.observe(len(batch))
        stats.commit_seconds.observe(seconds)
        stats.last_commit_at = time.time()
        oldest = min(d.row.received_at for d in batch)
        stats.last_commit_lag_ms = now_ms() - oldest

    def _release(self, batch: list[Delivery]) -> None:
        """Ack a committed batch now, or (group commit) once a sync has made it durable."""
        tokens = [(d.generation, d.mid) for d in batch if d.qos]
        if not tokens:
            return
        if self._sync is None:
            self._send_acks(tokens)
            return
        if not self._unsynced:
            self._sync_due = time.monotonic() + self._sync_interval
        self._unsynced.extend(tokens)
        if len(self._unsynced) >= self._sync_at_acks:  # the broker keeps sending meanwhile
            self._sync_and_release()
        else:
            self._sync_if_due()

    def _sync_if_due(self) -> None:
        if self._unsynced and time.monotonic() >= self._sync_due:
            self._sync_and_release()

    def _sync_and_release(self) -> None:
        """One sync for every batch committed since the last, then their acks, in order. A
        failed sync raises (the writer stops, nothing more is acked: the broker keeps them)."""
        if not self._unsynced or self._sync is None:
            return
        try:
            self._sync()
        except OSError as exc:
            log.critical("journal_sync_failed", error=str(exc), unacked=len(self._unsynced),
                         hint="the writer stops; the broker keeps the unacked messages")
            raise
        tokens, self._unsynced, self._sync_due = self._unsynced, [], float("inf")
        self._send_acks(tokens)

    def _send_acks(self, tokens: list[AckToken]) -> None:
        try:
            self._ack(tokens)
        finally:
            self._acked_qos1 += len(tokens)
