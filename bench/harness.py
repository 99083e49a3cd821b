"""The harness: interleaved rounds, medians, ratios against a baseline from the same run,
targets, and the results as JSON and a Markdown table.

A scenario fills a ``Report``: ``add(variant, **metrics)`` once per run of a variant (the runs
of the variants interleave: A B A B ...), ``ratio(...)`` for "variant vs baseline" of the
medians, ``target(...)`` for a goal from issue 5. ``Results`` holds every report and the
machine, and writes ``results.json`` (every run and median) and ``results.md`` (the table).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import sqlite3
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

Number = float | int


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p * len(ordered) / 100)))  # the ceil(p% of n)-th
    return ordered[rank - 1]


def time_calls(fn: Callable[[], object], calls: int) -> list[float]:
    """Call ``fn`` ``calls`` times in a row: how long each call took, in ms, in call order."""
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return times


def time_gets(url: str, calls: int, *, token: str | None = None,
              timeout: float = 60) -> tuple[list[float], int]:
    """GET ``url`` ``calls`` times (``token`` as a Bearer token): each GET's ms (the answer read
    whole, client included) and the size of the last answer in bytes."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(url, headers=headers)
    size = 0

    def get() -> None:
        nonlocal size
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            size = len(answer.read())

    return time_calls(get, calls), size


def interleave(rounds: int, variants: dict[str, Callable[[int], None]]) -> None:
    """Run every variant once per round, rotating the order each round (A B C, B C A, ...),
    so drift and noise on a shared machine hit every variant alike."""
    names = list(variants)
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            variants[name](r)


@dataclass
class Target:
    name: str
    value: float | None
    limit: float
    op: str  # ">=" or "<="
    unit: str = ""
    note: str = ""
    goal: float | None = None  # a stricter aim beside the required ``limit``

    def _meets(self, limit: float | None) -> bool | None:
        if self.value is None or self.value != self.value or limit is None:
            return None
        return self.value >= limit if self.op == ">=" else self.value <= limit

    @property
    def met(self) -> bool | None:
        return self._meets(self.limit)

    @property
    def goal_met(self) -> bool | None:
        return self._meets(self.goal)

    def text(self) -> str:
        """``<= 10x`` (and ``, goal <= 3x``)."""
        def limit(value: float) -> str:
            return f"{self.op} {fmt(value, 2 if value < 10 else 0)}{self.unit}"
        return limit(self.limit) + ("" if self.goal is None else f", goal {limit(self.goal)}")

    def verdict(self) -> str:
        met = {True: "yes", False: "**no**", None: "n/a"}[self.met]
        if self.goal is None:
            return met
        return f"{met}, goal {({True: 'yes', False: '**no**', None: 'n/a'}[self.goal_met])}"


@dataclass
class Report:
    """One scenario's runs, medians, ratios and targets."""

    key: str
    title: str
    description: str
    params: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (metric, value, ratio)
    seconds: float = 0.0
    error: str | None = None

    def add(self, variant: str, **metrics: Any) -> None:
        self.runs.setdefault(variant, []).append(metrics)

    def median(self, variant: str, metric: str) -> float:
        values = [r[metric] for r in self.runs.get(variant, []) if r.get(metric) is not None]
        return statistics.median(values) if values else float("nan")

    def ratio(self, name: str, numerator: float, denominator: float) -> float:
        value = numerator / denominator if denominator else float("nan")
        self.ratios[name] = round(value, 3)
        return value

    def target(self, name: str, value: float | None, op: str, limit: float, *, unit: str = "",
               note: str = "", goal: float | None = None) -> Target:
        t = Target(name, None if value is None else round(float(value), 3), limit, op, unit, note,
                   goal)
        self.targets.append(t)
        return t

    def row(self, metric: str, value: str, ratio: str = "") -> None:
        self.rows.append((metric, value, ratio))

    def medians(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for variant, runs in self.runs.items():
            keys = {k for r in runs for k, v in r.items() if isinstance(v, int | float)
                    and not isinstance(v, bool)}
            out[variant] = {k: round(self.median(variant, k), 3) for k in sorted(keys)}
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title, "description": self.description, "params": self.params,
            "seconds": round(self.seconds, 1), "error": self.error,
            "runs": self.runs, "medians": self.medians(), "ratios": self.ratios,
            "targets": [{"name": t.name, "value": t.value, "op": t.op, "limit": t.limit,
                         "unit": t.unit, "met": t.met, "note": t.note, "goal": t.goal,
                         "goal_met": t.goal_met} for t in self.targets],
            "table": [{"metric": m, "value": v, "ratio": r} for m, v, r in self.rows],
            "extra": self.extra, "notes": self.notes,
        }


def _command_output(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mosq = _command_output(["sh", "-c", "mosquitto -h 2>&1 | head -1"])
    version = re.search(r"version (\S+)", mosq)
    import msgspec
    return {
        "cpu": cpu, "cores": os.cpu_count(), "arch": platform.machine(),
        "kernel": platform.release(), "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version, "mosquitto": version.group(1) if version else mosq,
        "paho_mqtt": package_version("paho-mqtt"),
        "peewee": package_version("peewee"), "msgspec": msgspec.__version__,
        "git": _command_output(["git", "-C", str(Path(__file__).resolve().parent.parent),
                                "rev-parse", "--short", "HEAD"]),
    }


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:
        return "n/a"
    if abs(value) >= 1000 and digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


@dataclass
class Results:
    command: str
    size: str
    reports: list[Report] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.command, "size": self.size,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.started)),
            "seconds": round(time.time() - self.started, 1), "machine": machine(),
            "scenarios": {r.key: r.as_dict() for r in self.reports},
        }

    def markdown(self, data: dict[str, Any] | None = None) -> str:
        data = data or self.as_dict()
        m = data["machine"]
        lines = [
            f"Command: `{data['command']}` ({data['size']}), {data['date']}, "
            f"{data['seconds']:.0f} s.",
            f"Machine: {m['cores']} cores {m['cpu']} ({m['arch']}, Linux {m['kernel']}), Python "
            f"{m['python']}, SQLite {m['sqlite']}, Mosquitto {m['mosquitto']}, paho-mqtt "
            f"{m['paho_mqtt']}, git {m['git']}.",
            "",
            "| # | scenario | metric | median | ratio / baseline | target | met |",
            "|---|---|---|---:|---:|---|:---:|",
        ]
        for n, report in enumerate(self.reports, 1):
            targets = {t.name: t for t in report.targets}
            if report.error:
                lines.append(f"| {n} | {report.title} | **failed** | {report.error[:80]} | | | |")
                continue
            for i, (metric, value, ratio) in enumerate(report.rows):
                t = targets.pop(metric, None)
                goal = t.text() if t else ""
                met = "" if t is None else t.verdict()
                lines.append(f"| {n if i == 0 else ''} | {report.title if i == 0 else ''} | "
                             f"{metric} | {value} | {ratio} | {goal} | {met} |")
            for t in targets.values():  # targets without a row of their own
                lines.append(f"| | | {t.name} | {fmt(t.value, 2)}{t.unit} | | {t.text()} | "
                             f"{t.verdict()} |")
        notes = [(r.title, note) for r in self.reports for note in r.notes]
        if notes:
            lines.append("")
            lines += [f"* {title}: {note}" for title, note in notes]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        data = self.as_dict()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.started))
        json_path = out_dir / f"results-{self.size}-{stamp}.json"
        md_path = out_dir / f"results-{self.size}-{stamp}.md"
        json_path.write_text(json.dumps(data, indent=1, default=str))
        md_path.write_text(self.markdown(data))
        for src, name in ((json_path, f"latest-{self.size}.json"), (md_path, f"latest-{self.size}.md")):
            (out_dir / name).write_text(src.read_text())
        return json_path, md_path
