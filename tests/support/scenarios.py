"""Fault scenarios against the real daemon, sized by their arguments: the CI tests run them small,
``python -m tests.soak`` runs them big. Each publishes a QoS 1 stream of known events, injects
its fault while the stream runs, and ends with an exact count and a duplicate check
(``Outcome``); the caller asserts, or (the soak) reports.

Every wait is a condition with a deadline. The only sleeps are the random delays that place a
fault at a random instant, and a fault's own duration (a broker kept down for 30 s).
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sqlite3
import time

from tests.conftest import SidecarProcess, count_rows, wait_until
from tests.support import fuzzcorpus, hostile
from tests.support.broker import Broker
from tests.support.faultkit import (
    Outcome,
    SmallFilesystem,
    Stream,
    events_named,
    exclusive_lock,
    last_event,
    outcome,
    peak_rss_kib,
    restart,
)
from tests.support.netproxy import NetworkProxy
from tests.support.publisher import Message, event_messages
from tests.support.stores import target_rows


def _alive(sidecar: SidecarProcess) -> bool:
    """True while the sidecar process runs; fails the scenario at once if it exited."""
    if sidecar.proc is None or sidecar.proc.poll() is not None:
        code = None if sidecar.proc is None else sidecar.proc.returncode
        raise AssertionError(f"sidecar exited ({code}):\n{sidecar.log_text()[-4000:]}")
    return True


def _hold(sidecar: SidecarProcess, seconds: float) -> None:
    """Keep a fault in place for ``seconds`` while checking that the sidecar stays up."""
    until = time.monotonic() + seconds
    wait_until(lambda: _alive(sidecar) and time.monotonic() >= until, timeout=seconds + 5,
               interval=0.1, message=f"{seconds}s with the fault in place")


def _finish(name: str, sidecar: SidecarProcess, stream: Stream | list[Stream], *, prefix: str,
            started: float, timeout: float, **extra: object) -> Outcome:
    accepted: set[str] = set()
    for one in stream if isinstance(stream, list) else [stream]:
        accepted |= one.wait(timeout=timeout)
    _wait_for(sidecar, prefix, len(accepted), timeout=timeout)
    result = outcome(name, sidecar.db, accepted, prefix=prefix, **extra)
    result.seconds = round(time.monotonic() - started, 1)
    return result


def _wait_for(sidecar: SidecarProcess, prefix: str, n: int, *, timeout: float,
              quiet: float = 20.0) -> int:
    """Wait until ``n`` events with ids starting ``prefix`` are stored, or nothing has changed for
    ``quiet`` seconds (then the outcome shows the shortfall)."""
    def count() -> int:
        try:
            return int(target_rows(sidecar.db, "SELECT count(*) FROM events WHERE id >= ? "
                                   "AND id < ?", (prefix, prefix + "\U0010ffff"))[0][0])
        except Exception as exc:  # not migrated yet
            if "no such table" in str(exc) or "does not exist" in str(exc):
                return 0
            raise

    deadline = time.monotonic() + timeout
    last, changed = -1, time.monotonic()
    while True:
        _alive(sidecar)
        rows = count()
        now = time.monotonic()
        if rows != last:
            last, changed = rows, now
        if rows >= n or now - changed > quiet or now > deadline:
            return rows
        time.sleep(0.1)


def _stream(broker: Broker, n: int, prefix: str, rate: float | None, *, start: int = 0) -> Stream:
    return Stream(broker.host, broker.port, event_messages(n, start=start, prefix=prefix),
                  rate=rate).start()


# ---------------------------------------------------------------------------- SIGKILL storm
def kill_storm(broker: Broker, sidecar: SidecarProcess, *, events: int, kills: int, seed: int,
               prefix: str = "ks", rate: float | None = None) -> Outcome:
    """SIGKILL the sidecar at ``kills`` random instants of the stream, restarting it each time
    without waiting for it to be ready (so later kills also land in start-up and in the
    redelivered backlog)."""
    rng = random.Random(seed)
    started = time.monotonic()
    points = sorted(rng.sample(range(events // 20, events * 19 // 20), kills))
    stream = _stream(broker, events, prefix, rate)
    phases: dict[str, int] = {}
    for point in points:
        stream.wait_accepted(point, timeout=600)
        time.sleep(rng.uniform(0.0, 0.3))  # a random instant, not a synchronisation
        text = sidecar.log_text()
        tail = text[text.rfind('"sidecar_starting"'):] if '"sidecar_starting"' in text else ""
        phase = ("running" if '"sidecar_ready"' in tail else
                 "connecting" if '"mqtt_connecting"' in tail else "starting")
        phases[phase] = phases.get(phase, 0) + 1
        _alive(sidecar)
        sidecar.kill()
        restart(sidecar)
    return _finish("sigkill_storm", sidecar, stream, prefix=prefix, started=started, timeout=900,
                   kills=kills, notes={"seed": seed, "killed_while": phases})


# ---------------------------------------------------------------------------- broker restarts
def broker_restarts(broker: Broker, sidecar: SidecarProcess, *, events: int, restarts: int,
                    kill_sidecar: bool, seed: int, prefix: str = "br",
                    rate: float | None = None) -> Outcome:
    """Restart the broker (graceful stop: persistence written) ``restarts`` times mid-stream;
    with ``kill_sidecar`` the sidecar is SIGKILLed at the same moment and restarted too."""
    rng = random.Random(seed)
    started = time.monotonic()
    stream = _stream(broker, events, prefix, rate)
    offset = len(sidecar.log_text())
    kills = 0
    for k in range(restarts):
        point = events * (k + 1) // (restarts + 1) + rng.randint(-events // 20, events // 20)
        stream.wait_accepted(point, timeout=600)
        time.sleep(rng.uniform(0.0, 0.3))  # a random instant, not a synchronisation
        _alive(sidecar)
        if kill_sidecar:
            if rng.random() < 0.5:
                sidecar.kill()
                broker.stop()
            else:
                broker.stop()
                sidecar.kill()
            kills += 1
            broker.start()
            restart(sidecar)
        else:
            broker.restart(down_for=rng.uniform(0.2, 1.5))
    result = _finish("broker_restarts" + ("_with_sidecar_kill" if kill_sidecar else ""),
                     sidecar, stream, prefix=prefix, started=started, timeout=600, kills=kills,
                     broker_restarts=restarts)
    result.notes["session_lost"] = len(events_named(sidecar.log_text()[offset:],
                                                    "mqtt_session_lost"))
    return result


# ---------------------------------------------------------------------------- network
def broker_outage(broker: Broker, sidecar: SidecarProcess, *, events: int, down_for: float,
                  prefix: str = "bo", rate: float | None = None) -> Outcome:
    """Stop the broker for ``down_for`` seconds mid-stream: the sidecar stays up, reconnects
    by itself once the broker is back, and the stream resumes."""
    started = time.monotonic()
    stream = _stream(broker, events, prefix, rate)
    stream.wait_accepted(events * 2 // 5, timeout=600)
    assert sidecar.proc is not None
    pid = sidecar.proc.pid
    offset = len(sidecar.log_text())
    broker.stop()
    sidecar.wait_log("mqtt_disconnected", after=offset, timeout=15)
    _hold(sidecar, down_for)
    broker.start()
    back = time.monotonic()
    sidecar.wait_log("mqtt_subscribed", after=offset, timeout=60)
    reconnect = round(time.monotonic() - back, 1)
    result = _finish("broker_outage", sidecar, stream, prefix=prefix, started=started,
                     timeout=600, broker_restarts=1)
    result.notes.update(down_for=down_for, reconnected_after=reconnect,
                        same_process=sidecar.proc is not None and sidecar.proc.pid == pid,
                        failed_connects=len(events_named(sidecar.log_text()[offset:],
                                                         "mqtt_connect_failed")))
    return result


def network_cut(proxy: NetworkProxy, broker: Broker, sidecar: SidecarProcess, *, events: int,
                cut_for: float, prefix: str = "nc", rate: float | None = None) -> Outcome:
    """Cut the sidecar's link to the broker (silence, no FIN: only the keep-alive can tell) for
    ``cut_for`` seconds mid-stream, then restore it. The sidecar must connect through ``proxy``."""
    started = time.monotonic()
    stream = _stream(broker, events, prefix, rate)
    stream.wait_accepted(events * 2 // 5, timeout=600)
    offset = len(sidecar.log_text())
    proxy.cut()
    cut_at = time.monotonic()
    sidecar.wait_log("mqtt_disconnected", after=offset, timeout=cut_for + 30)
    noticed = round(time.monotonic() - cut_at, 1)
    _hold(sidecar, max(0.0, cut_for - (time.monotonic() - cut_at)))
    proxy.restore()
    back = time.monotonic()
    sidecar.wait_log("mqtt_subscribed", after=offset, timeout=60)
    reconnect = round(time.monotonic() - back, 1)
    result = _finish("network_cut", sidecar, stream, prefix=prefix, started=started, timeout=600)
    result.notes.update(cut_for=cut_for, noticed_after=noticed, reconnected_after=reconnect)
    return result


# ---------------------------------------------------------------------------- database faults
def locked_database(broker: Broker, sidecar: SidecarProcess, *, events: int, hold_for: float,
                    kill_while_locked: bool, prefix: str = "ld",
                    rate: float | None = None) -> Outcome:
    """Another process holds the write lock for ``hold_for`` seconds (longer than the busy
    timeout) mid-stream: the writer retries and stores nothing meanwhile; with
    ``kill_while_locked`` the sidecar is SIGKILLed before the lock goes (so anything it had
    acked without committing would be lost), then restarted."""
    started = time.monotonic()
    stream = _stream(broker, events, prefix, rate)
    stream.wait_accepted(events * 3 // 10, timeout=600)
    offset = len(sidecar.log_text())
    kills = 0
    with exclusive_lock(sidecar.db_path):
        rows = count_rows(sidecar.db_path)
        sidecar.wait_log("batch_write_failed", after=offset, timeout=hold_for + 30)
        _hold(sidecar, hold_for)
        assert count_rows(sidecar.db_path) == rows, "rows were written under another's lock"
        if kill_while_locked:
            sidecar.kill()
            kills = 1
    if kill_while_locked:
        restart(sidecar)
    result = _finish("locked_database" + ("_with_kill" if kill_while_locked else ""), sidecar,
                     stream, prefix=prefix, started=started, timeout=600, kills=kills)
    failed = events_named(sidecar.log_text()[offset:], "batch_write_failed")
    result.notes.update(hold_for=hold_for, write_failures=len(failed),
                        write_error=failed[0]["error"] if failed else None)
    return result


def disk_full(fs: SmallFilesystem, broker: Broker, sidecar: SidecarProcess, *, events: int,
              full_for: float, prefix: str = "df", rate: float | None = None) -> Outcome:
    """The file system of the database fills up twice, each time in the middle of a stream of
    half the events. The first time the sidecar is SIGKILLed while the disk is full and
    restarted while it still is (it must come up and keep retrying); the second time it stays
    up. Each time, space returns after ``full_for`` seconds and everything is stored, without a
    restart."""
    started = time.monotonic()
    half = events // 2
    streams: list[Stream] = []
    errors: list[str] = []
    kills = 0
    for round_ in range(2):
        stream = _stream(broker, half if round_ == 0 else events - half, prefix, rate,
                         start=round_ * half)
        streams.append(stream)
        stream.wait_accepted(half // 3, timeout=600)
        offset = len(sidecar.log_text())
        fs.fill()
        sidecar.wait_log("batch_write_failed", after=offset, timeout=60)
        failed = events_named(sidecar.log_text()[offset:], "batch_write_failed")
        errors.append(failed[0]["error"])
        _hold(sidecar, full_for)
        if round_ == 0:
            sidecar.kill()
            kills += 1
            offset = restart(sidecar)
            sidecar.wait_log("batch_write_failed", after=offset, timeout=60)
            _hold(sidecar, full_for)
        fs.free()
        sidecar.wait_log("batch_write_recovered", after=offset, timeout=60)
    result = _finish("disk_full", sidecar, streams, prefix=prefix, started=started, timeout=600,
                     kills=kills)
    result.notes.update(errors=errors, full_for=full_for, fs_bytes=fs.size)
    return result


# ---------------------------------------------------------------------------- SIGTERM
def sigterm_under_load(broker: Broker, sidecar: SidecarProcess, *, events: int,
                       shutdown_timeout: float, prefix: str = "st") -> Outcome:
    """SIGTERM while the stream runs at full speed: the sidecar exits 0 within
    ``shutdown_timeout`` having committed and acked all it took in (the restarted sidecar then
    gets no redelivered copy of a stored event: duplicates = 0)."""
    started = time.monotonic()
    stream = _stream(broker, events, prefix, None)
    stream.wait_accepted(events // 3, timeout=600)
    wait_until(lambda: _alive(sidecar) and count_rows(sidecar.db) > 0, timeout=60,
               message="the sidecar committing under load")
    assert sidecar.proc is not None
    sent = time.monotonic()
    sidecar.proc.send_signal(signal.SIGTERM)
    code = sidecar.proc.wait(shutdown_timeout + 30)
    exit_seconds = round(time.monotonic() - sent, 2)
    stopped = last_event(sidecar.log_text(), "sidecar_stopped")
    offset = restart(sidecar)
    sidecar.wait_log("sidecar_ready", after=offset, timeout=30)
    result = _finish("sigterm_under_load", sidecar, stream, prefix=prefix, started=started,
                     timeout=600)
    assert sidecar.terminate(timeout=shutdown_timeout + 30) == 0
    second = last_event(sidecar.log_text()[offset:], "sidecar_stopped")
    result.notes.update(exit_code=code, exit_seconds=exit_seconds, drained=stopped["drained"],
                        stored_before_exit=stopped["events_stored"],
                        duplicates_after_restart=second["duplicates"],
                        stored_after_restart=second["events_stored"])
    return result


# ---------------------------------------------------------------------------- bad input
def bad_input(broker: Broker, sidecar: SidecarProcess, *, seed: int, malformed: int, valid: int,
              max_payload_bytes: int, dead_letter_max_bytes: int) -> Outcome:
    """Publish the seeded corpus (``tests.fuzzcorpus``: malformed messages interleaved with valid
    events, conflicts and exact copies) and check the fate of every single message. The sidecar
    must run with the same ``max_payload_bytes`` and ``dead_letter_max_bytes``."""
    started = time.monotonic()
    cases = fuzzcorpus.corpus(seed=seed, malformed=malformed, valid=valid,
                              max_payload_bytes=max_payload_bytes)
    want_events = sum(c.expect == fuzzcorpus.EVENT for c in cases)
    want_dead = sum(c.expect == fuzzcorpus.DEAD for c in cases)
    if sidecar.engine == "postgres":  # an event holding U+0000 is a dead letter there
        refused = sum(c.expect == fuzzcorpus.EVENT and c.oracle is not None
                      and fuzzcorpus.holds_nul(c.oracle) for c in cases)
        want_events, want_dead = want_events - refused, want_dead + refused
    stream = Stream(broker.host, broker.port,
                    [Message(c.topic, c.topic, c.payload) for c in cases]).start()
    accepted = stream.wait(timeout=600)
    assert len(accepted) == len(cases), (len(accepted), len(cases))

    def landed() -> bool:
        _alive(sidecar)
        return (count_rows(sidecar.db) >= want_events
                and count_rows(sidecar.db, "dead_letters") >= want_dead)

    with contextlib.suppress(AssertionError):  # a shortfall is reported by verify below
        wait_until(landed, timeout=300, interval=0.2, message="every case stored or dead-lettered")
    _alive(sidecar)
    problems = fuzzcorpus.verify(sidecar.db, cases, dead_letter_max_bytes=dead_letter_max_bytes)
    missing = sum("expected one event, got 0" in p for p in problems)
    doubled = sum("expected one event, got 2" in p or "expected one dead letter, got 2" in p
                  for p in problems)
    result = Outcome("bad_input", events=want_events, stored=want_events - missing, lost=missing,
                     duplicated=doubled, unexpected=len(problems) - missing - doubled)
    result.seconds = round(time.monotonic() - started, 1)
    kinds: dict[str, int] = {}
    for case in cases:
        kinds[case.kind] = kinds.get(case.kind, 0) + 1
    result.notes.update(seed=seed, messages=len(cases), malformed=want_dead,
                        copies=sum(c.expect == fuzzcorpus.NOTHING for c in cases),
                        kinds=kinds, problems=problems[:20])
    return result


# ---------------------------------------------------------------------------- hostile requests
def request_flood(broker: Broker, sidecar: SidecarProcess, *, seed: int, events: int,
                  junk: int, replays: int, big_events: int = 200, big_bytes: int = 200_000,
                  prefix: str = "rf") -> Outcome:
    """While ``events`` events arrive: 4 replays and 100 queries of ``big_events`` large events
    (answered to topics nobody reads), ``replays`` replay requests at once, and ``junk`` seeded
    hostile requests in waves of 50. Every request must get a first answer (``ok``, ``busy`` or an error code
    other than ``internal``); the notes give the daemon's peak RSS growth."""
    started = time.monotonic()
    con = sqlite3.connect(sidecar.db_path, timeout=30)
    with con:
        con.executemany(
            "INSERT INTO events (id, topic, type, source, payload, metadata, created_at, "
            "received_at) VALUES (?, 'kairo/big', 'kairo.big.event', 's', ?, '{}', 0, 0)",
            [(f"big-{i:05d}", json.dumps({"i": i, "blob": "b" * big_bytes}))
             for i in range(big_events)])
    con.close()
    assert sidecar.proc is not None
    baseline = peak_rss_kib(sidecar.proc.pid)
    requester = hostile.Requester(broker.host, broker.port, listen="reply/#")
    try:
        stream = _stream(broker, events, prefix, 2000)
        for n in range(4):
            requester.send("replay", b'{"type": "kairo.big.event", "batch": 1000}',
                           response_topic=f"void/replay/{n}")
        for n in range(100):
            requester.send("query", b'{"type": "kairo.big.*", "limit": 1000}',
                           response_topic=f"void/query/{n}")
        flood_replays = hostile.flood(
            requester, [("replay", b'{"correlation_id": "none", "batch": 1000}', None)] * replays,
            prefix="reply/replays", timeout=300, alive=lambda: _alive(sidecar))
        flood_junk = hostile.flood(requester, hostile.requests(seed=seed, n=junk),
                                   prefix="reply/junk", timeout=300, alive=lambda: _alive(sidecar),
                                   wave=50)
        for topic, bodies in list(requester.answers.by_topic.items()):  # end hostile live replays
            for body in bodies:
                if isinstance(body, dict) and body.get("caught_up"):
                    requester.send("replay/cancel",
                                   json.dumps({"stream": body["stream"]}).encode(),
                                   response_topic=f"reply/cancel/{topic}")
        result = _finish("request_flood", sidecar, stream, prefix=prefix, started=started,
                         timeout=300)
        peak = peak_rss_kib(sidecar.proc.pid)
    finally:
        requester.close()
    result.notes.update(
        requests=replays + junk + 104, answered=flood_replays.answered + flood_junk.answered,
        replay_codes=flood_replays.codes, junk_codes=flood_junk.codes,
        problems=(flood_replays.problems + flood_junk.problems)[:20],
        rss_mib_before=round(baseline / 1024), rss_mib_peak=round(peak / 1024),
        rss_growth_mib=round((peak - baseline) / 1024))
    return result
