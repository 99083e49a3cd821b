"""The search query language -> FTS5 (``sidecar.core.search_query``): what parses, what it
becomes, and the problem each malformed query is refused for (in our words, on ``query``)."""

from __future__ import annotations

import pytest

from sidecar.core.search_query import MAX_TERMS, to_fts
from sidecar.errors import FilterError


@pytest.mark.parametrize(("text", "fts"), [
    ("boiler", '"boiler"'),
    ("boil*", '"boil" *'),
    ('"disk full"', '"disk full"'),
    ('"disk fu"*', '"disk fu" *'),
    ("a b", '("a" AND "b")'),
    ("a AND b OR c", '(("a" AND "b") OR "c")'),
    ("a NOT b", '("a" NOT "b")'),
    ("a AND NOT b", '("a" NOT "b")'),
    ("(a OR b) c", '(("a" OR "b") AND "c")'),
    ("type:alert", 'type : "alert"'),
    ('payload:"disk full"', 'body : "disk full"'),
    ("source:pi-4", 'source : "pi-4"'),
    ("other:x", '"other:x"'),  # not a field we know: text
    ("NEAR(a b)", '("NEAR" AND ("a" AND "b"))'),  # a word, then a group: no FTS5 NEAR
    ("disk-full 192.168.1.4", '("disk-full" AND "192.168.1.4")'),
    ("and or not", '(("and" AND "or") AND "not")'),  # operators are upper case only
])
def test_queries_become_quoted_fts5(text: str, fts: str):
    """Every term is quoted, so nothing a user types is FTS5 syntax of its own."""
    assert to_fts(text) == fts


@pytest.mark.parametrize(("text", "problem"), [
    ("", "is empty"),
    ("   ", "is empty"),
    ('"disk full', "quote"),
    ("(a b", "( is not closed"),
    ("a b)", ") has no ("),
    ("()", "holds no term"),
    ("NOT a", "NOT needs a term before it"),
    ("a OR", "OR needs a term after it"),
    ("OR a", "OR needs a term on both sides"),
    ("a AND", "ends where a term was expected"),
    ("*", "a * must follow a word"),
    ("type:", "type: needs a word or a phrase"),
    ("type:(a)", "type: needs a word or a phrase"),
    ("a\x00b", "NUL"),
    ("(" * 40 + "a" + ")" * 40, "nest deeper"),
    (" ".join(["w"] * (MAX_TERMS + 1)), "more than"),
])
def test_malformed_queries_are_refused_naming_the_problem(text: str, problem: str):
    """A FilterError on ``query`` whose message says what is wrong."""
    with pytest.raises(FilterError) as err:
        to_fts(text)
    assert err.value.field == "query"
    assert err.value.message.startswith("query: ") and problem in err.value.message
