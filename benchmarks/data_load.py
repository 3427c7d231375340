"""Load time and peak memory of the data layer on the real traces.

    python -m benchmarks.data_load [--datasets bitbrains_rnd,fisher_containers] [--repeat 1]

Each measurement runs in a fresh subprocess so that its peak resident memory is its own. The baseline
is the raw read of the same files with pandas (no cleaning), measured in the same command, so the ratio
says what cleaning onto a regular grid costs on this machine today.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

_CHILD = r"""
import json, resource, sys, time
name, mode = sys.argv[1], sys.argv[2]
t = time.perf_counter()
if mode == "harmony":
    from harmony.data.catalog import load
    trace = load(name)
    rows = trace.report().rows_in
    points = trace.total_points
else:
    import pandas as pd
    from harmony.data.catalog import dataset_root, get_card
    card = get_card(name)
    root = dataset_root(card)
    frames = [pd.read_parquet(root / f.path) for f in card.files if f.path.endswith(".parquet")]
    rows = sum(len(f) for f in frames)
    points = rows
elapsed = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": elapsed, "peak_bytes": peak, "rows": rows, "points": points}))
"""


def measure(name: str, mode: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, name, mode], capture_output=True, text=True, env=os.environ.copy()
    )
    if out.returncode != 0:
        raise SystemExit(f"{name}/{mode} failed:\n{out.stderr}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default="bitbrains_rnd", help="comma-separated dataset names")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement (the best is shown)")
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}  python: {sys.version.split()[0]}  {time.strftime('%Y-%m-%d %H:%M')}")
    header = f"{'dataset':<26}{'what':<30}{'rows in':>12}{'grid points':>13}{'seconds':>9}{'peak GiB':>10}"
    print(header)
    print("-" * len(header))
    for name in args.datasets.split(","):
        modes = ["harmony", "baseline"] if name == "bitbrains_rnd" else ["harmony"]
        res = {
            m: min((measure(name, m) for _ in range(args.repeat)), key=lambda r: r["seconds"]) for m in modes
        }
        for m, r in res.items():
            what = "harmony load (clean, grid)" if m == "harmony" else "baseline: pandas read_parquet"
            print(
                f"{name:<26}{what:<30}{int(r['rows']):>12,}{int(r['points']):>13,}"
                f"{r['seconds']:>9.1f}{r['peak_bytes'] / 2**30:>10.2f}"
            )
        if "baseline" in res:
            h, b = res["harmony"], res["baseline"]
            print(
                f"{'':<26}{'ratio harmony / baseline':<30}{'':>25}"
                f"{h['seconds'] / b['seconds']:>9.2f}{h['peak_bytes'] / b['peak_bytes']:>10.2f}"
            )
    print("target for bitbrains_rnd (12.5 M rows): under 20 s and under 3 GiB on 2 cores")


if __name__ == "__main__":
    main()
