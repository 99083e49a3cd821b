"""The projection rules: key templates, values, ownership, and their config errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import load_config
from sidecar.core.projections import Projection, ProjectionError
from sidecar.errors import ConfigError


def test_key_renders_placeholders_and_checks_the_key_rules() -> None:
    """{payload.x}, {source} and {type} render; a missing, non-scalar or key-breaking value is
    a ValueError in our words, never a crash."""
    rule = Projection("p", "kairo.plugin.*", "plugin/{source}/{payload.name}/{payload.n}")
    assert rule.key_of("kairo.plugin.state", "app", {"name": "w", "n": 3}) == "plugin/app/w/3"
    assert rule.matches("kairo.plugin.state") and not rule.matches("kairo.plugins")
    with pytest.raises(ValueError, match=r"payload\.name is missing"):
        rule.key_of("t", "app", {"n": 1})
    with pytest.raises(ValueError, match="not a string or an integer"):
        rule.key_of("t", "app", {"name": {"a": 1}, "n": 1})
    with pytest.raises(ValueError, match="must not contain '#'"):
        rule.key_of("t", "app", {"name": "a#b", "n": 1})
    with pytest.raises(ValueError, match="at most 256"):
        rule.key_of("t", "app", {"name": "x" * 300, "n": 1})


def test_values_set_path_and_shallow_merge() -> None:
    """set stores the payload (or the value path), merge overlays the payload's fields on the
    stored object (a stored non-object is replaced)."""
    assert Projection("a", "t", "a/{type}").value_of({"x": 1}, '{"x":1}', None) == '{"x":1}'
    path = Projection("b", "t", "b/x", value="payload.state")
    assert path.value_of({"state": [1]}, "", None) == "[1]"
    with pytest.raises(ValueError, match=r"payload\.state is missing"):
        path.value_of({}, "{}", None)
    merge = Projection("c", "t", "c/x", mode="merge")
    assert merge.value_of({"b": 2, "a": 0}, "", '{"a":1,"c":3}') == '{"a":0,"c":3,"b":2}'
    assert merge.value_of({"b": 2}, "", "[1]") == '{"b":2}'
    with pytest.raises(ValueError, match="not an object"):
        merge.value_of([1], "[1]", None)


@pytest.mark.parametrize(("key", "field"), [
    ("{payload.name}", "key"),            # no static prefix: would own every key
    ("plugin/{payload.}", "key"),
    ("plugin/{nope}", "key"),
    ("plugin/{payload.a", "key"),
    ("plugin#/{payload.a}", "key"),
])
def test_bad_templates_name_the_field(key: str, field: str) -> None:
    """A template without a static prefix, with a bad placeholder or a bad key is refused."""
    with pytest.raises(ProjectionError) as caught:
        Projection("p", "t", key)
    assert caught.value.field == field


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(body)
    return path


def test_config_errors_name_projections_index_and_field(tmp_path: Path) -> None:
    """[[projections]] errors name projections[i].<field>: a bad mode, a value with merge,
    overlapping prefixes, a name used twice."""
    rule = '[[projections]]\nname = "{name}"\ntype = "t.*"\nkey = "{key}"\n'
    cases = [
        (rule.format(name="a", key="a/{payload.x}") + 'mode = "fold"\n', "projections[0].mode"),
        (rule.format(name="a", key="a/{payload.x}") + 'mode = "merge"\nvalue = "payload.y"\n',
         "projections[0].value"),
        (rule.format(name="a", key="plugin/{payload.x}") + rule.format(name="b", key="plug{payload.y}"),
         "projections[1].key"),
        (rule.format(name="a", key="a/{payload.x}") + rule.format(name="a", key="b/{payload.y}"),
         "projections[1].name"),
        (rule.format(name="a", key="a/{payload.x}").replace('type = "t.*"', 'type = "t[0]"'),
         "projections[0].type"),
    ]
    for body, key in cases:
        with pytest.raises(ConfigError) as caught:
            load_config(_config(tmp_path, body), environ={})
        assert caught.value.key == key, (body, caught.value)
    ok = load_config(_config(tmp_path, rule.format(name="a", key="a/{payload.x}")), environ={})
    assert ok.projections[0].mode == "set"
