"""Human-friendly durations and sizes in the configuration, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import load_config
from sidecar.core.units import format_duration, parse_duration, parse_size
from sidecar.errors import ConfigError


@pytest.mark.parametrize(("text", "seconds"), [
    (30, 30.0), (1.5, 1.5), ("30", 30.0), ("500ms", 0.5), ("90s", 90.0), ("5m", 300.0),
    ("1h30m", 5400.0), ("1h 30m", 5400.0), ("30d", 2_592_000.0), ("2w", 1_209_600.0),
    ("forever", 0.0), ("OFF", 0.0), ("0", 0.0),
])
def test_durations(text: object, seconds: float) -> None:
    """Numbers are seconds; strings take ms, s, m, h, d, w (combinable); forever/off are 0."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30x", "d", "1h junk", "-5", "-5s", "", "1.2.3s", True, [1]])
def test_bad_durations(text: object) -> None:
    """Anything else is refused with a message showing an example."""
    with pytest.raises((ValueError, TypeError)):
        parse_duration(text)


@pytest.mark.parametrize(("text", "size"), [
    (1048576, 1048576), ("512MiB", 512 * 1024**2), ("2GB", 2 * 10**9), ("1.5GiB", 3 * 1024**3 // 2),
    ("64k", 65536), ("100 B", 100), ("off", 0),
])
def test_sizes(text: object, size: int) -> None:
    """Numbers are bytes; KiB/MiB/GiB (and k/M/G) are binary, KB/MB/GB decimal."""
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["12 parsecs", "MiB", "-1", "1e3", False])
def test_bad_sizes(text: object) -> None:
    """Unknown units, negative numbers and booleans are refused."""
    with pytest.raises((ValueError, TypeError)):
        parse_size(text)


def test_format_duration() -> None:
    """Messages show durations the way users write them."""
    assert [format_duration(s) for s in (0, 7 * 86400, 30 * 86400, 5400, 90)] == \
        ["forever", "1w", "30d", "90m", "90s"]


def test_config_file_error_names_the_key(tmp_path: Path) -> None:
    """A bad value inside [[retention.rules]] names file, rule index and key."""
    path = tmp_path / "c.toml"
    path.write_text('[retention]\nmax_age = "30d"\n'
                    'rules = [{ type = "a.*", max_age = "7d" }, { type = "b", max_age = "soon" }]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.key == "retention.rules[1].max_age"
    assert str(path) in str(info.value) and "invalid duration 'soon'" in str(info.value)


def test_environment_error_names_the_variable() -> None:
    """A bad size in an environment variable names the variable and the key."""
    with pytest.raises(ConfigError) as info:
        load_config(environ={"KAIRO_SIDECAR_DATABASE__JOURNAL_SIZE_LIMIT": "12 parsecs"})
    assert info.value.key == "database.journal_size_limit"
    assert "KAIRO_SIDECAR_DATABASE__JOURNAL_SIZE_LIMIT" in str(info.value)


def test_values_become_numbers() -> None:
    """The decoded Config holds plain numbers, from the file or the environment."""
    config = load_config(environ={
        "KAIRO_SIDECAR_RETENTION__MAX_AGE": "30d", "KAIRO_SIDECAR_RETENTION__MAX_DB_BYTES": "2GiB",
        "KAIRO_SIDECAR_RETENTION__RULES": '[{"type": "kairo.sensor.*", "max_age": "7d"},'
                                         ' {"type": "kairo.audit.*", "max_age": "forever"}]'})
    r = config.retention
    assert (r.max_age, r.max_db_bytes) == (2_592_000.0, 2 * 1024**3)
    assert [(rule.type, rule.max_age) for rule in r.rules] == [("kairo.sensor.*", 604_800.0),
                                                               ("kairo.audit.*", 0.0)]
