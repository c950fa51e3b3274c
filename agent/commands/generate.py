"""`tissuetalk generate`: benchmark generating held-out cells from their neighbourhoods."""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="spatial dataset (.h5ad) with cell types and sections")
    parser.add_argument("--cell-type-key", default="cell_class", help="obs column of cell types")
    parser.add_argument("--split-key", default="bregma", help="obs column of sections")
    parser.add_argument("--test-value", default="0.21", help="section held out for testing")
    parser.add_argument("--k", type=int, default=10, help="context size: k nearest cells (default 10)")
    parser.add_argument("--cross-type", action="store_true", help="remove same-type cells from contexts")
    parser.add_argument("--max-cells-per-type", type=int, default=None,
                        help="at most this many target cells per type (train and test)")
    cond = parser.add_mutually_exclusive_group()
    cond.add_argument("--conditioned", dest="conditioned", action="store_true", default=True,
                      help="give the models the target's type (default)")
    cond.add_argument("--unconditioned", dest="conditioned", action="store_false",
                      help="do not give the target's type")
    parser.add_argument("--drop-types", default="Ambiguous", help="comma-separated types to drop")
    parser.add_argument("--drop-gene-prefixes", default="Blank_", help="comma-separated gene prefixes to drop")
    parser.add_argument("--llm", default=None, help="also score a model spec (openai:..., hf:<dir>, ...)")
    parser.add_argument("--llm-cells", type=int, default=10, help="test cells given to --llm")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    from tools.data import read_dataset
    from tools.generation import EvaluateGenerationParams, evaluate_generation

    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    p = EvaluateGenerationParams(
        cell_type_key=args.cell_type_key, split_key=args.split_key, test_value=str(args.test_value),
        k=args.k, cross_type=args.cross_type, conditioned=args.conditioned,
        max_cells_per_type=args.max_cells_per_type, seed=args.seed, llm_model=args.llm,
        llm_cells=args.llm_cells, drop_types=split(args.drop_types),
        drop_gene_prefixes=split(args.drop_gene_prefixes))
    r = evaluate_generation(read_dataset(args.data), p)
    out = {**{k: {m: round(v, 4) for m, v in s.items()} for k, s in r.scores.items()},
           "n_cells": r.n_cells, "seconds": r.seconds, "model": r.model, "alpha": r.alpha}
    if r.llm:
        out["llm"] = r.llm
    if args.json:
        print(json.dumps(out))
        return 0
    methods = list(out["ndcg@10"])
    print(f"{'metric':<12}" + "".join(f"{m:>18}" for m in methods))
    for key, s in r.scores.items():
        print(f"{key:<12}" + "".join(f"{s[m]:>18.3f}" for m in methods))
    print(f"{r.n_cells} test cells, {r.seconds:.1f} s")
    return 0
