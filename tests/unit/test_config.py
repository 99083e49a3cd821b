"""Unit tests of sidecar.config: TOML file, KAIRO_SIDECAR_* overlay, defaults, and the CLI.

Pure: config files live in tmp_path, the environment is always passed as ``environ=`` (os.environ
is never touched), and the CLI runs as a subprocess with a scrubbed environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import msgspec
import pytest

from sidecar.config import (
    ApiConfig,
    Config,
    DatabaseConfig,
    HomeAssistantConfig,
    HttpConfig,
    IndexesConfig,
    IngestConfig,
    KvConfig,
    LogConfig,
    MQTTConfig,
    RetentionConfig,
    SearchConfig,
    TLSConfig,
    WriterConfig,
    default_database_url,
    load_config,
)
from sidecar.core.units import parse_units
from sidecar.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "sidecar.toml"
DEFAULT_URL = "sqlite:///data/kairo.db"

SECTIONS: dict[str, type[msgspec.Struct]] = {
    "mqtt": MQTTConfig, "database": DatabaseConfig, "writer": WriterConfig,
    "ingest": IngestConfig, "log": LogConfig, "api": ApiConfig, "retention": RetentionConfig,
    "indexes": IndexesConfig, "search": SearchConfig,
    "kv": KvConfig, "http": HttpConfig, "homeassistant": HomeAssistantConfig,
}
# Keys the shipped example only documents in comments (their default is "none"/"derived").
COMMENTED_OUT = {"mqtt.username", "mqtt.password", "mqtt.tls", "mqtt.shared_group", "database.url",
                 "database.password", "database.key_file", "database.key", "http.token",
                 "search.paths"}


def write(tmp_path: Path, text: str, name: str = "sidecar.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(path: Path | None, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={} if environ is None else environ)
    return info.value


# ------------------------------------------------------------------------------------ defaults
def test_defaults_without_file() -> None:
    """No file and an empty environment give the documented built-in defaults."""
    config = load_config(environ={})
    assert config.mqtt.host == "127.0.0.1"
    assert config.mqtt.port == 1883
    assert config.mqtt.client_id == "kairo-sidecar"
    assert config.mqtt.topics == ["kairo/#"]
    assert config.mqtt.qos == 1
    assert config.mqtt.protocol == "5"
    assert config.mqtt.username is None and config.mqtt.password is None
    assert config.mqtt.tls is None
    assert config.mqtt.session_expiry == 7 * 24 * 3600
    assert config.database.synchronous == "NORMAL"  # the issue-2 contract: NORMAL default
    assert config.database.migrate_on_start is True
    assert config.writer.batch_size == 500
    assert config.ingest.max_payload_bytes == 262144
    assert config.ingest.dead_letter_max_bytes == 65536
    assert config.log == LogConfig(level="info", format="auto")


def test_default_database_url_without_state_directory() -> None:
    """Without STATE_DIRECTORY the database defaults to sqlite:///data/kairo.db."""
    assert load_config(environ={}).database.url == DEFAULT_URL


@pytest.mark.parametrize(
    ("state_directory", "expected"),
    [
        ("/var/lib/kairo-sidecar", "sqlite:////var/lib/kairo-sidecar/kairo.db"),
        ("/var/lib/first:/var/lib/second", "sqlite:////var/lib/first/kairo.db"),
        ("", DEFAULT_URL),
    ],
)
def test_default_database_url_under_systemd(state_directory: str, expected: str) -> None:
    """STATE_DIRECTORY in the passed environ (first entry of a list) moves the default DB."""
    environ = {"STATE_DIRECTORY": state_directory}
    assert load_config(environ=environ).database.url == expected
    assert default_database_url(environ) == expected


def test_explicit_database_url_wins_over_state_directory(tmp_path: Path) -> None:
    """A database.url in the file is kept as is even when STATE_DIRECTORY is set."""
    path = write(tmp_path, '[database]\nurl = "sqlite:////srv/k.db"\n')
    config = load_config(path, environ={"STATE_DIRECTORY": "/var/lib/kairo-sidecar"})
    assert config.database.url == "sqlite:////srv/k.db"


def test_load_config_ignores_unrelated_environment() -> None:
    """Variables without the KAIRO_SIDECAR_ prefix (or in lower case) are not keys."""
    environ = {"PATH": "/bin", "KAIRO_OTHER": "x", "kairo_sidecar_mqtt__port": "1"}
    assert load_config(environ=environ) == load_config(environ={})


def test_kairo_sidecar_config_names_the_file(tmp_path: Path) -> None:
    """KAIRO_SIDECAR_CONFIG names the config file when no path is given; a missing one fails."""
    path = tmp_path / "c.toml"
    path.write_text("[mqtt]\nport = 1999\n")
    assert load_config(environ={"KAIRO_SIDECAR_CONFIG": str(path)}).mqtt.port == 1999
    with pytest.raises(ConfigError, match="file not found"):
        load_config(environ={"KAIRO_SIDECAR_CONFIG": str(tmp_path / "missing.toml")})


def test_reconnect_min_delay_above_max_is_refused() -> None:
    """reconnect_min_delay larger than reconnect_max_delay names the key."""
    with pytest.raises(ConfigError, match=r"mqtt\.reconnect_min_delay"):
        load_config(environ={"KAIRO_SIDECAR_MQTT__RECONNECT_MIN_DELAY": "100"})


# ------------------------------------------------------------------------------ shipped example
def test_example_file_decodes_to_the_defaults() -> None:
    """config/sidecar.toml decodes to exactly the built-in defaults (database.url derived)."""
    assert load_config(EXAMPLE, environ={}) == load_config(environ={})
    assert load_config(EXAMPLE, environ={}).database.url == DEFAULT_URL


def test_example_file_lists_every_key_with_its_default() -> None:
    """Every key in config/sidecar.toml equals its default and every field is documented."""
    data = tomllib.loads(EXAMPLE.read_text())
    assert set(data) == set(SECTIONS)
    seen: set[str] = set()
    for section, struct in SECTIONS.items():
        default = struct()
        for key, value in data[section].items():
            decoded = getattr(msgspec.convert(parse_units({key: value}, struct), struct), key)
            assert getattr(default, key) == decoded, f"{section}.{key}"
            seen.add(f"{section}.{key}")
    every = {f"{s}.{f.name}" for s, st in SECTIONS.items() for f in msgspec.structs.fields(st)}
    assert every - seen == COMMENTED_OUT
    assert seen <= every


# ------------------------------------------------------------------------------ file: good values
def test_file_values_are_used(tmp_path: Path) -> None:
    """Keys set in the file, including [mqtt.tls], override the defaults; the rest stay."""
    path = write(tmp_path, """
[mqtt]
host = "broker.example"
port = 8883
topics = ["a/#", "b/+"]
protocol = "3.1.1"

[mqtt.tls]
ca = "/etc/ssl/ca.pem"

[writer]
flush_interval = 2
""")
    config = load_config(path, environ={})
    assert config.mqtt.host == "broker.example"
    assert config.mqtt.port == 8883
    assert config.mqtt.topics == ["a/#", "b/+"]
    assert config.mqtt.protocol == "3.1.1"
    assert config.mqtt.tls == TLSConfig(ca="/etc/ssl/ca.pem")
    assert config.writer.flush_interval == 2.0
    assert config.mqtt.client_id == "kairo-sidecar"
    assert config.database == load_config(environ={}).database


def test_config_is_immutable() -> None:
    """Config sections are frozen: assigning a field raises."""
    config = load_config(environ={})
    with pytest.raises(AttributeError):
        config.mqtt.port = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- file: bad contents
@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[mqtt]\nprot = 1\n", "mqtt.prot"),
        ("[mqttx]\nport = 1\n", "mqttx"),
        ("toplevel = 1\n", "toplevel"),
        ("[mqtt.tls]\ncaa = '/ca.pem'\n", "mqtt.tls.caa"),
        ("[database]\nurl = 'x'\nsynchronus = 'FULL'\n", "database.synchronus"),
        ("[log]\nlevel = 'info'\ncolour = true\n", "log.colour"),
    ],
    ids=["key", "section", "top-level", "tls-key", "database-key", "log-key"],
)
def test_unknown_key_in_file_names_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    """An unknown key or section in the file is a ConfigError naming the file and dotted key."""
    path = write(tmp_path, text)
    error = config_error(path)
    assert error.source == str(path)
    assert error.key == key
    assert str(path) in str(error)
    assert key in str(error)
    assert "unknown key" in str(error)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[mqtt]\nport = "x"\n', "mqtt.port"),
        ("[mqtt]\nport = 0\n", "mqtt.port"),
        ("[mqtt]\nport = 65536\n", "mqtt.port"),
        ("[mqtt]\nport = 1.5\n", "mqtt.port"),
        ("[mqtt]\nport = true\n", "mqtt.port"),
        ('[mqtt]\ntopics = "kairo/#"\n', "mqtt.topics"),
        ("[mqtt]\ntopics = []\n", "mqtt.topics"),
        ("[mqtt]\nqos = 2\n", "mqtt.qos"),
        ('[mqtt]\nprotocol = "4"\n', "mqtt.protocol"),
        ("[mqtt]\nprotocol = 5\n", "mqtt.protocol"),
        ("[mqtt]\nkeepalive = 1\n", "mqtt.keepalive"),
        ("[mqtt]\nreconnect_min_delay = 0\n", "mqtt.reconnect_min_delay"),
        ("[mqtt]\ntls = true\n", "mqtt.tls"),
        ('[mqtt.tls]\ninsecure = "no"\n', "mqtt.tls.insecure"),
        ("[writer]\nbatch_size = 0\n", "writer.batch_size"),
        ("[writer]\nflush_interval = 61\n", "writer.flush_interval"),
        ('[database]\nsynchronous = "fast"\n', "database.synchronous"),
        ("[database]\nbusy_timeout_ms = -1\n", "database.busy_timeout_ms"),
        ("[ingest]\nmax_payload_bytes = 0\n", "ingest.max_payload_bytes"),
        ('[log]\nlevel = "loud"\n', "log.level"),
        ("mqtt = 3\n", "mqtt"),
    ],
)
def test_wrong_type_in_file_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    """A value of the wrong type or out of range is a ConfigError naming the file and key."""
    path = write(tmp_path, text)
    error = config_error(path)
    assert error.key == key
    assert error.source == str(path)
    assert f"{path}: {key}: " in str(error)


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("writer", "flush_interval", '"200ms"', 0.2),
        ("writer", "flush_interval", "0.5", 0.5),
        ("writer", "shutdown_timeout", '"1m"', 60.0),
        ("database", "sync_interval", '"2s"', 2.0),
        ("mqtt", "reconnect_max_delay", '"1m30s"', 90.0),
        ("api", "max_duration", '"2h"', 7200.0),
        ("kv", "max_value_bytes", '"1MiB"', 1048576),
        ("ingest", "max_payload_bytes", '"512KiB"', 524288),
        ("api", "max_request_bytes", "4096", 4096),
    ],
)
def test_every_time_and_size_key_takes_a_unit(tmp_path: Path, section: str, key: str,
                                               value: str, expected: float) -> None:
    """Keys in seconds take a number or a duration with a unit, like checkpoint_interval; keys
    in bytes a number or a size, like journal_size_limit."""
    config = load_config(write(tmp_path, f"[{section}]\n{key} = {value}\n"), environ={})
    assert getattr(getattr(config, section), key) == expected


@pytest.mark.parametrize(("value", "words"), [('"forever"', "greater than 0"),
                                             ('"90s"', "at most 60"),
                                             ('"soon"', "invalid duration")])
def test_a_bad_duration_in_seconds_names_the_key(tmp_path: Path, value: str, words: str) -> None:
    """A duration out of a seconds key's bounds, or unreadable, names the key and says why."""
    error = config_error(write(tmp_path, f"[writer]\nflush_interval = {value}\n"))
    assert error.key == "writer.flush_interval"
    assert words in str(error)


def test_wrong_list_item_names_the_index(tmp_path: Path) -> None:
    """A bad item inside topics is reported with its index (mqtt.topics[1])."""
    path = write(tmp_path, '[mqtt]\ntopics = ["a/#", 3]\n')
    assert config_error(path).key == "mqtt.topics[1]"


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    """A file that is not TOML is a ConfigError naming the file and saying so."""
    path = write(tmp_path, "[mqtt\nport = 1883\n")
    error = config_error(path)
    assert error.source == str(path)
    assert error.key is None
    assert str(error).startswith(f"{path}: ")
    assert "not valid TOML" in str(error)


def test_missing_file(tmp_path: Path) -> None:
    """A config path that does not exist is a ConfigError naming the file."""
    path = tmp_path / "nope.toml"
    error = config_error(path)
    assert error.source == str(path)
    assert "file not found" in str(error)


def test_directory_as_config_file(tmp_path: Path) -> None:
    """A path that cannot be read as a file is a ConfigError (not an OSError)."""
    error = config_error(tmp_path)
    assert error.source == str(tmp_path)
    assert "cannot read" in str(error)


def test_file_error_is_reported_even_if_env_would_fix_it(tmp_path: Path) -> None:
    """The file alone must be valid: a bad key there is blamed on the file, not the env."""
    path = write(tmp_path, '[mqtt]\nport = "x"\n')
    error = config_error(path, {"KAIRO_SIDECAR_MQTT__PORT": "1884"})
    assert error.source == str(path)
    assert error.key == "mqtt.port"


# ---------------------------------------------------------------------------- environment overlay
def test_env_overrides_port() -> None:
    """KAIRO_SIDECAR_MQTT__PORT=1884 sets mqtt.port to the int 1884."""
    config = load_config(environ={"KAIRO_SIDECAR_MQTT__PORT": "1884"})
    assert config.mqtt.port == 1884
    assert config.mqtt.host == "127.0.0.1"


def test_env_list_as_json() -> None:
    """A list-typed key takes a JSON array from the environment."""
    config = load_config(environ={"KAIRO_SIDECAR_MQTT__TOPICS": '["a/#","b/#"]'})
    assert config.mqtt.topics == ["a/#", "b/#"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("false", False), ("1", True), ("0", False), ("True", True)],
)
def test_env_bool(value: str, expected: bool) -> None:
    """Booleans are read from true/false/1/0 in the environment."""
    config = load_config(environ={"KAIRO_SIDECAR_DATABASE__MIGRATE_ON_START": value})
    assert config.database.migrate_on_start is expected


@pytest.mark.parametrize(("value", "expected"), [("2.5", 2.5), ("3", 3.0), ("1e1", 10.0)])
def test_env_float(value: str, expected: float) -> None:
    """Floats are read from the environment, ints and exponents included."""
    config = load_config(environ={"KAIRO_SIDECAR_WRITER__FLUSH_INTERVAL": value})
    assert config.writer.flush_interval == expected
    assert isinstance(config.writer.flush_interval, float)


@pytest.mark.parametrize(
    ("name", "value", "section", "key", "expected"),
    [
        ("KAIRO_SIDECAR_MQTT__PROTOCOL", "3.1.1", "mqtt", "protocol", "3.1.1"),
        ("KAIRO_SIDECAR_MQTT__USERNAME", "123", "mqtt", "username", "123"),
        ("KAIRO_SIDECAR_MQTT__PASSWORD", "[secret", "mqtt", "password", "[secret"),
        ("KAIRO_SIDECAR_DATABASE__SYNCHRONOUS", "FULL", "database", "synchronous", "FULL"),
        ("KAIRO_SIDECAR_DATABASE__URL", "sqlite:////x.db", "database", "url", "sqlite:////x.db"),
        ("KAIRO_SIDECAR_LOG__LEVEL", "debug", "log", "level", "debug"),
        ("KAIRO_SIDECAR_INGEST__MAX_PAYLOAD_BYTES", "1024", "ingest", "max_payload_bytes", 1024),
        ("KAIRO_SIDECAR_mqtt__port", "1885", "mqtt", "port", 1885),
    ],
)
def test_env_scalar_keys(name: str, value: str, section: str, key: str, expected: object) -> None:
    """Strings, enums and ints of every section are set from their variables (any case)."""
    config = load_config(environ={name: value})
    assert getattr(getattr(config, section), key) == expected


def test_env_nested_tls() -> None:
    """KAIRO_SIDECAR_MQTT__TLS__CA turns TLS on with that CA and default other TLS keys."""
    config = load_config(environ={"KAIRO_SIDECAR_MQTT__TLS__CA": "/etc/ssl/ca.pem",
                                  "KAIRO_SIDECAR_MQTT__TLS__INSECURE": "true"})
    assert config.mqtt.tls == TLSConfig(ca="/etc/ssl/ca.pem", insecure=True)


def test_env_overrides_file(tmp_path: Path) -> None:
    """Environment variables win over the file; file keys not overridden are kept."""
    path = write(tmp_path, """
[mqtt]
host = "broker.example"
port = 1885

[mqtt.tls]
cert = "/etc/kairo/client.pem"
""")
    config = load_config(path, environ={"KAIRO_SIDECAR_MQTT__PORT": "1884",
                                        "KAIRO_SIDECAR_MQTT__TLS__CA": "/ca.pem"})
    assert config.mqtt.port == 1884
    assert config.mqtt.host == "broker.example"
    assert config.mqtt.tls == TLSConfig(ca="/ca.pem", cert="/etc/kairo/client.pem")


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("KAIRO_SIDECAR_MQTT__PROT", "mqtt.prot"),
        ("KAIRO_SIDECAR_MQTTX__PORT", "mqttx"),
        ("KAIRO_SIDECAR_MQTT__TLS__CAA", "mqtt.tls.caa"),
        ("KAIRO_SIDECAR_MQTT__PORT__X", "mqtt.port.x"),
        ("KAIRO_SIDECAR_MQTT___PORT", "mqtt._port"),
    ],
    ids=["key", "section", "tls-key", "below-scalar", "triple-underscore"],
)
def test_env_unknown_key_names_the_variable(name: str, key: str) -> None:
    """An env variable naming an unknown key or section is an error naming the variable."""
    error = config_error(None, {name: "1"})
    assert error.source == f"environment variable {name}"
    assert error.key == key
    assert name in str(error)
    assert "unknown key" in str(error)


@pytest.mark.parametrize(("name", "key"), [("KAIRO_SIDECAR_MQTT", "mqtt"),
                                           ("KAIRO_SIDECAR_MQTT__TLS", "mqtt.tls")])
def test_env_setting_a_whole_section_is_an_error(name: str, key: str) -> None:
    """An env variable naming a section (not a key) is an error naming the variable."""
    error = config_error(None, {name: "x"})
    assert error.source == f"environment variable {name}"
    assert error.key == key
    assert "section" in str(error)


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("KAIRO_SIDECAR_MQTT__PORT", "x", "mqtt.port"),
        ("KAIRO_SIDECAR_MQTT__PORT", "0", "mqtt.port"),
        ("KAIRO_SIDECAR_MQTT__PORT", "70000", "mqtt.port"),
        ("KAIRO_SIDECAR_MQTT__TOPICS", "kairo/#", "mqtt.topics"),
        ("KAIRO_SIDECAR_MQTT__TOPICS", "[1]", "mqtt.topics"),
        ("KAIRO_SIDECAR_MQTT__TOPICS", "[]", "mqtt.topics"),
        ("KAIRO_SIDECAR_MQTT__TOPICS", '["a/#"', "mqtt.topics"),
        ("KAIRO_SIDECAR_MQTT__PROTOCOL", "4", "mqtt.protocol"),
        ("KAIRO_SIDECAR_MQTT__TLS__INSECURE", "maybe", "mqtt.tls.insecure"),
        ("KAIRO_SIDECAR_DATABASE__SYNCHRONOUS", "fast", "database.synchronous"),
        ("KAIRO_SIDECAR_DATABASE__MIGRATE_ON_START", "yes", "database.migrate_on_start"),
        ("KAIRO_SIDECAR_WRITER__BATCH_SIZE", "0", "writer.batch_size"),
        ("KAIRO_SIDECAR_WRITER__FLUSH_INTERVAL", "nan", "writer.flush_interval"),
        ("KAIRO_SIDECAR_LOG__LEVEL", "loud", "log.level"),
    ],
)
def test_env_bad_value_names_variable_and_key(name: str, value: str, key: str) -> None:
    """A bad env value is a ConfigError naming the variable and the dotted key."""
    error = config_error(None, {name: value})
    assert error.source == f"environment variable {name}"
    assert error.key == key
    assert str(error).startswith(f"environment variable {name}: {key}: ")


@pytest.mark.parametrize("value", ["[1]", '{"a":1}', '["x"]'])
def test_env_string_key_taken_literally_even_if_json(value: str) -> None:
    """A str-typed key (mqtt.password) takes the env value verbatim even if it parses as JSON."""
    config = load_config(environ={"KAIRO_SIDECAR_MQTT__PASSWORD": value})
    assert config.mqtt.password == value


# ------------------------------------------------------------------------------------------- CLI
def _cli_env() -> dict[str, str]:
    """os.environ without any KAIRO_SIDECAR_* or STATE_DIRECTORY (copied, never mutated)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("KAIRO_SIDECAR_") and k != "STATE_DIRECTORY"}


def _run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], cwd=cwd,
                          env=_cli_env() if env is None else env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_cli_config_bad_file_exits_2_naming_key_and_file(tmp_path: Path) -> None:
    """`python -m sidecar config --config BAD.toml` exits 2 with the key and file on stderr."""
    path = write(tmp_path, "[mqtt]\nprot = 1\n", name="BAD.toml")
    result = _run_cli("config", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "mqtt.prot" in result.stderr
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_config_missing_file_exits_2(tmp_path: Path) -> None:
    """`config --config` with a missing file exits 2 and names the file on stderr."""
    path = tmp_path / "missing.toml"
    result = _run_cli("config", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_config_bad_env_exits_2_naming_variable(tmp_path: Path) -> None:
    """A bad KAIRO_SIDECAR_* variable makes `config` exit 2 naming the variable on stderr."""
    env = {**_cli_env(), "KAIRO_SIDECAR_MQTT__PORT": "x"}
    result = _run_cli("config", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "KAIRO_SIDECAR_MQTT__PORT" in result.stderr
    assert "mqtt.port" in result.stderr


def test_cli_config_defaults_prints_json(tmp_path: Path) -> None:
    """`python -m sidecar config` exits 0 and prints the effective defaults as JSON."""
    result = _run_cli("config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed == msgspec.to_builtins(load_config(environ=_cli_env()))
    assert printed["database"]["url"] == DEFAULT_URL
    assert msgspec.convert(printed, Config) == load_config(environ={})


def test_cli_config_masks_password(tmp_path: Path) -> None:
    """`config` never prints the broker password, only ***."""
    env = {**_cli_env(), "KAIRO_SIDECAR_MQTT__PASSWORD": "hunter2-secret"}
    result = _run_cli("config", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "hunter2-secret" not in result.stdout
    assert json.loads(result.stdout)["mqtt"]["password"] == "***"


def test_durability_defaults_to_group_commit_on_normal() -> None:
    """The default acks only durable events: group commit over synchronous NORMAL, 1 s."""
    database = load_config(environ={}).database
    assert database.durability == "group" and database.effective_durability == "group"
    assert database.effective_synchronous == "NORMAL" and database.sync_interval == 1.0


@pytest.mark.parametrize(("durability", "synchronous", "effective", "pragma"), [
    ("full", "NORMAL", "full", "FULL"),
    ("full", "EXTRA", "full", "EXTRA"),
    ("group", "FULL", "full", "FULL"),  # a config from before durability keeps its FULL
    ("none", "NORMAL", "none", "NORMAL"),
    ("none", "OFF", "none", "OFF"),
])
def test_durability_and_synchronous_combine(tmp_path: Path, durability: str, synchronous: str,
                                            effective: str, pragma: str) -> None:
    """durability decides the acks; synchronous the pragma; full raises NORMAL to FULL."""
    path = tmp_path / "c.toml"
    path.write_text(f'[database]\ndurability = "{durability}"\nsynchronous = "{synchronous}"\n')
    database = load_config(path, environ={}).database
    assert (database.effective_durability, database.effective_synchronous) == (effective, pragma)


@pytest.mark.parametrize("durability", ["group", "full"])
def test_synchronous_off_with_durable_acks_is_refused(tmp_path: Path, durability: str) -> None:
    """OFF never syncs, so durable acks on it are refused, naming database.synchronous."""
    path = tmp_path / "c.toml"
    path.write_text(f'[database]\ndurability = "{durability}"\nsynchronous = "OFF"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.key == "database.synchronous"


@pytest.mark.parametrize("url", ["sqlite:///kairo.db", "postgresql://kairo@db/kairo"])
def test_indexes_and_keep_latest_paths_are_read(tmp_path: Path, url: str) -> None:
    """``[indexes] paths``, a rule's ``keep_latest`` and ``[[projections]]`` come through as
    written, on either engine (PostgreSQL refused them before)."""
    path = tmp_path / "sidecar.toml"
    path.write_text(f'[database]\nurl = "{url}"\n'
                    '[indexes]\npaths = ["payload.fingerprint", "metadata.a[0]"]\n'
                    '[retention]\nrules = [{ type = "kairo.plugin.*", max_age = "7d", '
                    'keep_latest = "payload.name" }]\n'
                    '[[projections]]\nname = "plugins"\ntype = "kairo.plugin.*"\n'
                    'key = "plugin/{payload.name}"\n')
    config = load_config(path, environ={})
    assert config.indexes.paths == ["payload.fingerprint", "metadata.a[0]"]
    assert config.retention.rules[0].keep_latest == "payload.name"
    assert [p.name for p in config.projections] == ["plugins"]


def test_search_section_is_read(tmp_path: Path) -> None:
    """``[search]`` with a ``[[search.paths]]`` rule comes through as written."""
    path = write(tmp_path, '[search]\nenabled = true\ntokenizer = "trigram"\n'
                 '[[search.paths]]\ntype = "kairo.alert.*"\npaths = ["payload.message"]\n')
    config = load_config(path, environ={})
    assert config.search.enabled and config.search.tokenizer == "trigram"
    assert config.search.paths[0].paths == ["payload.message"]


def test_search_on_postgresql_is_accepted(tmp_path: Path) -> None:
    """``[search] enabled = true`` with a postgresql:// URL loads (the GIN index, ``simple``)."""
    config = load_config(write(tmp_path, '[search]\nenabled = true\n'),
                         environ={"KAIRO_SIDECAR_DATABASE__URL": "postgresql://h/db"})
    assert config.search.enabled


@pytest.mark.parametrize(("text", "environ", "key", "words"), [
    ('[search]\ntokenizer = "porter"\n', {}, "search.tokenizer", "unicode61"),
    ('[search]\nfields = ["type", "type"]\n', {}, "search.fields", "listed twice"),
    ('[search]\nfields = ["body"]\n', {}, "search.fields[0]", "allowed values"),
    ('[[search.paths]]\ntype = "a.*"\npaths = ["message"]\n', {}, "search.paths[0].paths[0]",
     "'message'"),
    ('[search]\nfields = ["type"]\n[[search.paths]]\ntype = "a"\npaths = ["payload.m"]\n', {},
     "search.paths[0]", "add \"payload\""),
    ('[search]\nenabled = true\ntokenizer = "trigram"\n',
     {"KAIRO_SIDECAR_DATABASE__URL": "postgresql://h/db"}, "search.tokenizer", "'simple'"),
    ('[search]\nenabled = true\n[[search.paths]]\ntype = "a"\npaths = ["payload.m"]\n',
     {"KAIRO_SIDECAR_DATABASE__URL": "postgresql://h/db"}, "search.paths", "not supported"),
])
def test_bad_search_config_names_the_key(tmp_path: Path, text: str, environ: dict[str, str],
                                         key: str, words: str) -> None:
    """A bad [search] value is refused naming its key, in our words."""
    error = config_error(write(tmp_path, text), environ)
    assert error.key == key and words in str(error)


@pytest.mark.parametrize(("text", "key", "bad"), [
    ('[indexes]\npaths = ["payload.ok", "name"]\n', "indexes.paths[1]", "'name'"),
    ('[indexes]\npaths = ["payload.a b"]\n', "indexes.paths[0]", "'payload.a b'"),
    ('[indexes]\npaths = ["payload.x", "payload.x"]\n', "indexes.paths[1]", "listed twice"),
    ('[retention]\nrules = [{ type = "a.*", max_age = "1d" }, { type = "b", max_age = "1d", '
     'keep_latest = "payload.$x" }]\n', "retention.rules[1].keep_latest", "'payload.$x'"),
])
def test_bad_index_or_keep_latest_path_names_the_key(tmp_path: Path, text: str, key: str,
                                                      bad: str) -> None:
    """A path outside the grammar is refused naming its key and the bad path."""
    path = tmp_path / "sidecar.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.key == key
    assert bad in str(caught.value)


@pytest.mark.parametrize(("text", "where", "what"), [
    ("[mqtt\nport = 1883\n", "line 1, column 6", "a table header is not closed with ]"),
    ("[mqtt]\nport = \n", "line 2, column 8", "a value is missing or not valid"),
    ("[mqtt]\nport = 1\nport = 2\n", "line 3, column 9", "a key is set twice"),
    ("[mqtt]\n[mqtt]\n", "line 2, column 6", "a table is declared twice"),
    ('[mqtt]\nhost = "x\n', "line 2, column 10", "a string is not closed"),
    ("[mqtt]\nport\n", "line 2, column 5", "a key has no = and value"),
    ("[mqtt]\nport = 1 host = 2\n", "line 2, column 10", "two statements on one line"),
])
def test_toml_syntax_errors_are_told_in_our_words(tmp_path: Path, text: str, where: str,
                                                  what: str) -> None:
    """Each TOML syntax error names the line and column, shows the line, and says what is wrong
    in our words (the tomllib wordings we read are pinned here: a new one fails loudly)."""
    path = write(tmp_path, text)
    message = str(config_error(path))
    assert f"not valid TOML at {where}" in message
    assert what in message
    assert "(at line" not in message  # tomllib's own text is not passed through


def test_shared_group_is_read_with_a_postgresql_url(tmp_path: Path) -> None:
    """``[mqtt] shared_group`` comes through beside a postgresql:// URL."""
    path = tmp_path / "sidecar.toml"
    path.write_text('[mqtt]\nshared_group = "kairo"\n'
                    '[database]\nurl = "postgresql://kairo@db/kairo"\n')
    assert load_config(path, environ={}).mqtt.shared_group == "kairo"


@pytest.mark.parametrize(("text", "key"), [
    ('[mqtt]\nshared_group = "kairo"\n', "mqtt.shared_group"),  # SQLite: one writer
    ('[mqtt]\nshared_group = "a/b"\n[database]\nurl = "postgresql://h/d"\n', "mqtt.shared_group"),
    ('[mqtt]\nshared_group = "k+"\n[database]\nurl = "postgresql://h/d"\n', "mqtt.shared_group"),
    ('[mqtt]\nshared_group = "k"\nsession_expiry = 0\n[database]\nurl = "postgresql://h/d"\n',
     "mqtt.session_expiry"),
])
def test_a_shared_group_that_cannot_work_is_refused(tmp_path: Path, text: str, key: str) -> None:
    """A shared group on SQLite, a name with '/' or a wildcard, or without a persistent
    session is refused, naming the key."""
    path = tmp_path / "sidecar.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.key == key


# ------------------------------------------------------------------------------ [http], [homeassistant]
@pytest.mark.parametrize("listen", ["0.0.0.0:9465", "192.168.1.20:9465", "[::]:9465", "pi.lan:9465"])
def test_http_listen_off_loopback_requires_token(listen: str) -> None:
    """A listener other machines can reach is refused without [http] token, the error naming
    http.token; with a token it is accepted (nothing is bound by loading the config)."""
    env = {"KAIRO_SIDECAR_HTTP__LISTEN": listen}
    with pytest.raises(ConfigError) as err:
        load_config(environ=env)
    assert err.value.key == "http.token"
    config = load_config(environ={**env, "KAIRO_SIDECAR_HTTP__TOKEN": "a-long-enough-token"})
    assert config.http.address is not None and config.http.address[1] == 9465


@pytest.mark.parametrize("listen", ["127.0.0.1:9465", "localhost:9465", "[::1]:9465"])
def test_http_listen_on_loopback_needs_no_token(listen: str) -> None:
    """Loopback binds need no token; off by default (listen = "")."""
    assert load_config(environ={}).http.address is None
    assert load_config(environ={"KAIRO_SIDECAR_HTTP__LISTEN": listen}).http.address is not None


@pytest.mark.parametrize(("key", "value"), [("http__listen", "9465"), ("http__listen", "host:99999"),
                                            ("homeassistant__interval", "1s"),
                                            ("homeassistant__node_id", "has space")])
def test_http_and_homeassistant_errors_name_the_key(key: str, value: str) -> None:
    """A bad listen address, a too short interval or a bad node_id is refused naming the key."""
    with pytest.raises(ConfigError) as err:
        load_config(environ={"KAIRO_SIDECAR_" + key.upper(): value})
    assert err.value.key == key.replace("__", ".")
