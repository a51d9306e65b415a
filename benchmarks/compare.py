"""Two results files side by side: per benchmark, arm and metric, the old and new value, their ratio and difference.

    python -m benchmarks.compare OLD.csv NEW.csv
    python -m benchmarks.compare OLD.csv NEW.jsonl --benchmark defects_quality --metric auroc

Each file is what ``--results-file`` appended to (CSV, or JSON lines for .json/.jsonl). A metric is every
numeric column but ``fold``; rows of one arm over several folds (or seeds) are averaged. Where a file
holds several runs of a benchmark, the last one is compared, and a note says so; another note says
when the two runs' settings or CPUs differ.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from collections import defaultdict
from pathlib import Path

NOT_METRICS = {"benchmark", "arm", "fold", "revision", "date", "cpu", "settings"}


def read_results(path: Path) -> list[dict]:
    """The rows of a results file (CSV, or JSON lines for .json/.jsonl)."""
    if path.suffix in (".json", ".jsonl"):
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def _number(value) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def last_runs(rows: list[dict]) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Per benchmark, the rows of its last run in the file (a run: one revision, date and settings), and
    how many runs of it the file holds."""
    runs: dict[str, list[tuple]] = defaultdict(list)
    for row in rows:
        run = (row.get("revision"), row.get("date"), row.get("settings"))
        if run not in runs[row["benchmark"]]:
            runs[row["benchmark"]].append(run)
    last = {benchmark: [row for row in rows if row["benchmark"] == benchmark
                        and (row.get("revision"), row.get("date"), row.get("settings")) == found[-1]]
            for benchmark, found in runs.items()}
    return last, {benchmark: len(found) for benchmark, found in runs.items()}


def summarise(rows: list[dict]) -> dict[tuple[str, str, str], float]:
    """(benchmark, arm, metric) -> the metric's mean over the arm's rows (its folds)."""
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for row in rows:
        for column, value in row.items():
            number = _number(value)
            if column not in NOT_METRICS and number is not None:
                values[row["benchmark"], str(row.get("arm", "")), column].append(number)
    return {key: sum(found) / len(found) for key, found in values.items()}


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def compare(old_path: Path, new_path: Path, benchmark: str | None = None, metric: str | None = None) -> list[dict]:
    """Print the comparison; return its rows (benchmark, arm, metric, old, new, ratio, difference)."""
    (old_runs, old_counts), (new_runs, new_counts) = (last_runs(read_results(path)) for path in (old_path, new_path))
    for label, counts in (("OLD", old_counts), ("NEW", new_counts)):
        for name, count in counts.items():
            if count > 1 and benchmark in (None, name):
                print(f"note: {label} holds {count} runs of {name}; comparing the last")
    for name in sorted(set(old_runs) & set(new_runs)):
        if benchmark not in (None, name):
            continue
        for column in ("settings", "cpu"):
            old_value, new_value = old_runs[name][0].get(column), new_runs[name][0].get(column)
            if old_value != new_value:
                print(f"note: {name} ran with other {column}: OLD {old_value!r}, NEW {new_value!r}")
    old = summarise([row for rows in old_runs.values() for row in rows])
    new = summarise([row for rows in new_runs.values() for row in rows])
    keys = [key for key in dict.fromkeys([*old, *new]) if benchmark in (None, key[0])
            and (metric is None or re.search(metric, key[2]))]
    out = []
    for key in keys:
        before, after = old.get(key), new.get(key)
        both = before is not None and after is not None
        out.append({"benchmark": key[0], "arm": key[1], "metric": key[2], "old": before, "new": after,
                    "ratio": after / before if both and before else None, "difference": after - before if both else None})
    widths = [max([len(heading), *(len(row[heading]) for row in out)]) for heading in ("benchmark", "arm", "metric")]
    header = (f"{'benchmark':{widths[0]}s}  {'arm':{widths[1]}s}  {'metric':{widths[2]}s}  {'old':>10s}  {'new':>10s}"
              f"  {'new/old':>8s}  {'new-old':>10s}")
    print(header + "\n" + "-" * len(header))
    for row in out:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3f}x"
        print(f"{row['benchmark']:{widths[0]}s}  {row['arm']:{widths[1]}s}  {row['metric']:{widths[2]}s}  "
              f"{_cell(row['old']):>10s}  {_cell(row['new']):>10s}  {ratio:>8s}  {_cell(row['difference']):>10s}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path, help="the results file of the old revision (CSV or JSON lines)")
    parser.add_argument("new", type=Path, help="the results file of the new revision")
    parser.add_argument("--benchmark", help="only this benchmark")
    parser.add_argument("--metric", help="only metrics whose name matches this regular expression")
    args = parser.parse_args(argv)
    for path in (args.old, args.new):
        if not path.is_file():
            raise SystemExit(f"{path} is not a file")
    compare(args.old, args.new, args.benchmark, args.metric)


if __name__ == "__main__":
    main()
