"""Run every ``bench/bench_*.py`` (each in its own subprocess), then print a table of every
comparison found in ``bench/results/*.json``.

    .venv/bin/python bench/run_all.py                 # run all benches, rewrite results, print table
    .venv/bin/python bench/run_all.py --only plug     # benches whose file name contains "plug"
    .venv/bin/python bench/run_all.py --table-only    # just print the table of stored results
    .venv/bin/python bench/run_all.py -- --steps 20   # extra arguments passed to every bench

``BENCH_THREADS`` (default 2) sets ``torch.set_num_threads`` in every bench.
Exit status: 1 if a bench failed, else 0 (a missed target is reported, not an error).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(BENCH_DIR, "results")


def run_benches(only: str | None, extra: list[str]) -> list[str]:
    failed = []
    for script in sorted(glob.glob(os.path.join(BENCH_DIR, "bench_*.py"))):
        name = os.path.basename(script)
        if only and only not in name:
            continue
        print(f"=== {name}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, script, *extra], cwd=os.path.dirname(BENCH_DIR))
        print(f"=== {name}: exit {rc} after {time.perf_counter() - t0:.0f}s", flush=True)
        if rc != 0:
            failed.append(name)
    return failed


def _fmt(v, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "bytes":
        return f"{v / 2 ** 20:.1f} MiB"
    if unit == "s":
        return f"{v:.3f} s"
    return f"{v:g}"


def table(results_dir: str = RESULTS_DIR) -> str:
    rows = [("bench", "comparison", "ours", "baseline", "ratio", "target", "meets", "spread", "n")]
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        with open(path) as fh:
            doc = json.load(fh)
        for c in doc.get("comparisons", []):
            meets = c.get("meets")
            rows.append((doc.get("bench", "?"), c["name"], _fmt(c["ours"], c["unit"]),
                         _fmt(c["baseline"], c["unit"]), f"{c['ratio']:.3f}",
                         "-" if c.get("target") is None else f"<= {c['target']}",
                         "-" if meets is None else ("yes" if meets else "NO"),
                         f"{c.get('spread', 0):.2f}", str(c.get("repeats", ""))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description="Run every bench and print the comparison table.")
    ap.add_argument("--only", default=None, help="run only benches whose file name contains this")
    ap.add_argument("--table-only", action="store_true", help="print the stored results, run nothing")
    args = ap.parse_args(argv)
    failed = [] if args.table_only else run_benches(args.only, extra)
    print(table())
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
