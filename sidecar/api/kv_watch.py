"""``kv/watch``: the current values under a prefix, ``caught_up``, then every change.

A ``ReplayStream`` with its own ``_stream``: the same thread, read connection, bounded QoS 1 in
flight, owner/lease, ``max_duration``, ``api.max_streams`` and ``done`` message. The changes
come from the ``kairo.kv.put``/``kairo.kv.delete`` events every kv write stores with it, and
from the rows projections changed (``kv_store.seq``, the event they folded: a projected write
stores no event): the newest ``seq`` is read *before* the current values, and every change
after it is sent. Each round reads up to a ``top`` seq read first, the events and the
projected rows with ``cursor < seq <= top``, merged in seq order, then moves the cursor to
``top``: a row changed again after ``top`` has a larger seq and comes next round. So no change
is missed; one made while the values were read may come twice (in the values and as a change:
its ``version`` tells); a key projections changed several times between two rounds comes once,
at its newest version.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from sidecar.api.protocol import KvWatchRequest, ReplayRequest, kv_value
from sidecar.api.replay import LIVE_POLL, CommitSignal, ReplayStream, Send
from sidecar.core import kv
from sidecar.core.events import StoredEvent
from sidecar.core.kv import KvEntry
from sidecar.storage.queries import conditions
from sidecar.storage.reads import Reader


class _Change(msgspec.Struct):
    key: str
    version: int
    value: msgspec.Raw = msgspec.Raw(b"null")


_CHANGE = msgspec.json.Decoder(_Change)


class KvWatch(ReplayStream):
    """One ``kv/watch`` stream; ``start()``/``cancel()``/``renew()`` as a replay."""

    def __init__(self, stream_id: str, request: KvWatchRequest, *, reader: Reader, send: Send,
                 commits: CommitSignal, inflight: int, max_duration: float, max_bytes: int,
                 fmt: str, on_end: Any = None) -> None:
        replay = ReplayRequest(type=[kv.PUT_EVENT, kv.DELETE_EVENT], batch=request.batch,
                               live=True, owner=request.owner, lease=request.lease,
                               transaction=request.transaction)
        super().__init__(stream_id, replay, conditions(replay), reader=reader, send=send,
                         commits=commits, inflight=inflight, max_duration=max_duration,
                         max_bytes=max_bytes, fmt=fmt, on_end=on_end)
        self._prefix = request.prefix

    def _stream(self) -> None:
        cursor = self._reader.last_seq()
        after: str | None = None
        while True:  # the current values, page by page
            self._check()
            found = self._reader.kv_page(prefix=self._prefix, after=after, limit=self._batch_size)
            if found.entries:
                self._send_entries("entries", found.entries)
            if found.next is None:
                break
            after = found.next
        self.last = cursor
        self._publish({"status": "ok", "stream": self.id, "caught_up": True, "last": cursor})
        while True:  # then the changes, as they commit
            self._check()
            self._wake.clear()
            top = self._reader.last_seq()
            rows, cut = self._reader.page_within(self._cond, limit=self._page_size, after=cursor,
                                                 max_bytes=self._max_bytes)
            more = cut or len(rows) == self._page_size
            if more and rows:
                top = min(top, rows[-1].seq)
            picked = [(row.seq, c) for row in rows if row.seq <= top
                      for c in (self._change(row),) if c is not None]
            if top > cursor:
                picked.extend(self._reader.kv_projected(prefix=self._prefix, after=cursor,
                                                        upto=top))
                picked.sort(key=lambda item: item[0])
            changes = [entry for _, entry in picked]
            for start in range(0, len(changes), self._batch_size):
                self._send_entries("changes", changes[start:start + self._batch_size])
            cursor = self.last = max(cursor, top)
            if more:
                continue
            self._wake.wait(self._live_wait())

    def _live_wait(self) -> float:
        now = time.monotonic()
        return min(LIVE_POLL, max(0.0, self._deadline - now), max(0.0, self._lease_until - now))

    def _change(self, row: StoredEvent) -> KvEntry | None:
        """The entry an event records (``value`` None for a delete), if its key is watched."""
        try:
            change = _CHANGE.decode(row.payload)
        except msgspec.MsgspecError:
            return None  # not written by the sidecar
        if not change.key.startswith(self._prefix):
            return None
        value = None if row.type == kv.DELETE_EVENT else bytes(change.value).decode()
        return KvEntry(change.key, value, change.version, row.created_at)

    def _send_entries(self, name: str, entries: list[KvEntry]) -> None:
        self.messages += 1
        out: list[Any] = []
        for entry in entries:
            item = kv_value(entry, self._fmt)
            if name == "changes":
                out.append({"op": "delete" if entry.value is None else "put", "key": item.key,
                            "value": item.value, "version": item.version,
                            "updated_at": item.updated_at})
            else:
                out.append(item)
        self._publish({"status": "ok", "stream": self.id, "seq": self.messages, name: out})
        self.count += len(entries)
