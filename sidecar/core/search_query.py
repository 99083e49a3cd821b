"""The ``search`` query language -> an FTS5 MATCH string (pure; no database).

What a user writes: words (``boiler``), phrases (``"disk full"``), prefixes (``boil*``),
``AND`` (also implied by a space), ``OR``, ``NOT`` (``a NOT b``, ``a AND NOT b``), parentheses,
and a field in front of a term (``type:alert``, ``source:"pi 4"``, ``payload:disk``).

Every term goes to FTS5 as a quoted string, so nothing a user types is FTS5 syntax of its own:
``NEAR(``, ``col:``, ``^``, ``-`` or ``.`` inside a word are text, never an operator or a
column filter (``disk-full`` and ``192.168.1.4`` search as phrases of their tokens). What does
not parse raises ``FilterError(field="query")`` in our words, naming the problem; SQLite never
sees a malformed query, so its messages never reach a user.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from sidecar.errors import FilterError

MAX_TERMS = 64
MAX_DEPTH = 16
# the fields a term may name -> the FTS5 column (``storage.search``)
FIELDS = {"type": "type", "source": "source", "payload": "body"}
_TOKEN = re.compile(r'\s*(?:(?P<open>\()|(?P<close>\))|"(?P<phrase>[^"]*)(?P<closed>"?)'
                    r'|(?P<word>[^\s()"]+))')
_OPERATORS = ("AND", "OR", "NOT")


class _Tok(NamedTuple):
    kind: str  # open, close, phrase, word, op, field
    text: str
    prefix: bool = False


def _bad(message: str) -> FilterError:
    return FilterError(f"query: {message}", field="query")


def _tokens(text: str) -> list[_Tok]:
    if "\x00" in text:
        raise _bad("contains a NUL character")
    out: list[_Tok] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:  # only trailing spaces can fail to match; rstrip removed them
            break
        pos = m.end()
        if m.group("open"):
            out.append(_Tok("open", "("))
        elif m.group("close"):
            out.append(_Tok("close", ")"))
        elif m.group("phrase") is not None:
            if not m.group("closed"):
                raise _bad("a quote (\") is not closed")
            prefix = text.startswith("*", pos)
            pos += 1 if prefix else 0
            out.append(_Tok("phrase", m.group("phrase"), prefix))
        else:
            word = m.group("word")
            if word in _OPERATORS:
                out.append(_Tok("op", word))
                continue
            field, colon, rest = word.partition(":")
            if colon and field in FIELDS:
                out.append(_Tok("field", field))
                if not rest:
                    continue  # the term follows: type:"a b"
                word = rest
            prefix = word.endswith("*")
            word = word.rstrip("*")
            if not word:
                raise _bad("a * must follow a word (boil*)")
            out.append(_Tok("word", word, prefix))
    return out


class _Parser:
    """Recursive descent over the tokens; builds the FTS5 string as it goes."""

    def __init__(self, tokens: list[_Tok]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.terms = 0
        self.depth = 0

    def peek(self) -> _Tok | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> _Tok:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def parse(self) -> str:
        if not self.tokens:
            raise _bad("is empty: give at least one word")
        expr = self.or_expr()
        tok = self.peek()
        if tok is not None:  # only a stray ")" stops or_expr early
            raise _bad("a ) has no ( before it")
        return expr

    def or_expr(self) -> str:
        parts = [self.and_expr()]
        while (tok := self.peek()) is not None and tok.kind == "op" and tok.text == "OR":
            self.take()
            if self.peek() is None or self.peek().kind == "close":  # type: ignore[union-attr]
                raise _bad("OR needs a term after it")
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def and_expr(self) -> str:
        expr = self.primary()
        while (tok := self.peek()) is not None and tok.kind != "close":
            if tok.kind == "op" and tok.text == "OR":
                break
            negate = False
            if tok.kind == "op" and tok.text == "AND":
                self.take()
                tok = self.peek()
            if tok is not None and tok.kind == "op" and tok.text == "NOT":
                self.take()
                negate = True
            expr = f"({expr} {'NOT' if negate else 'AND'} {self.primary()})"
        return expr

    def primary(self) -> str:
        tok = self.peek()
        if tok is None:
            raise _bad("ends where a term was expected")
        if tok.kind == "op":
            if tok.text == "NOT":
                raise _bad("NOT needs a term before it (a NOT b)")
            raise _bad(f"{tok.text} needs a term on both sides")
        if tok.kind == "close":
            raise _bad("a ) has no ( before it" if self.depth == 0 else "() holds no term")
        self.take()
        if tok.kind == "open":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _bad(f"parentheses nest deeper than {MAX_DEPTH}")
            inner = self.or_expr()
            closing = self.peek()
            if closing is None or closing.kind != "close":
                raise _bad("a ( is not closed")
            self.take()
            self.depth -= 1
            return inner
        if tok.kind == "field":
            term = self.peek()
            if term is None or term.kind not in ("word", "phrase"):
                raise _bad(f"{tok.text}: needs a word or a phrase after it")
            self.take()
            return f"{FIELDS[tok.text]} : {self.term(term)}"
        return self.term(tok)

    def term(self, tok: _Tok) -> str:
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise _bad(f"more than {MAX_TERMS} terms")
        quoted = '"' + tok.text.replace('"', '""') + '"'
        return quoted + " *" if tok.prefix else quoted


def to_fts(text: str) -> str:
    """The FTS5 MATCH string for the user's ``text``; ``FilterError`` naming ``query`` if it
    does not parse."""
    return _Parser(_tokens(text)).parse()
