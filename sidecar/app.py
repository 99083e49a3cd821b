"""Wires config, database, writer and subscriber together; owns start-up and shutdown order.

The order of construction: the subscriber (the MQTT session, no callbacks yet), the writer with
``ack=subscriber.ack``, the API handlers with ``publish=subscriber.publish``, the intake over the
writer; then ``subscriber.attach`` hands it the callbacks (events to the intake, requests to the
handlers, a new session to the writer) before anything starts.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import peewee

from sidecar import __version__
from sidecar.api.handlers import Handlers
from sidecar.api.replay import CommitSignal
from sidecar.broker.subscriber import Subscriber
from sidecar.config import Config, compile_projections
from sidecar.core.kv import KvEntry
from sidecar.core.projections import Projection
from sidecar.core.stats import Stats
from sidecar.http.console import PUBLIC, Console, login_page
from sidecar.http.health import health_route
from sidecar.http.metrics import metrics_route
from sidecar.http.server import HttpServer
from sidecar.ingest.intake import Intake
from sidecar.ingest.writer import Writer, member_id_base
from sidecar.logs import get_logger
from sidecar.observe.homeassistant import Announcer
from sidecar.observe.sources import Sources, StoreReads
from sidecar.storage import cleanstop, indexes, search
from sidecar.storage.db import is_sqlite, sqlite_path
from sidecar.storage.dialect import masked_url
from sidecar.storage.durability import JournalSync, journal_sync_for
from sidecar.storage.maintenance import Maintenance, truncate_wal
from sidecar.storage.projections import Folder
from sidecar.storage.reads import Reader, open_reader
from sidecar.storage.startup import open_store
from sidecar.systemd import Notifier, Watchdog, stall_after

log = get_logger("sidecar.app")

# Under load the paho network thread runs Python without pause, and the writer re-takes the GIL
# after each SQLite call: at the default 5 ms switch interval every re-take can wait 5 ms (a
# measured 16k -> 19k events/s live with 1 ms, BENCHMARKS.md).
GIL_SWITCH_INTERVAL = 0.001


class Sidecar:
    """One running daemon. ``run()`` blocks until a stop signal, then shuts down in order:
    stop intake, flush and ack, publish ``offline``, disconnect."""

    def __init__(self, config: Config, *, notifier: Notifier | None = None,
                 watchdog_sec: float | None = None) -> None:
        self.config = config
        self.notifier = notifier if notifier is not None else Notifier(None)  # systemd sd_notify
        self.watchdog_sec = watchdog_sec  # $WATCHDOG_USEC: ping at half of it while healthy
        self.maintenance: Maintenance | None = None
        self.stats = Stats()
        self._stop = threading.Event()
        self._signalled: int | None = None  # SIGTERM/SIGINT received (set by ``_signal`` only)
        self.db: peewee.Database | None = None
        self.writer: Writer | None = None
        self.subscriber: Subscriber | None = None
        self.handlers: Handlers | None = None
        self.journal_sync: JournalSync | None = None
        self.checked_at: float | None = None  # the whole file's last check (storage.cleanstop)
        self.http: HttpServer | None = None  # [http] listen: /metrics, /healthz, the console
        self.announcer: Announcer | None = None  # [homeassistant]: discovery and state

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def open(self) -> None:
        """Open the database and bring the schema up to date (or refuse)."""
        database = self.config.database
        self.db = open_store(database, schema="migrate" if database.migrate_on_start else "current",
                             on_verified=self._verified)
        # after the schema: the expression indexes [indexes] paths lists, the unlisted dropped
        indexes.sync(self.db, self.config.indexes.paths)
        # the search index, its triggers and view for [search] (a changed config re-indexes)
        search.sync(self.db, self.config.search)

    def _verified(self, checked_at: float) -> None:
        self.checked_at = checked_at

    def run(self, *, install_signals: bool = True,
            on_ready: Callable[[], None] | None = None) -> int:
        cfg = self.config
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._signal)
        self.open()
        assert self.db is not None
        commits = CommitSignal()
        # The writer acks through the subscriber, and the subscriber's callbacks feed the
        # writer: the subscriber comes first, and gets its callbacks by ``attach`` below.
        kv_prefix = f"{cfg.api.base_topic}/kv/set/" if cfg.api.enabled else None
        self.subscriber = subscriber = Subscriber(
            cfg.mqtt, queue_size=cfg.writer.queue_size,
            api_base_topic=cfg.api.base_topic if cfg.api.enabled else None,
            extra_topics=(kv_prefix + "#",) if kv_prefix else ())
        self.maintenance = Maintenance(self.db, cfg,
                                       pending=lambda: self.writer.depth if self.writer else 0)
        durability = cfg.database.effective_durability
        self.journal_sync = journal_sync_for(self.db, durability=durability)
        rules = compile_projections(cfg.projections)
        self.writer = Writer(self.db, cfg.writer, ack=subscriber.ack, window=subscriber.window,
                             stats=self.stats, on_commit=commits.notify,
                             maintenance=self.maintenance, on_full=self.maintenance.make_room,
                             sync=self.journal_sync.sync if self.journal_sync else None,
                             sync_interval=cfg.database.sync_interval,
                             kv_topic_base=cfg.api.base_topic,
                             on_kv_change=self._kv_mirror(subscriber),
                             projections=Folder(rules, max_value_bytes=cfg.kv.max_value_bytes),
                             delivery_id_base=member_id_base(cfg.mqtt))
        self.handlers = self._make_handlers(commits, subscriber, rules)
        intake = Intake(self.writer, cfg.ingest, kv_prefix=kv_prefix,
                        kv_max_value_bytes=cfg.kv.max_value_bytes, projections=rules)
        subscriber.attach(on_event=intake.receive,
                          on_request=self.handlers.receive if self.handlers else None,
                          on_new_session=self.writer.session_reset)
        log.info("sidecar_starting", version=__version__, database=masked_url(cfg.database.url),
                 durability=durability, synchronous=cfg.database.effective_synchronous,
                 sync_interval=cfg.database.sync_interval, batch_size=cfg.writer.batch_size,
                 flush_interval=cfg.writer.flush_interval, topics=cfg.mqtt.topics,
                 encrypted=cfg.database.key is not None or bool(cfg.database.key_file))
        self.writer.start()
        if self.handlers is not None:
            self.handlers.start()
        self._start_observers()
        self.subscriber.start()
        code = self._main_loop(on_ready)
        return self._shutdown(code)

    def _make_handlers(self, commits: CommitSignal, subscriber: Subscriber,
                       projections: Sequence[Projection]) -> Handlers | None:
        """The request API (``[api]``): workers answer through the subscriber's client."""
        cfg = self.config
        if not cfg.api.enabled:
            return None
        writer = self.writer
        return Handlers(cfg.api, Reader(open_reader(cfg.database)),
                        publish=subscriber.publish,
                        stats=self.stats, commits=commits, event_topics=cfg.mqtt.topics,
                        queue_depth=lambda: writer.depth if writer is not None else 0,
                        disk_guard=self._disk_guard_state,
                        shared_group=cfg.mqtt.shared_group is not None,
                        kv_write=writer.kv if writer is not None else None,
                        kv_max_value_bytes=cfg.kv.max_value_bytes, projections=projections,
                        search_rank_window=cfg.search.rank_window)

    def _sources(self) -> Sources:
        """What /metrics, /healthz and the Home Assistant state read: counters, and a reader
        connection of their own (never the writer's)."""
        cfg = self.config
        writer, subscriber, handlers = self.writer, self.subscriber, self.handlers
        maintenance = self.maintenance
        assert writer is not None and subscriber is not None
        return Sources(
            stats=self.stats, store=StoreReads(Reader(open_reader(cfg.database))),
            queue_depth=lambda: writer.depth, inflight=lambda: writer.inflight,
            writer_alive=lambda: writer.alive, writer_heartbeat=lambda: writer.heartbeat,
            stall_after=self._stall_limit(), broker_grace=max(10.0, 2 * cfg.mqtt.reconnect_max_delay),
            broker_disconnected_at=lambda: subscriber.disconnected_at,
            replay_streams=(lambda: handlers.active_streams) if handlers else (lambda: 0),
            requests=handlers.answered if handlers else (lambda: {}),
            purge=(lambda: (maintenance.purging, maintenance.purge_progress)) if maintenance
            else (lambda: (False, None)))

    def _start_observers(self) -> None:
        """``[http] listen`` (``/metrics``, ``/healthz``) and ``[homeassistant]``: the
        announcer runs either way (with discovery off it clears what an earlier run announced)."""
        cfg = self.config
        subscriber = self.subscriber
        assert subscriber is not None
        sources = self._sources()
        if cfg.http.listen:
            routes = {"/metrics": metrics_route(sources), "/healthz": health_route(sources)}
            login: bytes | None = None
            if cfg.http.console:  # its own reader connection: a page never delays a scrape
                console = Console(cfg.api, StoreReads(Reader(open_reader(cfg.database))), sources,
                                  rank_window=cfg.search.rank_window,
                                  logout=cfg.http.token is not None)
                routes |= console.routes()
                login = login_page()
            self.http = HttpServer(cfg.http, routes, login_page=login,
                                   public=PUBLIC if cfg.http.console else frozenset())
            self.http.start()
        self.announcer = Announcer(cfg.homeassistant, sources, publish=subscriber.publish,
                                   connected=subscriber.connected.is_set,
                                   state_topic=f"{cfg.api.base_topic}/status",
                                   availability_topic=cfg.mqtt.state_topic)
        self.announcer.start()

    def _kv_mirror(self, subscriber: Subscriber) -> Callable[[KvEntry], None] | None:
        """``[kv] publish_retained``: each key's value retained on ``<base>/kv/state/<key>``
        after each durable change (an empty retained message clears a deleted key)."""
        if not self.config.kv.publish_retained:
            return None
        base = f"{self.config.api.base_topic}/kv/state/"

        def mirror(entry: KvEntry) -> None:
            value = b"" if entry.value is None else entry.value.encode()
            subscriber.publish(base + entry.key, value, content_type="application/json",
                               retain=True)

        return mirror

    def _disk_guard_state(self) -> dict[str, Any] | None:
        """The disk guard's state for the ``stats`` answer (``min_free = "off"`` when off)."""
        guard = self.maintenance.guard if self.maintenance is not None else None
        return None if guard is None else guard.state.as_dict()

    def _signal(self, signum: int, frame: FrameType | None) -> None:
        # Only an assignment. A handler runs in the main thread between two of its bytecodes,
        # maybe while it holds a lock: inside ``self._stop.wait`` (the Event's own lock) or a
        # log call. ``Event.set`` or a log line here would then wait for that lock forever: a
        # SIGTERM once hung the daemon so. The main loop sees the flag within its 0.2 s tick.
        self._signalled = signum

    def _main_loop(self, on_ready: Callable[[], None] | None) -> int:
        assert self.writer is not None and self.subscriber is not None
        ready = False
        watchdog = self._watchdog()
        while not self._stop.wait(0.2):
            if self._signalled is not None:
                log.info("stop_requested", signal=signal.Signals(self._signalled).name)
                break
            if not self.writer.alive:
                log.error("writer_died")
                return 1
            if watchdog is not None:
                watchdog.tick()
            if not ready and self.subscriber.subscribed.is_set():
                ready = True
                log.info("sidecar_ready")
                self.notifier.ready(f"storing {', '.join(self.config.mqtt.topics)}")
                if on_ready is not None:
                    on_ready()
        return 0

    def _watchdog(self) -> Watchdog | None:
        """Pings systemd while the writer loops; a writer stuck longer than it ever legitimately
        waits stops the pings, and systemd restarts the service."""
        if self.watchdog_sec is None or not self.notifier.enabled:
            return None
        limit = self._stall_limit()
        writer = self.writer
        assert writer is not None

        def health(now: float) -> str | None:
            idle = now - writer.heartbeat
            return f"writer stalled for {idle:.1f}s" if idle > limit else None

        log.info("watchdog_enabled", interval=self.watchdog_sec / 2, stall_after=round(limit, 2))
        return Watchdog(self.notifier, self.watchdog_sec, health)

    def _stall_limit(self) -> float:
        """The watchdog's stall rule (``systemd.stall_after``), also /healthz's."""
        cfg = self.config
        return stall_after(flush_interval=cfg.writer.flush_interval,
                           busy_timeout=cfg.database.busy_timeout_ms / 1000,
                           retry_max_delay=cfg.writer.retry_max_delay,
                           watchdog_sec=self.watchdog_sec or 0.0)

    def _shutdown(self, code: int) -> int:
        assert self.writer is not None and self.subscriber is not None and self.db is not None
        started = time.monotonic()
        self.notifier.stopping("stopping: flushing the queue")
        timeout = self.config.writer.shutdown_timeout
        self.subscriber.stop_intake()
        if self.handlers is not None:
            self.handlers.stop(min(timeout, 5.0))  # replay streams end with "shutdown"
        drained = self.writer.stop(timeout)
        if self.announcer is not None:
            self.announcer.stop()
        if self.http is not None:
            self.http.stop()
        self.subscriber.close()
        folded = None
        files = is_sqlite(self.config.database)
        if not self.writer.alive and files:
            folded = truncate_wal(self.db, when="stop")
        self.db.close()
        if files and code == 0 and drained and folded is not None and not folded.busy \
                and self.checked_at is not None:
            cleanstop.write(sqlite_path(self.config.database.url), checked_at=self.checked_at)
        if self.journal_sync is not None:
            self.journal_sync.close()
            log.info("journal_syncs", syncs=self.journal_sync.syncs,
                     seconds=round(self.journal_sync.seconds, 3))
        log.info("sidecar_stopped", drained=drained, seconds=round(time.monotonic() - started, 3),
                 events_stored=self.stats.events_stored, duplicates=self.stats.duplicates,
                 dead_letters=self.stats.dead_letters, qos0_dropped=self.stats.qos0_dropped)
        if code == 0 and not drained:
            return 1
        return code
