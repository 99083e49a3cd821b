"""Summarise a py-spy profile (``--format raw`` collapsed stacks, as ``bench run --profile`` writes).

    python -m bench.profile FILE [--top 25] [--thread NAME]

Per thread: its share of the samples; then the functions with the most samples on top of the
stack (self) and anywhere on it (total), in % of all samples. py-spy samples only threads that
are running (not idle), so the shares are of the CPU the process used.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_THREAD = re.compile(r"^thread \(\d+\): ([^;]*)")
_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def _frame(text: str) -> str:
    """``fn (path/to/module.py:123)`` -> ``fn (module.py)``: lines merged."""
    match = _FRAME.match(text)
    if not match:
        return text
    return f"{match.group(1)} ({match.group(2).rsplit('/', 1)[-1]})"


def summarise(path: Path, *, top: int = 25, thread: str | None = None) -> str:
    threads: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total_time: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        match = _THREAD.match(frames[0])
        name = match.group(1) if match else "?"
        name = re.sub(r"-\d+$", "", name) or "?"
        if name.startswith("paho-mqtt-client"):
            name = "paho-mqtt-client (network)"
        if thread is not None and thread not in name:
            continue
        frames = [_frame(f) for f in frames[1:]]
        samples += count
        threads[name] += count
        if frames:
            self_time[frames[-1]] += count
        for f in set(frames):
            total_time[f] += count
    if not samples:
        return f"{path}: no samples"
    lines = [f"{path.name}: {samples} samples", "", "| thread | share |", "|---|---:|"]
    lines += [f"| {name} | {100 * c / samples:.1f} % |" for name, c in threads.most_common()]
    lines += ["", "| self | % |", "|---|---:|"]
    lines += [f"| `{f}` | {100 * c / samples:.1f} |" for f, c in self_time.most_common(top)]
    lines += ["", "| total (inclusive) | % |", "|---|---:|"]
    lines += [f"| `{f}` | {100 * c / samples:.1f} |" for f, c in total_time.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--thread", help="only threads whose name contains this")
    args = parser.parse_args(argv)
    print(summarise(args.file, top=args.top, thread=args.thread))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
