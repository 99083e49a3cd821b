"""sidecar.core.topics: topic names, filter validity, matching and overlap (MQTT 3.1.1/5 rules)."""

from __future__ import annotations

import itertools

import pytest

from sidecar.core.topics import MAX_TOPIC_BYTES, filter_error, matches, overlaps, valid_topic


@pytest.mark.parametrize(("topic", "ok"), [
    ("kairo/user/message", True), ("a", True), ("/", True), ("a//b", True), ("$SYS/x", True),
    ("", False), ("kairo/+/x", False), ("kairo/#", False), ("a\x00b", False),
    ("x" * MAX_TOPIC_BYTES, True), ("x" * (MAX_TOPIC_BYTES + 1), False),
    ("é" * (MAX_TOPIC_BYTES // 2 + 1), False),  # the limit is in UTF-8 bytes, not characters
])
def test_valid_topic(topic: str, ok: bool):
    """A publishable topic name: non-empty, no wildcard, no NUL, at most 65,535 UTF-8 bytes."""
    assert valid_topic(topic) is ok


@pytest.mark.parametrize(("topic_filter", "problem"), [
    ("kairo/#", None), ("#", None), ("+", None), ("+/+/#", None), ("a//+", None),
    ("", "empty topic filter"), ("a\x00", "invalid topic filter"),
    ("kairo/#/x", "'#' must be a whole level and the last one"),
    ("kairo/a#", "'#' must be a whole level and the last one"),
    ("kairo/a+", "'+' must be a whole level"), ("+a/b", "'+' must be a whole level"),
])
def test_filter_error(topic_filter: str, problem: str | None):
    """Each invalid subscription filter is named with its problem; valid ones give None."""
    assert filter_error(topic_filter) == problem


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), [
    ("kairo/#", "kairo", True),  # '#' includes the parent level
    ("kairo/#", "kairo/a/b/c", True),
    ("kairo/+", "kairo/a", True),
    ("kairo/+", "kairo", False),
    ("kairo/+", "kairo/a/b", False),
    ("kairo/+/x", "kairo//x", True),  # an empty level is a level
    ("#", "$SYS/broker/load", False),  # a leading wildcard never matches a $ topic
    ("+/broker", "$SYS/broker", False),
    ("$SYS/#", "$SYS/broker", True),
    ("a/b", "a/b", True), ("a/b", "a/b/", False), ("a/b", "A/b", False),
])
def test_matches(topic_filter: str, topic: str, expected: bool):
    """Matching follows the MQTT rules, including the parent level of '#' and '$' topics."""
    assert matches(topic_filter, topic) is expected


TOPICS = ["kairo", "kairo/a", "kairo/a/b", "kairo-sidecar/request/query", "a", "a/b", "$SYS/x",
          "kairo/a/x", "kairo//x", "x/request/y"]
FILTERS = ["#", "+", "kairo/#", "kairo/+", "kairo/+/x", "kairo-sidecar/request/#", "+/request/+",
           "a/b", "$SYS/#", "+/+", "kairo/a/#", "x/#"]


@pytest.mark.parametrize(("first", "second"), list(itertools.combinations(FILTERS, 2)))
def test_overlaps_agrees_with_matching_on_sample_topics(first: str, second: str):
    """When a sample topic matches both filters, ``overlaps`` says so (never a false "disjoint")."""
    both = [t for t in TOPICS if matches(first, t) and matches(second, t)]
    if both:
        assert overlaps(first, second) and overlaps(second, first), both


@pytest.mark.parametrize(("first", "second", "expected"), [
    ("kairo/#", "kairo-sidecar/request/#", False),
    ("kairo-sidecar/state", "kairo-sidecar/request/#", False),
    ("#", "kairo-sidecar/request/#", True),
    ("+/request/+", "kairo-sidecar/request/#", True),
    ("#", "$SYS/#", False),
    ("a/+", "a/b/c", False),
])
def test_overlaps(first: str, second: str, expected: bool):
    """Two filters overlap when some topic name matches both (the config check relies on it)."""
    assert overlaps(first, second) is expected
