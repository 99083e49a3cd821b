"""The one explicit configuration object: TOML file + KAIRO_SIDECAR_* environment overlay.

This is the only module that reads ``os.environ``. Everything else receives a ``Config``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
from msgspec import Meta

from sidecar.core import choices, paths, projections, topics, units
from sidecar.core.codecs import explain_validation
from sidecar.core.units import BYTES, SECONDS, ByteSize, Duration, FreeSpace
from sidecar.errors import ConfigError

ENV_PREFIX = "KAIRO_SIDECAR_"

Port = Annotated[int, Meta(ge=1, le=65535)]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Policy for every config section: immutable, unknown keys are errors."""


class TLSConfig(_Section, frozen=True):
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    insecure: bool = False


class MQTTConfig(_Section, frozen=True):
    host: str = "127.0.0.1"
    port: Port = 1883
    client_id: Annotated[str, Meta(min_length=1, max_length=128)] = "kairo-sidecar"
    topics: Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["kairo/#"]
    )
    qos: Annotated[int, Meta(ge=0, le=1)] = 1
    protocol: Literal["5", "3.1.1"] = "5"
    username: str | None = None
    password: str | None = None
    tls: TLSConfig | None = None
    keepalive: Annotated[int, Meta(ge=5, le=65535)] = 60
    session_expiry: Annotated[int, Meta(ge=0, le=4294967295)] = 7 * 24 * 3600
    max_inflight: Annotated[int, Meta(ge=1, le=65535)] = 20
    reconnect_min_delay: Annotated[float, Meta(gt=0, le=3600), SECONDS] = 1.0
    reconnect_max_delay: Annotated[float, Meta(gt=0, le=3600), SECONDS] = 30.0
    state_topic: Annotated[str, Meta(min_length=1)] = "kairo-sidecar/state"
    # paho's Client with buffered reads and batched acks (sidecar.broker.paho_client, which
    # relies on paho internals); false: paho's own Client as it ships, slower under load.
    fast_client: bool = True
    # Several sidecars writing one PostgreSQL database: each subscribes ``$share/<group>/...``
    # and the broker gives every message to one member of the group (README "Several sidecars").
    shared_group: Annotated[str, Meta(min_length=1, max_length=64)] | None = None


Durability = Literal["group", "full", "none"]
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]


class DatabaseConfig(_Section, frozen=True):
    """``durability`` decides when an acked event is on stable storage (README "Durability"):
    ``group`` commits with ``synchronous = NORMAL`` and syncs the WAL once before releasing
    the acks of every batch committed since the last sync (after ``sync_interval``, see the
    writer);
    ``full`` is ``synchronous = FULL`` (a sync per commit); ``none`` acks after the commit
    without a sync (``synchronous`` as set: NORMAL, the pre-1.x default, can lose acked
    events on a power cut)."""

    url: str = ""
    # PostgreSQL only, when the url has none (README "PostgreSQL"); never logged
    password: str | None = None
    # encryption at rest (SQLCipher; README "Encryption at rest"): a file holding the key, mode
    # 0600; the systemd credential database-key sets it. ``key`` comes only from the environment
    # (KAIRO_SIDECAR_DATABASE__KEY), never from the file; never logged.
    key_file: str | None = None
    key: str | None = None
    durability: Durability = "group"
    synchronous: Synchronous = "NORMAL"
    sync_interval: Annotated[float, Meta(gt=0, le=60), SECONDS] = 1.0
    busy_timeout_ms: Annotated[int, Meta(ge=0)] = 5000
    cache_size_kib: Annotated[int, Meta(ge=0)] = 8192
    migrate_on_start: bool = True
    startup_check: Literal["auto", "quick", "full", "off"] = "auto"
    checkpoint_interval: Duration = 300.0
    journal_size_limit: ByteSize = 32 * 1024 * 1024

    @property
    def effective_durability(self) -> Durability:
        """``group`` with ``synchronous`` FULL/EXTRA is ``full`` (SQLite already syncs each
        commit: a configuration from before ``durability`` keeps working); ``group`` with OFF
        (refused by ``load_config``) is ``none``."""
        if self.durability == "group" and self.synchronous in ("FULL", "EXTRA"):
            return "full"
        if self.durability == "group" and self.synchronous == "OFF":
            return "none"
        return self.durability

    @property
    def effective_synchronous(self) -> Synchronous:
        """The ``PRAGMA synchronous`` every connection gets: ``full`` raises NORMAL to FULL."""
        if self.durability == "full" and self.synchronous == "NORMAL":
            return "FULL"
        return self.synchronous


class WriterConfig(_Section, frozen=True):
    batch_size: Annotated[int, Meta(ge=1, le=10000)] = 500
    # 5 s: fewer, fuller commits at a trickle; each commit writes ~16 pages however few events
    # it holds (10 events/s: 24x the event JSON written at 1 s, 9.5x at 5 s; BENCHMARKS.md)
    flush_interval: Annotated[float, Meta(gt=0, le=60), SECONDS] = 5.0
    queue_size: Annotated[int, Meta(ge=1, le=1_000_000)] = 5000
    retry_max_delay: Annotated[float, Meta(gt=0), SECONDS] = 5.0
    shutdown_timeout: Annotated[float, Meta(gt=0), SECONDS] = 10.0


class IngestConfig(_Section, frozen=True):
    max_payload_bytes: Annotated[int, Meta(gt=0), BYTES] = 262144
    dead_letter_max_bytes: Annotated[int, Meta(ge=0), BYTES] = 65536


class LogConfig(_Section, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class ApiConfig(_Section, frozen=True):
    """The request/response API on ``<base_topic>/request/<op>`` (see README "Request API")."""

    enabled: bool = True
    base_topic: Annotated[str, Meta(min_length=1, max_length=256,
                                    pattern=r"^[^$#+/\x00]([^#+\x00]*[^#+/\x00])?$")] = "kairo-sidecar"
    max_limit: Annotated[int, Meta(ge=1, le=100_000)] = 1000
    max_streams: Annotated[int, Meta(ge=1, le=1000)] = 4
    replay_inflight: Annotated[int, Meta(ge=1, le=1000)] = 8
    max_duration: Annotated[float, Meta(gt=0), SECONDS] = 3600.0
    max_request_bytes: Annotated[int, Meta(ge=256, le=16_777_216), BYTES] = 65536
    max_response_bytes: Annotated[int, Meta(ge=4096, le=268_435_455), BYTES] = 1_048_576
    workers: Annotated[int, Meta(ge=1, le=64)] = 2
    queue_size: Annotated[int, Meta(ge=1, le=100_000)] = 64


class KvConfig(_Section, frozen=True):
    """The key-value store (README "Key-value store")."""

    max_value_bytes: Annotated[int, Meta(ge=16, le=16_777_216), BYTES] = 65536
    publish_retained: bool = False  # mirror each key's value retained on <base>/kv/state/<key>


class RetentionRule(_Section, frozen=True):
    """``max_age`` for the event types matching the glob ``type`` (first matching rule wins);
    ``keep_latest`` (a JSON path such as ``payload.name``): the newest event per value of that
    path among these types is never deleted, whatever its age or the caps."""

    type: Annotated[str, Meta(min_length=1)]
    max_age: Duration
    keep_latest: str | None = None


class RetentionConfig(_Section, frozen=True):
    """What the purge deletes (see README "Retention"); 0 means no limit."""

    max_age: Duration = 0.0
    max_events: Annotated[int, Meta(ge=0)] = 0
    max_db_bytes: ByteSize = 0
    rules: list[RetentionRule] = msgspec.field(default_factory=list)
    interval: Duration = 3600.0
    batch_size: Annotated[int, Meta(ge=1, le=100_000)] = 2000
    min_free: FreeSpace = "10%"  # disk guard (sidecar.diskguard): "10%", "2GiB" or "off"
    min_free_keep: Duration = 86400.0  # the disk guard never deletes events received this recently


class IndexesConfig(_Section, frozen=True):
    """``paths``: JSON paths (``payload.fingerprint``) the daemon keeps an expression index on
    (``sidecar.storage.indexes``); each costs writes only for events that hold the path."""

    paths: Annotated[list[str], Meta(max_length=16)] = msgspec.field(default_factory=list)


SearchField = Literal["type", "source", "payload"]


class SearchPaths(_Section, frozen=True):
    """One ``[[search.paths]]`` rule: for the events of ``type`` (an exact type or a glob, first
    matching rule wins) only the strings under these JSON paths are indexed, not every string
    of the payload."""

    type: Annotated[str, Meta(min_length=1, max_length=256)]
    paths: Annotated[list[str], Meta(min_length=1, max_length=16)]


class SearchConfig(_Section, frozen=True):
    """Full-text search over events (README "Full-text search"; ``sidecar.storage.search``).
    Off by default: the index adds card writes for every event."""

    enabled: bool = False
    fields: Annotated[list[SearchField], Meta(min_length=1, max_length=3)] = msgspec.field(
        default_factory=lambda: ["type", "source", "payload"])
    tokenizer: Literal["unicode61", "trigram"] = "unicode61"
    paths: Annotated[list[SearchPaths], Meta(max_length=32)] = msgspec.field(default_factory=list)
    backfill_batch: Annotated[int, Meta(ge=100, le=100_000)] = 2000  # existing events per step
    # a ranked search scores the newest this many matches only (bm25 costs per match); 0: all
    rank_window: Annotated[int, Meta(ge=0, le=10_000_000)] = 2000


class ProjectionConfig(_Section, frozen=True):
    """One ``[[projections]]`` rule (``sidecar.core.projections``; README "Projections"): events
    of ``type`` fold into the key ``key`` renders, inside the writer's transaction."""

    name: str
    type: str
    key: str
    mode: Literal["set", "merge"] = "set"
    value: str | None = None  # set: a payload path to store instead of the whole payload


class HttpConfig(_Section, frozen=True):
    """The HTTP listener (README "Metrics and health", "Web console"): ``/metrics``,
    ``/healthz`` and the console at ``/``. Off while ``listen`` is empty; a bind that is not
    loopback needs ``token``."""

    listen: str = ""  # "127.0.0.1:9465", "[::1]:9465"; "" = off
    token: Annotated[str, Meta(min_length=16, max_length=256)] | None = None
    console: bool = True  # the read-only web console at / (README "Web console")

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` of ``listen`` (checked by ``load_config``), None when off."""
        return listen_address(self.listen) if self.listen else None


def listen_address(text: str) -> tuple[str, int]:
    """``"host:port"`` (an IPv6 host in brackets) -> ``(host, port)``; ValueError (our words)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected host:port such as 127.0.0.1:9465, got {text!r:.100}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Only this machine can connect to ``host`` (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve to any interface
        return False


class HomeAssistantConfig(_Section, frozen=True):
    """Home Assistant MQTT discovery (README "Home Assistant")."""

    discovery: bool = False
    prefix: Annotated[str, Meta(min_length=1, max_length=256,
                                pattern=r"^[^$#+/\x00]([^#+\x00]*[^#+/\x00])?$")] = "homeassistant"
    interval: Duration = 60.0  # at least 5s (checked by load_config)
    node_id: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] = (
        "kairo_sidecar")


class Config(_Section, frozen=True):
    mqtt: MQTTConfig = msgspec.field(default_factory=MQTTConfig)
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    writer: WriterConfig = msgspec.field(default_factory=WriterConfig)
    ingest: IngestConfig = msgspec.field(default_factory=IngestConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    indexes: IndexesConfig = msgspec.field(default_factory=IndexesConfig)
    search: SearchConfig = msgspec.field(default_factory=SearchConfig)
    kv: KvConfig = msgspec.field(default_factory=KvConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    homeassistant: HomeAssistantConfig = msgspec.field(default_factory=HomeAssistantConfig)
    projections: Annotated[list[ProjectionConfig], Meta(max_length=64)] = msgspec.field(
        default_factory=list)


def default_database_url(environ: Mapping[str, str]) -> str:
    """``$STATE_DIRECTORY/kairo.db`` under systemd, ``./data/kairo.db`` otherwise."""
    state_dir = environ.get("STATE_DIRECTORY", "").split(":")[0]
    base = Path(state_dir) if state_dir else Path("data")
    return "sqlite:///" + str(base / "kairo.db")


class SystemdEnv(NamedTuple):
    """What systemd tells a ``Type=notify`` service through its environment."""

    notify_socket: str | None  # $NOTIFY_SOCKET: where sd_notify messages go
    watchdog_sec: float | None  # $WATCHDOG_USEC as seconds, when the watchdog is for this process


def systemd_environment(environ: Mapping[str, str] | None = None) -> SystemdEnv:
    """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (as sd_watchdog_enabled)."""
    env = os.environ if environ is None else environ
    socket_path = env.get("NOTIFY_SOCKET") or None
    watchdog: float | None = None
    pid = env.get("WATCHDOG_PID", "")
    if not pid or pid == str(os.getpid()):
        try:
            usec = int(env.get("WATCHDOG_USEC", ""))
        except ValueError:
            usec = 0
        watchdog = usec / 1_000_000 if usec > 0 else None
    return SystemdEnv(socket_path, watchdog)


# tomllib's wording (pinned by tests/unit/test_config.py) -> what we say about it
_TOML_PROBLEMS = (
    ("Cannot overwrite a value", "a key is set twice"),
    ("Cannot declare", "a table is declared twice"),
    ("Expected ']'", "a table header is not closed with ]"),
    ("Invalid value", "a value is missing or not valid (text needs quotes)"),
    ("Illegal character", "a string is not closed, or a character is not allowed here"),
    ("Expected '=' after a key", "a key has no = and value"),
    ("Expected newline or end of document", "two statements on one line"),
)
_TOML_AT = re.compile(r"\(at line (\d+), column (\d+)\)")


def toml_problem(exc: ValueError, path: str | Path) -> str:
    """A TOML syntax error in our words: where (line, column, the line itself) and what."""
    text = str(exc)
    what = next((ours for theirs, ours in _TOML_PROBLEMS if text.startswith(theirs)),
                "a syntax error")
    at = _TOML_AT.search(text)
    if at is None:
        return f"not valid TOML: {what}"
    line_no, column = int(at.group(1)), int(at.group(2))
    try:
        line = Path(path).read_text(errors="replace").splitlines()[line_no - 1]
    except (OSError, IndexError):
        line = ""
    shown = f": {line.strip()[:80]!r}" if line.strip() else ""
    return f"not valid TOML at line {line_no}, column {column}{shown}: {what}"


def load_config(path: str | Path | None = None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Decode ``path`` (or ``$KAIRO_SIDECAR_CONFIG``, or the defaults), overlay the environment,
    validate, resolve defaults."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source = "defaults"
    if path is None and env.get(ENV_PREFIX + "CONFIG"):
        path = env[ENV_PREFIX + "CONFIG"]
    if path is not None:
        source = str(path)
        data = _read_toml(Path(path))
    _convert(data, source)  # the file alone must be valid: errors name the file
    if isinstance(data.get("database"), dict) and "key" in data["database"]:
        raise ConfigError("the key never goes in the configuration file: use key_file, the "
                          "systemd credential database-key or KAIRO_SIDECAR_DATABASE__KEY",
                          source=source, key="database.key")
    for name, value in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and name != ENV_PREFIX + "CONFIG":
            _apply_env(data, name, value)
    config = _convert(data, "environment")
    _check(config, source)
    _check_api_topics(config, source)
    if not config.database.url:
        database = msgspec.structs.replace(config.database, url=default_database_url(env))
        config = msgspec.structs.replace(config, database=database)
    config = _key_source(config, env, source)
    if config.database.password is None:
        secret = database_credential(env)
        if secret is not None:
            config = msgspec.structs.replace(
                config, database=msgspec.structs.replace(config.database, password=secret))
    return config


KEY_CREDENTIAL = "database-key"


def _key_source(config: Config, environ: Mapping[str, str], source: str) -> Config:
    """At most one key source; the systemd credential ``database-key`` (``LoadCredential=``,
    ``LoadCredentialEncrypted=``) becomes ``key_file`` when no other source is set. Encryption
    is for SQLite files only."""
    database = config.database
    if database.key is not None and database.key_file:
        raise ConfigError("set one key source: key_file or KAIRO_SIDECAR_DATABASE__KEY, not both",
                          source=source, key="database.key_file")
    if database.key is None and not database.key_file:
        directory = environ.get("CREDENTIALS_DIRECTORY", "")
        credential = Path(directory) / KEY_CREDENTIAL if directory else None
        if credential is not None and credential.is_file():
            database = msgspec.structs.replace(database, key_file=str(credential))
            config = msgspec.structs.replace(config, database=database)
    if (database.key is not None or database.key_file) and \
            database.url.startswith(("postgresql:", "postgres:")):
        raise ConfigError("encryption at rest applies to SQLite files only; on PostgreSQL use "
                          "the server's disk encryption (and TLS to it)", source=source,
                          key="database.key" if database.key is not None else "database.key_file")
    return config


def database_credential(environ: Mapping[str, str]) -> str | None:
    """The systemd credential ``database-password`` (``LoadCredential=``), if the unit has one."""
    directory = environ.get("CREDENTIALS_DIRECTORY", "")
    if not directory:
        return None
    try:
        return (Path(directory) / "database-password").read_text().rstrip("\r\n") or None
    except OSError:
        return None


def _check(config: Config, source: str) -> None:
    """Rules that involve more than one key."""
    if config.mqtt.reconnect_min_delay > config.mqtt.reconnect_max_delay:
        raise ConfigError("must not exceed mqtt.reconnect_max_delay", source=source,
                          key="mqtt.reconnect_min_delay")
    database = config.database
    if database.synchronous == "OFF" and database.durability != "none":
        raise ConfigError(f'"OFF" never syncs, not even a checkpoint: it cannot give '
                          f'database.durability = "{database.durability}" (use NORMAL or FULL, '
                          'or durability = "none" to accept losing and corrupting data on a '
                          "power cut)", source=source, key="database.synchronous")
    _check_paths(config, source)
    _check_search(config, source)
    _check_http(config.http, source)
    if config.homeassistant.interval < 5:
        raise ConfigError("must be at least 5s (Home Assistant state updates)", source=source,
                          key="homeassistant.interval")
    compile_projections(config.projections, source=source)
    _check_shared_group(config, source)


def compile_projections(rules: list[ProjectionConfig], *,
                        source: str = "defaults") -> list[projections.Projection]:
    """The compiled ``[[projections]]``; ``ConfigError`` naming ``projections[i].<field>``."""
    compiled: list[projections.Projection] = []
    for i, rule in enumerate(rules):
        try:
            compiled.append(projections.Projection(rule.name, rule.type, rule.key,
                                                   mode=rule.mode, value=rule.value))
        except projections.ProjectionError as exc:
            raise ConfigError(str(exc), source=source, key=f"projections[{i}].{exc.field}") from None
    problem = projections.check_all(compiled)
    if problem is not None:
        i, field, message = problem
        raise ConfigError(message, source=source, key=f"projections[{i}].{field}")
    return compiled


def _check_shared_group(config: Config, source: str) -> None:
    group = config.mqtt.shared_group
    if group is None:
        return
    if any(c in group for c in "/+#") or not group.isprintable():
        raise ConfigError(f"{group!r} is not a share name: no '/', '+', '#' or control "
                          "characters", source=source, key="mqtt.shared_group")
    if not config.database.url.startswith(("postgresql:", "postgres:")):
        raise ConfigError("a shared group splits the stream between sidecars that must write "
                          "one database: set database.url to a postgresql:// URL",
                          source=source, key="mqtt.shared_group")
    if config.mqtt.session_expiry == 0 and config.mqtt.protocol == "5":
        raise ConfigError("each member of a shared group needs a persistent session "
                          "(session_expiry > 0)", source=source, key="mqtt.session_expiry")


def _check_paths(config: Config, source: str) -> None:
    """``[indexes] paths`` and ``keep_latest``: JSON paths in the grammar ``where`` takes."""
    seen: set[str] = set()
    for i, key in enumerate(config.indexes.paths):
        problem = paths.path_error(key)
        if problem:
            raise ConfigError(problem, source=source, key=f"indexes.paths[{i}]")
        if key in seen:
            raise ConfigError(f"{key!r} is listed twice", source=source, key=f"indexes.paths[{i}]")
        seen.add(key)
    for i, rule in enumerate(config.retention.rules):
        if rule.keep_latest is not None:
            problem = paths.path_error(rule.keep_latest)
            if problem:
                raise ConfigError(problem, source=source,
                                  key=f"retention.rules[{i}].keep_latest")


def _check_search(config: Config, source: str) -> None:
    """``[search]``: fields and paths well formed; on PostgreSQL (its ``simple`` text search
    config) no ``trigram`` tokenizer and no ``paths``. Whether the SQLite build has the
    tokenizer is checked when the database opens (``storage.search.sync``), where the library
    is known."""
    search = config.search
    if search.enabled and config.database.url.startswith(("postgresql:", "postgres:")):
        if search.tokenizer == "trigram":
            raise ConfigError("'trigram' is SQLite's FTS5 tokenizer: on PostgreSQL search "
                              "splits words with its 'simple' config (remove the key)",
                              source=source, key="search.tokenizer")
        if search.paths:
            raise ConfigError("paths are not supported on PostgreSQL yet: every string of the "
                              "payload is indexed (remove [[search.paths]])",
                              source=source, key="search.paths")
    if len(set(search.fields)) != len(search.fields):
        raise ConfigError("a field is listed twice", source=source, key="search.fields")
    for i, rule in enumerate(search.paths):
        for j, key in enumerate(rule.paths):
            problem = paths.path_error(key)
            if problem:
                raise ConfigError(problem, source=source, key=f"search.paths[{i}].paths[{j}]")
        if "payload" not in search.fields:
            raise ConfigError('paths choose what of the payload is indexed: add "payload" to '
                              "search.fields", source=source, key=f"search.paths[{i}]")


def _check_http(http: HttpConfig, source: str) -> None:
    """``listen`` is ``host:port``; a bind other hosts can reach needs ``token``."""
    if not http.listen:
        return
    try:
        host, _ = listen_address(http.listen)
    except ValueError as exc:
        raise ConfigError(str(exc), source=source, key="http.listen") from None
    if not is_loopback(host) and http.token is None:
        raise ConfigError(f"required when http.listen is not a loopback address ({host!r:.100}): "
                          "other machines could read the figures", source=source, key="http.token")


def _check_api_topics(config: Config, source: str) -> None:
    """The stored topics must never match the API's request or response topics: a request
    must not become an event, and a stored answer would feed a live replay its own output.
    Nor the key-value store's (``kv/set`` messages are writes, ``kv/state`` its mirror)."""
    if not config.api.enabled:
        return
    base = config.api.base_topic
    for i, topic in enumerate(config.mqtt.topics):
        problem = topics.filter_error(topic)
        if problem:
            raise ConfigError(problem, source=source, key=f"mqtt.topics[{i}]")
        for own in (f"{base}/request/#", f"{base}/response/#", f"{base}/kv/#"):
            if topics.overlaps(topic, own):
                raise ConfigError(f"{topic!r} overlaps the API topics {own!r}: narrow it or "
                                  "change api.base_topic", source=source, key=f"mqtt.topics[{i}]")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("file not found", source=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(toml_problem(exc, path), source=str(path)) from None




def _convert(data: dict[str, Any], source: str) -> Config:
    try:
        return msgspec.convert(choices.fold_choices(units.parse_units(data, Config), Config), Config)
    except (units.UnitError, choices.ChoiceError) as exc:
        raise ConfigError(str(exc), source=source, key=exc.key) from None
    except msgspec.ValidationError as exc:
        raise _config_error(str(exc), source) from None


def _config_error(message: str, source: str) -> ConfigError:
    """Turn msgspec's ``... - at `$.mqtt.port``` into a ConfigError naming ``mqtt.port``."""
    kind, key, text = explain_validation(message)
    if kind == "unknown":
        return ConfigError("unknown key", source=source, key=key)
    return ConfigError(text, source=source, key=key or None)


def _apply_env(data: dict[str, Any], name: str, value: str) -> None:
    """``KAIRO_SIDECAR_MQTT__PORT=1884`` sets ``data["mqtt"]["port"]``, typed as the field."""
    parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
    struct_type: type[msgspec.Struct] = Config
    node = data
    for depth, part in enumerate(parts):
        field_type = _field_type(struct_type, part)
        if field_type is None:
            raise ConfigError("unknown key", source=f"environment variable {name}",
                              key=".".join(parts[: depth + 1]))
        nested = _struct_in(field_type)
        if depth == len(parts) - 1:
            if nested is not None:
                raise ConfigError("is a section, set its keys instead",
                                  source=f"environment variable {name}", key=".".join(parts))
            node[part] = _env_value(value, field_type, name, ".".join(parts))
            return
        if nested is None:
            raise ConfigError("unknown key", source=f"environment variable {name}",
                              key=".".join(parts[: depth + 2]))
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node, struct_type = child, nested


def _field_type(struct_type: type[msgspec.Struct], name: str) -> Any:
    for field in msgspec.structs.fields(struct_type):
        if field.name == name:
            return field.type
    return None


def _struct_in(field_type: Any) -> type[msgspec.Struct] | None:
    info = msgspec.inspect.type_info(field_type)
    if isinstance(info, msgspec.inspect.UnionType):
        for member in info.types:
            if isinstance(member, msgspec.inspect.StructType):
                return member.cls
    if isinstance(info, msgspec.inspect.StructType):
        return info.cls
    return None


def _is_container(field_type: Any) -> bool:
    """Lists and tables are given as JSON in environment variables; strings never are."""
    info = msgspec.inspect.type_info(field_type)
    members = info.types if isinstance(info, msgspec.inspect.UnionType) else (info,)
    return any(isinstance(m, msgspec.inspect.ListType | msgspec.inspect.DictType
                          | msgspec.inspect.StructType) for m in members)


def _env_value(value: str, field_type: Any, name: str, key: str) -> Any:
    raw: Any = value
    if _is_container(field_type) and value.lstrip().startswith(("[", "{")):
        try:
            raw = msgspec.json.decode(value)
        except msgspec.DecodeError:
            raw = value
    try:
        raw = choices.fold_choices(units.parse_units(raw, field_type, key), field_type, key)
        return msgspec.convert(raw, field_type, strict=False)
    except (units.UnitError, choices.ChoiceError) as exc:
        raise ConfigError(str(exc), source=f"environment variable {name}", key=exc.key) from None
    except msgspec.ValidationError as exc:
        text = explain_validation(str(exc))[2]
        raise ConfigError(text, source=f"environment variable {name}", key=key) from None
