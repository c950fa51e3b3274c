"""Benchmark of cell generation from neighbourhoods (TissueNarrator task) on MERFISH hypothalamus.

    python -m evals.bench.generation [--data FILE] [--max-cells-per-type N] [--out table.md]

Train on one bregma section, test on the other (0.21 is the reference split; 0.26 the reverse),
`Blank_*` genes and `Ambiguous` cells dropped. Settings: cross-type (same-type neighbours removed)
and same-type allowed, conditioned on the target's type or not; k = 10 nearest cells. Methods:
nearest neighbour, class mean and the context model. Scores: NDCG@k / overlap@k, k = 10, 30, 50.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

REL = "spatial/merfish_hypothalamus_moffitt2018.h5ad"
METHODS = ("nearest_neighbor", "class_mean", "context_model")


def default_data() -> Path:
    root = os.environ.get("TISSUETALK_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data"
    return Path(root) / REL


def main(argv=None) -> int:
    import anndata as ad

    from tools.generation import evaluate, prepare

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(default_data()), help="MERFISH hypothalamus .h5ad")
    ap.add_argument("--max-cells-per-type", type=int, default=None, help="cap target cells per type")
    ap.add_argument("--tests", default="0.21,0.26", help="held-out sections, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    data = prepare(ad.read_h5ad(args.data), "cell_class", "bregma")
    head = "| test | setting | type | k | " + " | ".join(METHODS) + " | cells | alpha | s |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for test in args.tests.split(","):
        for cross in (True, False):
            for cond in (True, False):
                t = time.perf_counter()
                r = evaluate(data, test, cross_type=cross, conditioned=cond,
                             max_per_type=args.max_cells_per_type, seed=args.seed)
                s = time.perf_counter() - t
                for k in (10, 30, 50):
                    cells = " | ".join(f"{r[f'ndcg@{k}'][m]:.3f} / {r[f'overlap@{k}'][m]:.3f}"
                                       for m in METHODS)
                    lines.append(f"| {test} | {'cross-type' if cross else 'same-type allowed'} | "
                                 f"{'conditioned' if cond else 'unconditioned'} | {k} | {cells} | "
                                 f"{r['n_cells']} | {r['alpha']:g} | {s:.1f} |")
                print(lines[-1], flush=True)
    table = "\n".join(lines) + f"\n\n(each cell: NDCG / overlap; total {time.perf_counter() - t0:.0f} s)\n"
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
