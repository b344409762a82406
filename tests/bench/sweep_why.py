"""Why the units died, on the sample and the real model files: the table of docs/fixing.md.

    python tests/bench/sweep_why.py                 # every model; markdown table on stdout
    python tests/bench/sweep_why.py dying_mlp at_dyingrelu_mlp34.h5

For the sample (`samples/dying_mlp.keras` on `samples/probe.npz`) and each of the 13 real files in
`../shared/models` (skipped cleanly when the folder is absent; inputs as in its MANIFEST.md and as
`bench_prune.py` feeds them), runs `deadrelu.scan(model, x, why=True)` and prints per file: the
dead units, their causes (kind: count), the model-level findings, the recommendation of the
dominant cause, and the time of the scan with `why=True` against a plain scan of the same model
and data (interleaved, medians of `--repeats`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_prune  # its REAL table and loaders: one list of the real files


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="only these models (dying_mlp or a file name)")
    p.add_argument("--repeats", type=int, default=3, help="timed scans of each kind per model (default 3)")
    return p.parse_args(argv)


def timed_scan(model, x, **options) -> tuple[object, float]:
    import deadrelu

    start = time.perf_counter()
    report = deadrelu.scan(model, x, batch_size=250, verbose=0, **options)
    return report, time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    loader_args = argparse.Namespace(names=args.names or [], quick=False)
    rows = []
    for name, load in bench_prune.cases(loader_args):
        if name in bench_prune.APPLICATIONS:
            continue
        loaded = load()
        if isinstance(loaded, str):
            print(f"skip {name}: {loaded}", file=sys.stderr)
            continue
        model, x, what = loaded
        plain, why = [], []
        report = None
        for _ in range(args.repeats):
            plain.append(timed_scan(model, x)[1])
            report, seconds = timed_scan(model, x, why=True)
            why.append(seconds)
        summary = report.summary
        causes = summary.get("causes") or {}
        findings = [finding["kind"] for finding in (report.why or {}).get("findings", [])]
        advice = (report.why or {}).get("recommendations", [])
        rows.append(
            {
                "model": name,
                "data": what,
                "dead": f"{summary['dead']:,} / {summary['units']:,}",
                "causes": ", ".join(f"{kind} {n:,}" for kind, n in sorted(causes.items(), key=lambda k: -k[1])) or "–",
                "findings": ", ".join(findings) or "–",
                "advice": advice[0]["action"] if advice else "–",
                "ratio": statistics.median(why) / statistics.median(plain),
            }
        )
        print(f"{name}: {rows[-1]}", file=sys.stderr)
    print("| model | data | dead / units | causes | findings | first recommendation | why / plain scan |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['model']} | {row['data']} | {row['dead']} | {row['causes']} | {row['findings']} | "
            f"{row['advice']} | {row['ratio']:.2f}× |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
