"""MQTT topic names and filters: validity, matching, and whether two filters can overlap.

Pure functions, no paho: the config check, the request router and the ``topic`` filter of
queries all use them.
"""

from __future__ import annotations

MAX_TOPIC_BYTES = 65535


def valid_topic(topic: str) -> bool:
    """A topic name a client may publish to: non-empty, no wildcards, no NUL, <= 64 KiB."""
    return (bool(topic) and "+" not in topic and "#" not in topic and "\x00" not in topic
            and len(topic.encode()) <= MAX_TOPIC_BYTES)


def filter_error(topic_filter: str) -> str | None:
    """Why ``topic_filter`` is not a valid MQTT subscription filter, or ``None`` if it is."""
    if not topic_filter:
        return "empty topic filter"
    if "\x00" in topic_filter or len(topic_filter.encode()) > MAX_TOPIC_BYTES:
        return "invalid topic filter"
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level and the last one"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


def matches(topic_filter: str, topic: str) -> bool:
    """True when ``topic`` matches ``topic_filter`` (``+`` one level, ``#`` the rest, parent
    included; a wildcard in the first level does not match a ``$`` topic)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels):
            return False
        if level != "+" and level != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def overlaps(first: str, second: str) -> bool:
    """True when some topic name matches both filters."""
    if first.startswith("$") != second.startswith("$") and (
            first[:1] in ("+", "#") or second[:1] in ("+", "#")):
        return False  # a leading wildcard never matches a $ topic
    a, b = first.split("/"), second.split("/")
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else None
        y = b[i] if i < len(b) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if x != "+" and y != "+" and x != y:
            return False
    return True

