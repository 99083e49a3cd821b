"""Work for the writer thread other than storing events, as small task objects.

A task goes through the writer's queue like a delivery, so it runs in order: after every
delivery queued before it is written and acked. A task ends the batch being collected, and the
writer loop runs it with ``task.run(writer)`` between two batches; ``False`` stops the loop.
Events stay plain ``Delivery`` tuples on the fast path: wrapping each one would cost per event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sidecar.core.kv import KvEntry, KvWrite
from sidecar.errors import RequestError

AckToken = tuple[int, int]  # (connection generation, packet id)
KvOutcome = KvEntry | RequestError | None  # the entry written, the refusal, or no change


class Writer(Protocol):
    """What a task may ask of the writer (``sidecar.ingest.writer.Writer`` fits); a protocol
    rather than an import, so the writer and its tasks do not import each other."""

    def forget_delivery_ids(self) -> bool: ...

    def apply_kv(self, write: KvWrite, ack: AckToken | None) -> tuple[bool, KvOutcome]: ...


class WriterTask:
    """One piece of work the writer thread runs between batches. A plain base class, not an
    ``abc.ABC``: the writer checks ``isinstance(item, WriterTask)`` per queued item, and an
    ABC's check costs several times more per event."""

    __slots__ = ()

    def run(self, writer: Writer) -> bool:
        """Do the work on the writer thread; return False to stop the writer."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Stop(WriterTask):
    """``Writer.stop``: the deliveries queued before it are written and acked, then the loop
    ends."""

    def run(self, writer: Writer) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class SessionReset(WriterTask):
    """``Writer.session_reset``: the broker started a new session, so the packet ids recorded
    for id-less events are deleted (after the old session's messages are written), then
    ``then`` is called. Stops the writer if the shutdown deadline passes while the database
    refuses the delete (``then`` is not called: nothing subscribes)."""

    then: Callable[[], None]

    def run(self, writer: Writer) -> bool:
        if not writer.forget_delivery_ids():
            return False
        self.then()
        return True


@dataclass(frozen=True, slots=True)
class KvTask(WriterTask):
    """A kv put or delete (``sidecar.storage.kv.apply``) in its own transaction on the writer
    thread, so the store has one writer. ``done`` gets the outcome once the write is durable
    (the configured durability, as a PUBACK); ``ack``, the packet of a ``kv/set`` message, is
    acked then too. Stops the writer (nothing answered or acked) if the shutdown deadline passes
    while the database refuses the write."""

    write: KvWrite
    done: Callable[[KvOutcome], None]
    ack: AckToken | None = None

    def run(self, writer: Writer) -> bool:
        applied, outcome = writer.apply_kv(self.write, self.ack)
        if not applied:
            return False
        self.done(outcome)
        return True


STOP = Stop()
