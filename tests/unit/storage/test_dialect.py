"""storage.dialect: the engine from the URL, the masked URL, MQTT filters as PostgreSQL regexes,
the PostgreSQL connection parameters and the database password's sources."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sidecar.config import load_config
from sidecar.core import topics
from sidecar.errors import StorageError
from sidecar.storage.dialect import POSTGRES, SQLITE, dialect_for, masked_url, mqtt_regex
from sidecar.storage.postgres import connect_params

FILTERS = ["#", "+", "a/#", "a/+", "+/b", "a/+/c", "+/+", "a/b", "$SYS/#", "$SYS/+", "a.b/#",
           "a(b)/+", "a/b/c/#"]
TOPICS = ["a", "a/b", "a/b/c", "a/b/c/d", "b", "x/b", "$SYS/x", "$SYS", "a.b/x", "axb/x",
          "a(b)/q", "a/", "/b", "a//c"]


@pytest.mark.parametrize("topic_filter", FILTERS)
def test_mqtt_regex_matches_what_topics_matches(topic_filter: str) -> None:
    """The regex a PostgreSQL topic filter uses selects exactly the topics core.topics matches."""
    pattern = re.compile(mqtt_regex(topic_filter))
    for topic in TOPICS:
        assert bool(pattern.search(topic)) == topics.matches(topic_filter, topic), topic


def test_dialect_for_url() -> None:
    """sqlite:/// is SQLite, postgresql:// and postgres:// are PostgreSQL."""
    assert dialect_for("sqlite:///data/kairo.db") is SQLITE
    assert dialect_for("postgresql://u@h/db") is POSTGRES
    assert dialect_for("postgres://u@h/db") is POSTGRES


def test_masked_url_hides_the_password_only() -> None:
    """A URL's password becomes ***; user, host, port and database stay."""
    assert masked_url("postgresql://kairo:s3cr%40t@db.example:5433/kairo") == \
        "postgresql://kairo:***@db.example:5433/kairo"
    assert masked_url("postgresql://kairo@db/kairo") == "postgresql://kairo@db/kairo"


def test_connect_params_take_the_password_from_the_url_first() -> None:
    """The URL's password wins over [database] password; query options pass through."""
    params = connect_params("postgresql://k:fromurl@h:5/db?sslmode=require", "fromconfig")
    assert (params["password"], params["host"], params["port"], params["dbname"],
            params["sslmode"]) == ("fromurl", "h", 5, "db", "require")
    assert connect_params("postgresql://k@h/db", "fromconfig")["password"] == "fromconfig"


def test_a_url_without_a_database_is_refused_naming_it() -> None:
    """postgresql://host/ with no database name is a StorageError naming the masked URL."""
    with pytest.raises(StorageError, match=r"names no database") as caught:
        connect_params("postgresql://k:pw@h/", None)
    assert "pw" not in str(caught.value)


def test_password_from_environment_and_systemd_credential(tmp_path: Path) -> None:
    """KAIRO_SIDECAR_DATABASE__PASSWORD sets the password; else $CREDENTIALS_DIRECTORY/database-password."""
    env = {"KAIRO_SIDECAR_DATABASE__URL": "postgresql://k@h/db"}
    assert load_config(environ=env).database.password is None
    assert load_config(environ={**env, "KAIRO_SIDECAR_DATABASE__PASSWORD": "e"}).database.password == "e"
    (tmp_path / "database-password").write_text("cred\n")
    config = load_config(environ={**env, "CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert config.database.password == "cred"
    both = {**env, "CREDENTIALS_DIRECTORY": str(tmp_path), "KAIRO_SIDECAR_DATABASE__PASSWORD": "e"}
    assert load_config(environ=both).database.password == "e"
