"""`tissuetalk domains`: the spatial-domain pipeline on a slice; writes a new h5ad + figures."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="input: .h5ad, 10x Visium folder, or .csv (never modified)")
    src.add_argument("--demo", action="store_true", help="use the simulated demo tissue")
    p.add_argument("--coords", help="coordinates table for a counts-only CSV")
    p.add_argument("--n-domains", type=int, default=7, help="number of domains (default 7)")
    p.add_argument("--label-key", help="obs column with annotations to score against")
    p.add_argument("--method", default="gmm", choices=["gmm", "kmeans", "leiden"])
    p.add_argument("--prompt", default="none", choices=["none", "stllm", "qr", "se", "rag"],
                   help="embed ST-LLM prompts of this variant (default none: expression only); "
                   "rag needs --descriptions")
    p.add_argument("--descriptions", help="gene descriptions for --prompt rag: NCBI gene-"
                   "description JSON lines (.jsonl[.gz]) or a gene,description .tsv/.csv")
    p.add_argument("--embedder", default="minilm",
                   help="embedder spec: minilm | hf:<dir> | openai:<model>[@<url>]")
    p.add_argument("--text-weight", type=float, default=1.0,
                   help="with --prompt: weight of text vs expression features (1 = text only)")
    p.add_argument("--refine-graph", action="store_true",
                   help="refine the adjacency with ST-LLM's Q(A) search before smoothing")
    p.add_argument("--smooth-rounds", type=int, default=2,
                   help="rounds of neighbour smoothing of the features (default 2)")
    p.add_argument("--refine", default="hmrf", choices=["none", "hmrf", "majority"],
                   help="spatial refinement of the labels (default hmrf: Potts-prior EM)")
    p.add_argument("--beta", type=float, default=2.0, help="Potts prior strength for hmrf")
    p.add_argument("--covariance", default="tied", choices=["tied", "full", "diag"],
                   help="GMM covariance (default tied)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (created; input is never touched)")
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    p.add_argument("--no-umap", action="store_true",
                   help="skip the UMAP figure (the spatial map is still drawn)")
    p.add_argument("--no-cache", action="store_true",
                   help="recompute everything (default: reuse the preprocessing / graph, "
                   "embedding and UMAP caches in $TISSUETALK_CACHE, default ~/.cache/tissuetalk)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


OUTPUT_FILES = ("domains.h5ad", "spatial_domains.png", "umap.png")


def run(args) -> int:
    import contextlib
    import sys

    if not args.json:
        return _run(args)
    # --json: stdout carries exactly one JSON object; library chatter goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        summary = _run(args)
    print(json.dumps(summary))
    return 0


def _run(args):
    from pydantic import ValidationError

    from tools.data import read_dataset, validate
    from tools.errors import ParameterError
    from tools.io import write_h5ad
    from tools.pipeline import PipelineParams, run_domain_pipeline

    t0 = time.perf_counter()
    out = Path(args.out)
    try:
        params = PipelineParams(
            n_domains=args.n_domains, method=args.method, prompt=args.prompt,
            embedder=args.embedder, text_weight=args.text_weight,
            refine_graph=args.refine_graph, smooth_rounds=args.smooth_rounds,
            refine=args.refine, beta=args.beta, covariance=args.covariance,
            label_key=args.label_key, seed=args.seed)
    except ValidationError as e:
        err = e.errors()[0]
        raise ParameterError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
    if args.demo:
        from tools.simulate import demo_path

        src = demo_path(out)
        params.label_key = params.label_key or "ground_truth"
    else:
        src = Path(args.data)
        for name in OUTPUT_FILES:
            if (out / name).resolve() == src.resolve():
                raise ParameterError(f"--out would overwrite the input file {src}; "
                                     "choose another folder")
        if out.exists() and not out.is_dir():
            raise ParameterError(f"--out {out} exists and is not a folder")
    t = time.perf_counter()
    adata = read_dataset(src, args.coords)
    validate(adata, expect_counts=True)
    if params.label_key and params.label_key not in adata.obs:
        from tools.errors import UnknownKeyError, suggest

        raise UnknownKeyError(f"--label-key '{params.label_key}' is not an obs column of "
                              f"{src}{suggest(params.label_key, adata.obs.columns)}")
    if params.label_key:
        from tools.domains import labelled
        from tools.errors import DataError

        if not labelled(adata.obs[params.label_key]).any():
            raise DataError(f"--label-key '{params.label_key}' has no labelled spots (all NaN)")
    if params.n_domains > adata.n_obs:
        raise ParameterError(f"--n-domains {params.n_domains} is more than the "
                             f"{adata.n_obs} spots in {src.name}")
    if params.prompt == "rag":
        if not args.descriptions:
            raise ParameterError("--prompt rag needs --descriptions (gene descriptions file)")
        from tools.pipeline import read_descriptions

        params.descriptions = read_descriptions(args.descriptions, adata.var_names)
    elif args.descriptions:
        raise ParameterError("--descriptions is only used with --prompt rag")
    load_s = round(time.perf_counter() - t, 3)
    res = run_domain_pipeline(adata, params, progress=not args.json, cache=not args.no_cache)
    res["stages"] = {"load": load_s, **res["stages"]}
    figures = []
    if not args.no_plots:
        figures = _plots(adata, out, params.label_key, res["embedding"], res["stages"],
                         umap=not args.no_umap,
                         cache=not args.no_cache)
    t = time.perf_counter()
    h5 = write_h5ad(adata, out / "domains.h5ad")
    res["stages"]["write"] = round(time.perf_counter() - t, 3)
    summary = {
        "ari": res["ari"], "ami": res["ami"], "nmi": res["nmi"], "n_spots": res["n_spots"],
        "n_scored": res["n_scored"], "method": _method_name(params),
        "seconds": round(time.perf_counter() - t0, 3), "stages": res["stages"],
        "sizes": res["sizes"], "cache": res["cache"], "output": str(h5), "figures": figures,
    }
    if args.json:
        return summary
    _print(summary)
    return 0


def _method_name(p) -> str:
    parts = [p.method + (f"-{p.covariance}" if p.method == "gmm" else "")]
    if p.prompt != "none":
        parts.append(f"prompt={p.prompt}" + (f"+expr{1 - p.text_weight:.2f}"
                                             if p.text_weight < 1 else ""))
    if p.refine_graph:
        parts.append("refined-graph")
    parts.append(f"smooth{p.smooth_rounds}")
    if p.refine != "none":
        parts.append(p.refine + (f"-beta{p.beta:g}" if p.refine == "hmrf" else ""))
    return "/".join(parts)


def _plots(adata, out: Path, label_key, embedding, stages, umap: str | None,
           cache: bool) -> list[str]:
    from tools.plots import SpatialPlotParams, UmapPlotParams, plot_spatial, plot_umap

    t = time.perf_counter()
    keys = ["domain"] + ([label_key] if label_key else [])
    figs = [plot_spatial(adata, SpatialPlotParams(keys=keys), workdir=out).figure]
    stages["plot_spatial"] = round(time.perf_counter() - t, 3)
    if umap:
        t = time.perf_counter()
        figs.append(plot_umap(adata, UmapPlotParams(embedding=embedding, cache=cache), workdir=out).figure)
        stages["plot_umap"] = round(time.perf_counter() - t, 3)
    return figs


def _print(s: dict) -> None:
    if s["ari"] is not None:
        print(f"ARI {s['ari']:.3f}  AMI {s['ami']:.3f}  NMI {s['nmi']:.3f}  "
              f"({s['n_scored']} annotated spots)")
    print(f"{s['n_spots']} spots -> domains {s['sizes']}  method {s['method']}  "
          f"(cache: {s['cache']})")
    print("stages (s): " + ", ".join(f"{k} {v}" for k, v in s["stages"].items()))
    print(f"wrote {s['output']}" + "".join(f"\n      {f}" for f in s["figures"]))
