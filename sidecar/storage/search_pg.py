"""Full-text search on PostgreSQL: a GIN expression index over a ``tsvector`` of each event.

The vector (``vector_sql``) is the ``simple`` text search config's tokens of the ``type``
(weight A), the ``source`` (B) and every string in the ``payload`` (C,
``jsonb_to_tsvector(..., '["string"]')``), for the fields ``[search] fields`` names. The index
``events_search`` is over that expression, so it covers every event, old and new, with no
trigger and no backfill (building it reads the table once, and holds other writers' inserts
meanwhile: ``sync`` logs its time; sidecars sharing the database build it once, in turn). Its
comment is the config's fingerprint: a config that indexes other fields drops and rebuilds it;
search off drops it. A query (``core.search_query``) reaches PostgreSQL as one bound
``to_tsquery('simple', %s)`` text whose every term is a quoted lexeme; a field is a weight.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import peewee

from sidecar.config import SearchConfig
from sidecar.logs import get_logger
from sidecar.storage.dialect import SEARCH_INDEX_LOCK

log = get_logger("sidecar.search")

INDEX = "events_search"
CONFIG = "'simple'::regconfig"
SNIPPET_WORDS = 12  # words in a snippet fragment (SQLite's snippet: 12 tokens)
# type and source split on every non-alphanumeric (as FTS5's unicode61: ``kairo.alert.disk``
# is three words; PostgreSQL's parser would keep it one host name)
_WORDS = "regexp_replace(coalesce({c}, ''), '[^[:alnum:]]+', ' ', 'g')"
_PARTS = {
    "type": f"setweight(to_tsvector({CONFIG}, {_WORDS.format(c='type')}), 'A')",
    "source": f"setweight(to_tsvector({CONFIG}, {_WORDS.format(c='source')}), 'B')",
    "payload": f"setweight(jsonb_to_tsvector({CONFIG}, payload, '[\"string\"]'), 'C')",
}
_TEXTS = {
    "type": _WORDS.format(c="type"),
    "source": _WORDS.format(c="source"),
    "payload": ("coalesce((SELECT string_agg(v #>> '{}', ' ') FROM "
                "jsonb_path_query(payload, 'strict $.**') AS v WHERE jsonb_typeof(v) = 'string'), '')"),
}


def vector_sql(fields: Sequence[str]) -> str:
    """The indexed expression (the same text in the index and in every query, so the planner
    uses the index)."""
    return "(" + " || ".join(_PARTS[f] for f in fields) + ")"


def match_sql(fields: Sequence[str]) -> str:
    return f"{vector_sql(fields)} @@ to_tsquery({CONFIG}, %s)"


def rank_sql(fields: Sequence[str]) -> str:
    """``-ts_rank`` as float8 (lower is better, as bm25; a float8 cursor compares exactly)."""
    return f"(-ts_rank({vector_sql(fields)}, to_tsquery({CONFIG}, %s)))::float8"


def fingerprint(config: SearchConfig) -> str:
    return json.dumps({"fields": list(config.fields), "config": "simple"})


def fields_of(spec: str) -> tuple[str, ...]:
    return tuple(json.loads(spec)["fields"])


def spec_of(cursor: Any) -> str | None:
    """The fingerprint of the index that exists, or None when search is off."""
    cursor.execute(f"SELECT obj_description(to_regclass('{INDEX}'), 'pg_class'), "
                   f"to_regclass('{INDEX}') IS NOT NULL")
    row = cursor.fetchone()
    return (row[0] or "") if row[1] else None


def index_spec(db: peewee.Database) -> str | None:
    return spec_of(db.cursor())


def sync(db: peewee.Database, config: SearchConfig, *, source: str) -> tuple[str, str | None]:
    """Make the index that of ``config`` (``unchanged``, ``enabled``, ``reindex``, ``disabled``)
    and return what it did with the fingerprint now indexed (None: off). ``source`` names the
    config in errors (``config`` refuses what PostgreSQL cannot index)."""
    del source
    with db.atomic():
        # sidecars sharing the database start together: one builds, the others then see it
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (SEARCH_INDEX_LOCK,))
        now = index_spec(db)
        if not config.enabled:
            if now is None:
                return "unchanged", None
            db.execute_sql(f"DROP INDEX {INDEX}")
            log.info("search_disabled", hint="the index was dropped; enabling builds it again")
            return "disabled", None
        want = fingerprint(config)
        if now == want:
            return "unchanged", now
        if now is not None:
            db.execute_sql(f"DROP INDEX {INDEX}")
        started = time.monotonic()
        log.info("search_index_building", fields=list(config.fields),
                 hint="the GIN index reads every event once")
        db.execute_sql(f"CREATE INDEX {INDEX} ON events USING gin ({vector_sql(config.fields)})")
        db.execute_sql(f"COMMENT ON INDEX {INDEX} IS %s", (want,))
        # statistics of the indexed expression (a sample): without them the planner guesses
        # every word common and walks seq for a rare one
        db.execute_sql("ANALYZE events")
    action = "reindex" if now is not None else "enabled"
    log.info("search_index_" + action, fields=list(config.fields), tokenizer="simple",
             ms=round((time.monotonic() - started) * 1000, 1))
    return action, want


def _option(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def snippets(db: peewee.Database, fields: Sequence[str], tsquery: str, seqs: Sequence[int],
             marks: tuple[str, str]) -> dict[int, str]:
    """``ts_headline`` of each hit's text (its fields joined by spaces), the matches between
    ``marks``: up to two fragments of ``SNIPPET_WORDS`` words joined by ``…``."""
    if not seqs:
        return {}
    text = " || ' ' || ".join(_TEXTS[f] for f in fields)
    options = (f"StartSel={_option(marks[0])}, StopSel={_option(marks[1])}, "
               f"MaxWords={SNIPPET_WORDS}, MinWords={SNIPPET_WORDS // 3}, MaxFragments=2, "
               "FragmentDelimiter='…'")
    rows = db.execute_sql(f"SELECT seq, ts_headline({CONFIG}, {text}, to_tsquery({CONFIG}, %s), "
                          "%s) FROM events WHERE seq = ANY(%s)", (tsquery, options, list(seqs)))
    return {int(seq): headline or "" for seq, headline in rows.fetchall()}
