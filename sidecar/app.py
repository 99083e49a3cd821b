"""Wires config, database, writer and subscriber together; owns start-up and shutdown order."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

import peewee

from . import __version__
from .config import Config
from .db import check_schema, migrate, open_database, sqlite_path
from .errors import StorageError
from .logs import get_logger
from .mqtt import Subscriber, receive_window
from .stats import Stats
from .writer import Writer

log = get_logger("sidecar.app")


class Sidecar:
    """One running daemon. ``run()`` blocks until a stop signal, then shuts down in order:
    stop intake, flush and ack, publish ``offline``, disconnect."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stats = Stats()
        self._stop = threading.Event()
        self.db: peewee.SqliteDatabase | None = None
        self.writer: Writer | None = None
        self.subscriber: Subscriber | None = None

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def open(self) -> None:
        """Open the database and bring the schema up to date (or refuse)."""
        cfg = self.config
        self.db = open_database(cfg.database)
        if cfg.database.migrate_on_start:
            migrate(self.db)
        else:
            pending = check_schema(self.db)
            if pending:
                raise StorageError(f"database needs migrations {pending}: run `kairo-sidecar "
                                   "migrate` or set [database] migrate_on_start = true",
                                   path=str(sqlite_path(cfg.database.url)))

    def run(self, *, install_signals: bool = True,
            on_ready: Callable[[], None] | None = None) -> int:
        cfg = self.config
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._signal)
        self.open()
        assert self.db is not None
        window = receive_window(cfg.mqtt, cfg.writer.queue_size)
        subscriber_ref: list[Subscriber] = []
        self.writer = Writer(self.db, cfg.writer, ack=lambda tokens: subscriber_ref[0].ack(tokens),
                             window=window, stats=self.stats)
        self.subscriber = Subscriber(cfg.mqtt, cfg.ingest, self.writer,
                                     queue_size=cfg.writer.queue_size)
        subscriber_ref.append(self.subscriber)
        log.info("sidecar_starting", version=__version__, database=cfg.database.url,
                 synchronous=cfg.database.synchronous, batch_size=cfg.writer.batch_size,
                 flush_interval=cfg.writer.flush_interval, topics=cfg.mqtt.topics)
        self.writer.start()
        self.subscriber.start()
        code = self._main_loop(on_ready)
        return self._shutdown(code)

    def _signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("stop_requested", signal=signal.Signals(signum).name)
        self._stop.set()

    def _main_loop(self, on_ready: Callable[[], None] | None) -> int:
        assert self.writer is not None and self.subscriber is not None
        ready = False
        while not self._stop.wait(0.2):
            if not self.writer.alive:
                log.error("writer_died")
                return 1
            if not ready and self.subscriber.subscribed.is_set():
                ready = True
                log.info("sidecar_ready")
                if on_ready is not None:
                    on_ready()
        return 0

    def _shutdown(self, code: int) -> int:
        assert self.writer is not None and self.subscriber is not None and self.db is not None
        started = time.monotonic()
        timeout = self.config.writer.shutdown_timeout
        self.subscriber.stop_intake()
        drained = self.writer.stop(timeout)
        self.subscriber.close()
        self.db.close()
        log.info("sidecar_stopped", drained=drained, seconds=round(time.monotonic() - started, 3),
                 events_stored=self.stats.events_stored, duplicates=self.stats.duplicates,
                 dead_letters=self.stats.dead_letters, qos0_dropped=self.stats.qos0_dropped)
        if code == 0 and not drained:
            return 1
        return code
