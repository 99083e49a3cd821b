"""What differs between the engines, chosen once from the ``[database] url``.

Two dialects: ``SQLITE`` (the default, a file on the Pi) and ``POSTGRES`` (``postgresql://``,
through psycopg2: the ``kairo-sidecar[postgres]`` extra). The rest of storage asks the dialect,
never tests the engine itself:

* ``dialect_for(url)``: which one a URL names; ``of(db)``: which one an open database is.
* query terms that compile differently (``Glob``, ``TopicMatch``, ``JsonEquals``): Peewee nodes
  that render for the database that executes them (each database's SQL context carries its
  dialect), so ``queries.conditions`` builds one set of terms for both engines.
* key lookups: SQLite finds ids through the FTS5 table ``event_keys`` (an SD-card-wear design,
  ``storage.keys``); PostgreSQL through plain B-tree indexes on the columns.
* the capabilities the file-level machinery needs: WAL checkpoints, incremental vacuum, the
  group commit's journal sync, the disk guard, integrity checks and ``backup`` apply to SQLite
  only. On PostgreSQL a COMMIT with ``synchronous_commit = on`` is durable when it returns, so
  the writer acks after each commit.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import peewee

from sidecar.core import paths, topics


class Dialect:
    """One engine's answers. Instances are module constants: ``SQLITE`` and ``POSTGRES``."""

    name = ""
    fts_keys = False  # ids and types found through event_keys (FTS5)
    files = False  # a database file: WAL, checkpoints, vacuum, disk guard, integrity, backup
    holds_nul = False  # text and JSON may hold U+0000 (PostgreSQL's text and JSONB cannot)

    # --------------------------------------------------------------- query terms
    def glob(self, column: peewee.Node, pattern: str) -> peewee.Node:
        raise NotImplementedError

    def topic_match(self, column: peewee.Node, topic_filter: str) -> peewee.Node:
        raise NotImplementedError

    def json_equals(self, column: peewee.Node, path: Sequence[str | int], value: Any) -> peewee.Node:
        raise NotImplementedError

    def contains(self, text: peewee.Node, needle: str) -> peewee.Node:
        """``needle`` occurs in ``text`` (no pattern characters)."""
        raise NotImplementedError

    # --------------------------------------------------------------- JSON paths
    # One spelling per engine for the value at a path, shared by ``where``, ``latest``,
    # ``[indexes] paths`` and ``keep_latest``: an expression index serves a query only when
    # the query spells the expression as the index does (the path inlined, never a parameter).
    def path_sql(self, column: str, path: paths.JsonPath) -> str:
        """The value at ``path`` of ``column`` as SQL text (index definitions, purge)."""
        raise NotImplementedError

    def path_value(self, column: peewee.Node, path: paths.JsonPath) -> peewee.Node:
        """The value at ``path`` as a query term."""
        raise NotImplementedError

    def present_sql(self, expr: str) -> str:
        """SQL: a value (not JSON ``null``) is at the path ``expr`` (a ``path_sql``) names."""
        return f"{expr} IS NOT NULL"  # json_extract gives SQL NULL for JSON null

    def key_terms(self, value: peewee.Node) -> list[peewee.Node]:
        """The terms that make ``value`` (a ``path_value``) a ``latest`` key."""
        return [value.is_null(False)]  # type: ignore[attr-defined]

    def key_value(self, key: Any) -> peewee.Node:
        """A bound key (as ``key_arg`` gives it) comparable with a ``path_value``."""
        return peewee.Value(key)

    def key_arg(self, key: Any) -> Any:
        """A ``latest`` key as the parameter ``key_value`` binds."""
        return key

    def key_read(self, value: Any) -> Any:
        """A ``path_value`` as a row holds it -> the key (a string or a number)."""
        return value

    # --------------------------------------------------------------- writers
    def order_commits(self, cursor: Any) -> None:
        """Called in a write transaction before it inserts events: makes the transactions
        that insert events commit in the order of the ``seq`` they draw (see ``_Postgres``)."""

    def __repr__(self) -> str:
        return f"<dialect {self.name}>"


class _SQLite(Dialect):
    name = "sqlite"
    fts_keys = True
    files = True
    holds_nul = True

    def contains(self, text: peewee.Node, needle: str) -> peewee.Node:
        return peewee.fn.instr(text, needle) > 0

    def glob(self, column: peewee.Node, pattern: str) -> peewee.Node:
        return peewee.Expression(column, "GLOB", pattern)

    def topic_match(self, column: peewee.Node, topic_filter: str) -> peewee.Node:
        # a function every SQLite connection registers (KairoSqliteDatabase)
        return getattr(peewee.fn, MQTT_MATCH_FUNCTION)(topic_filter, column) == 1

    def json_equals(self, column: peewee.Node, path: Sequence[str | int], value: Any) -> peewee.Node:
        """Strings and numbers compare with ``json_extract`` (a JSON string never equals a
        number); ``true``/``false``/``null`` compare the JSON type."""
        text = "$" + "".join(f"[{p}]" if isinstance(p, int) else f'."{p}"' for p in path)
        if value is None or isinstance(value, bool):
            kind = "null" if value is None else ("true" if value else "false")
            return peewee.fn.json_type(column, text) == kind
        return peewee.fn.json_extract(column, text) == value

    def path_sql(self, column: str, path: paths.JsonPath) -> str:
        return path.sql

    def path_value(self, column: peewee.Node, path: paths.JsonPath) -> peewee.Node:
        return peewee.fn.json_extract(column, peewee.SQL(f"'{path.path}'"))


class _Postgres(Dialect):
    name = "postgresql"

    def order_commits(self, cursor: Any) -> None:
        """A transaction-level advisory lock (``SEQ_ORDER_LOCK``), held until COMMIT or
        ROLLBACK: only one transaction at a time draws ``seq`` values and commits, so a reader
        paging by ``seq`` (replay, live, query cursors) never passes a ``seq`` that commits
        later. Several sidecars, ``import`` and kv writes take it; it costs parallelism on the
        insert and commit only (decoding, dedupe lookups and the network run in parallel)."""
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (SEQ_ORDER_LOCK,))

    def contains(self, text: peewee.Node, needle: str) -> peewee.Node:
        return peewee.fn.strpos(text, needle) > 0

    def glob(self, column: peewee.Node, pattern: str) -> peewee.Node:
        """GLOB's ``*`` and ``?`` as LIKE's ``%`` and ``_`` (both case-sensitive); LIKE's own
        wildcards and its escape (backslash) in the glob are matched literally."""
        like = "".join({"*": "%", "?": "_", "%": "\\%", "_": "\\_", "\\": "\\\\"}.get(c, c)
                       for c in pattern)
        return peewee.Expression(column, "LIKE", like)

    def topic_match(self, column: peewee.Node, topic_filter: str) -> peewee.Node:
        return peewee.Expression(column, "~", mqtt_regex(topic_filter))

    def json_equals(self, column: peewee.Node, path: Sequence[str | int], value: Any) -> peewee.Node:
        """``column #> path = value::jsonb``: JSON equality, so a string never equals a number,
        ``1`` equals ``1.0``, and ``null`` matches a present null (a missing key is SQL NULL),
        as SQLite's ``json_extract``/``json_type`` terms."""
        if "\\u0000" in json.dumps(value):
            return peewee.SQL("1 = 0")  # JSONB cannot hold U+0000: no stored value equals it
        target = peewee.Cast(peewee.Value(json.dumps(value)), "jsonb")
        return peewee.Expression(peewee.Expression(column, "#>", _pointer(path)), "=", target)

    def path_sql(self, column: str, path: paths.JsonPath) -> str:
        return f"({column} #> {_pointer_sql(paths.parts(path))})"

    def path_value(self, column: peewee.Node, path: paths.JsonPath) -> peewee.Node:
        return peewee.Expression(column, "#>", _pointer(paths.parts(path)))

    def present_sql(self, expr: str) -> str:
        return f"{expr} IS NOT NULL AND {expr} <> 'null'::jsonb"

    def key_terms(self, value: peewee.Node) -> list[peewee.Node]:
        """JSON strings and numbers only: JSONB orders null < strings < numbers < booleans <
        arrays < objects, so the two bounds keep a key range an index scans; a boolean, array
        or object at the path is no key here (a ``latest`` cursor is a string or a number)."""
        return [value.is_null(False),  # type: ignore[attr-defined]
                peewee.Expression(value, ">", peewee.SQL("'null'::jsonb")),
                peewee.Expression(value, "<", peewee.SQL("'false'::jsonb"))]

    def key_value(self, key: Any) -> peewee.Node:
        return peewee.Cast(peewee.Value(key), "jsonb")

    def key_arg(self, key: Any) -> Any:
        return json.dumps(key)

    def key_read(self, value: Any) -> Any:
        return json.loads(value)  # JSONB arrives as its text (storage.postgres keeps JSON text)


def _pointer_sql(parts: Sequence[str | int]) -> str:
    """A ``text[]`` literal, inlined so that an expression index matches the query's spelling;
    each element double-quoted (a name ``null`` is no NULL); the names are ``[A-Za-z0-9_-]``
    (``core.paths``), nothing to escape."""
    return "'{" + ",".join(f'"{p}"' for p in parts) + "}'::text[]"


def _pointer(parts: Sequence[str | int]) -> peewee.Node:
    return peewee.SQL(_pointer_sql(parts))


SQLITE: Dialect = _SQLite()
POSTGRES: Dialect = _Postgres()
MQTT_MATCH_FUNCTION = "kairo_mqtt_match"
# PostgreSQL advisory lock keys (one 64-bit space per database): event inserts, migrations
SEQ_ORDER_LOCK = 0x6B6169726F0001  # "kairo" 1
MIGRATION_LOCK = 0x6B6169726F0002
SEARCH_INDEX_LOCK = 0x6B6169726F0003  # storage.search_pg.sync: one sidecar builds the index
SCHEMES = {"sqlite": SQLITE, "postgresql": POSTGRES, "postgres": POSTGRES}


def dialect_for(url: str) -> Dialect:
    """The dialect of a ``[database] url`` (``sqlite:///PATH`` or ``postgresql://...``); an
    unknown scheme is SQLite's problem to report (``db.sqlite_path`` names the URL)."""
    return SCHEMES.get(urlsplit(url).scheme, SQLITE)


def of(db: Any) -> Dialect:
    """The dialect of an open (or proxied) Peewee database."""
    target = getattr(db, "obj", db)
    return getattr(target, "dialect", None) or (
        POSTGRES if isinstance(target, peewee.PostgresqlDatabase) else SQLITE)


def of_cursor(cursor: Any) -> Dialect:
    """The dialect of a DB-API cursor (the writer's raw cursors)."""
    sqlite = isinstance(cursor, sqlite3.Cursor) or type(cursor).__module__.startswith("sqlcipher3")
    return SQLITE if sqlite else POSTGRES


def masked_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and error messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def mqtt_regex(topic_filter: str) -> str:
    """A POSIX regular expression matching the topics ``topic_filter`` matches, as
    ``core.topics.matches``: ``+`` one level, ``#`` the rest with the parent, no ``$`` topic
    for a leading wildcard."""
    assert topics.filter_error(topic_filter) is None, topic_filter
    levels = topic_filter.split("/")
    out: list[str] = []
    for i, level in enumerate(levels):
        sep = "/" if i else ""
        if level == "#":
            out.append(f"({sep}.*)?" if i else ".*")
            break
        out.append(sep + ("[^/]*" if level == "+" else re.escape(level)))
    # a lookahead (PostgreSQL's ARE has it) keeps a leading wildcard off $ topics
    head = "(?=[^$])" if topic_filter[:1] in ("+", "#") else ""
    return "^" + head + "".join(out) + "$"


class Rendered(peewee.ColumnBase):
    """A term whose SQL depends on the engine: ``build(dialect)`` is called when the query is
    compiled, with the dialect of the database that compiles it."""

    def __init__(self, build: Any) -> None:
        super().__init__()
        self._build = build

    def __sql__(self, ctx: Any) -> Any:
        dialect = ctx.state.dialect or SQLITE
        return ctx.sql(self._build(dialect))
