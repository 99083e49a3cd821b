"""The benchmark harness runs end to end in smoke mode and writes well-formed results (no timing
is checked: the numbers of a smoke run mean nothing; this only keeps bench/ from rotting)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from bench.__main__ import SCENARIOS
from tests.conftest import ROOT


def test_bench_smoke_run_writes_json_and_markdown(tmp_path: Path) -> None:
    """`python -m bench run --smoke` runs every scenario, exits 0, and leaves a JSON file with
    machine, runs, medians, ratios and targets per scenario, plus the Markdown table."""
    out = tmp_path / "results"
    result = subprocess.run([sys.executable, "-m", "bench", "run", "--smoke", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((out / "latest-smoke.json").read_text())
    assert data["size"] == "smoke" and data["command"].startswith("python -m bench run")
    assert {"cpu", "cores", "python", "sqlite", "mosquitto"} <= data["machine"].keys()
    assert list(data["scenarios"]) == list(SCENARIOS)
    for key, scenario in data["scenarios"].items():
        assert scenario["error"] is None, (key, scenario["error"])
        assert scenario["runs"] and scenario["medians"] and scenario["table"], key
        for variant, medians in scenario["medians"].items():
            assert all(isinstance(v, int | float) for v in medians.values()), (key, variant)
        for target in scenario["targets"]:
            assert target["op"] in (">=", "<=") and isinstance(target["limit"], int | float)
            assert target["met"] in (True, False, None)
            assert target["value"] is None or math.isfinite(target["value"]), (key, target)
    assert "ratio / baseline" in (out / "latest-smoke.md").read_text()
    assert {"drain", "live", "latency", "soak", "queries", "cold", "storage", "sync"} == set(SCENARIOS)
    assert "sidecar / receive-only" in data["scenarios"]["drain"]["ratios"]
