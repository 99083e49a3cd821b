"""Dead-letter reasons in a few kinds: the label ``/metrics`` counts them by (a reason is free
text, one per message; a kind is one of ``DEAD_LETTER_KINDS``)."""

from __future__ import annotations

DEAD_LETTER_KINDS = ("payload", "conflict", "storage", "kv")


def dead_letter_kind(reason: str) -> str:
    """``conflict``: an id stored with another body; ``storage``: the database refused the row;
    ``kv``: a ``kv/set`` message refused; ``payload``: the message is not a valid event."""
    if reason.startswith("conflict:"):
        return "conflict"
    if reason.startswith("storage refused"):
        return "storage"
    if reason.startswith("kv set refused"):
        return "kv"
    return "payload"
