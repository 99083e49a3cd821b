"""The ``search`` query language -> a small tree (``Query``), rendered as an FTS5 MATCH string
(SQLite) or a ``tsquery`` text (PostgreSQL) (pure; no database).

What a user writes: words (``boiler``), phrases (``"disk full"``), prefixes (``boil*``),
``AND`` (also implied by a space), ``OR``, ``NOT`` (``a NOT b``, ``a AND NOT b``), parentheses,
and a field in front of a term (``type:alert``, ``source:"pi 4"``, ``payload:disk``).

Every term goes to FTS5 as a quoted string, so nothing a user types is FTS5 syntax of its own:
``NEAR(``, ``col:``, ``^``, ``-`` or ``.`` inside a word are text, never an operator or a
column filter (``disk-full`` and ``192.168.1.4`` search as phrases of their tokens). What does
not parse raises ``FilterError(field="query")`` in our words, naming the problem; SQLite never
sees a malformed query, so its messages never reach a user. On PostgreSQL every term is a
quoted ``tsquery`` lexeme (quotes and backslashes doubled), read by ``to_tsquery('simple', ...)``:
``&``, ``|``, ``!``, ``<->`` or ``:`` typed by a user are text there too.
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
# the fields a term may name -> the tsquery weight (``storage.search``'s PostgreSQL vector)
WEIGHTS = {"type": "A", "source": "B", "payload": "C"}


class Term(NamedTuple):
    """A word or a phrase (``text``), a prefix when ``prefix``, in one ``field`` or all."""

    text: str
    prefix: bool = False
    field: str | None = None


class Op(NamedTuple):
    """``AND``/``OR`` of ``parts``, or ``NOT``: the first part without the second."""

    kind: str
    parts: tuple[Node, ...]


Node = Term | Op


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
    """Recursive descent over the tokens; builds the tree."""

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

    def parse(self) -> Node:
        if not self.tokens:
            raise _bad("is empty: give at least one word")
        expr = self.or_expr()
        tok = self.peek()
        if tok is not None:  # only a stray ")" stops or_expr early
            raise _bad("a ) has no ( before it")
        return expr

    def or_expr(self) -> Node:
        parts = [self.and_expr()]
        while (tok := self.peek()) is not None and tok.kind == "op" and tok.text == "OR":
            self.take()
            if self.peek() is None or self.peek().kind == "close":  # type: ignore[union-attr]
                raise _bad("OR needs a term after it")
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else Op("OR", tuple(parts))

    def and_expr(self) -> Node:
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
            expr = Op("NOT" if negate else "AND", (expr, self.primary()))
        return expr

    def primary(self) -> Node:
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
            return self.term(term, tok.text)
        return self.term(tok)

    def term(self, tok: _Tok, field: str | None = None) -> Term:
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise _bad(f"more than {MAX_TERMS} terms")
        return Term(tok.text, tok.prefix, field)


class Query(NamedTuple):
    """A parsed query: ``tree``, and its renderings for each engine."""

    tree: Node

    @property
    def fts(self) -> str:
        return _fts(self.tree)

    @property
    def tsquery(self) -> str:
        return _tsquery(self.tree)


def _fts(node: Node) -> str:
    if isinstance(node, Term):
        quoted = '"' + node.text.replace('"', '""') + '"'
        quoted = quoted + " *" if node.prefix else quoted
        return f"{FIELDS[node.field]} : {quoted}" if node.field else quoted
    if node.kind == "OR":
        return "(" + " OR ".join(_fts(p) for p in node.parts) + ")"
    return f"({_fts(node.parts[0])} {node.kind} {_fts(node.parts[1])})"


def _tsquery(node: Node) -> str:
    """``to_tsquery`` text: each term one quoted lexeme (``'`` and ``\\`` doubled), which
    ``to_tsquery`` splits into the phrase of its tokens (``<->``); a term with punctuation
    also as the phrase of its words (``disk-full`` finds "disk full", as on SQLite; PostgreSQL's
    parser keeps ``192.168.1.4`` one token); ``:*`` a prefix, the weight letter the field."""
    if isinstance(node, Term):
        suffix = ("*" if node.prefix else "") + (WEIGHTS[node.field] if node.field else "")
        suffix = ":" + suffix if suffix else ""
        if not node.text.strip():  # an empty phrase: a lexeme-less token (no match, no error)
            return "'-'"
        words = _PUNCTUATION.sub(" ", node.text).strip()
        lexeme = _lexeme(node.text) + suffix
        if words and words != node.text:  # as typed (a host, a version) or its words' phrase
            return f"({lexeme} | {_lexeme(words)}{suffix})"
        return lexeme
    if node.kind == "OR":
        return "(" + " | ".join(_tsquery(p) for p in node.parts) + ")"
    joiner = " & !" if node.kind == "NOT" else " & "
    return f"({_tsquery(node.parts[0])}{joiner}{_tsquery(node.parts[1])})"


_PUNCTUATION = re.compile(r"[\W_]+")


def _lexeme(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def parse(text: str) -> Query:
    """The user's ``text`` parsed; ``FilterError`` naming ``query`` if it does not parse."""
    return Query(_Parser(_tokens(text)).parse())


def to_fts(text: str) -> str:
    """The FTS5 MATCH string for the user's ``text``; ``FilterError`` naming ``query`` if it
    does not parse."""
    return parse(text).fts
