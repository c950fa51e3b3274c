"""Benchmark of the spatial-domain pipeline on one annotated slice: one table of methods.

    python -m evals.bench.domains --data ../shared/data/spatial/dlpfc_151673.h5ad --seeds 0 1 2 \\
        --out evals/bench/results/domains_151673.md

Every row runs :func:`tools.pipeline.run_domain_pipeline` (the code behind ``tissuetalk domains``)
on a fresh copy of the slice, once per seed, with the expression cache off (so each row's seconds
include preprocessing). Columns: ARI / AMI / NMI on annotated spots (NaN labels excluded), mean
+- sd and min-max over seeds; "features only" = the same features clustered by a tied GMM without
smoothing or HMRF (how much signal the features carry on their own); seconds per run.

Text rows: prompts are a pure function of the data and graph, so they are embedded once and read
from the embedding cache for the other seeds; the adjacency refinement uses seed 0 for every seed
(``graph_seed=0``), so seeds vary the clustering only. The cold embedding cost is measured on a
sample of prompts with an empty cache and extrapolated to the whole slice.

A timing section runs the real command (``tissuetalk domains``) in a subprocess: cold (empty
``$TISSUETALK_CACHE``) and warm (same cache, second run) for the default method and for the
PCA + GMM baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[2]

# name, group, PipelineParams overrides, note
EXPRESSION = dict(smooth_rounds=0, refine="none", covariance="full")
ROWS: list[tuple[str, str, dict, str]] = [
    ("PCA + GMM", "baseline", dict(EXPRESSION),
     "PCA 30 of 3,000 scaled HVGs, GMM full covariance, no smoothing"),
    ("smoothed PCA + GMM", "baseline", dict(smooth_rounds=1, refine="none", covariance="full"),
     "one round z <- (z + mean of grid neighbours) / 2, GMM full"),
    ("strong baseline: PCA, 2 smoothing rounds, GMM tied", "baseline",
     dict(smooth_rounds=2, refine="none", covariance="tied"), "CALIBRATION.md recipe"),
    ("default: PCA, 2 smoothing rounds, GMM tied, HMRF beta 2", "default", {},
     "`tissuetalk domains` defaults"),
]
for _v in ("stllm", "qr", "se", "rag"):
    for _r in (False, True):
        ROWS.append((f"text: {_v} prompt{' + refined graph' if _r else ''}", "text",
                     dict(prompt=_v, refine_graph=_r, text_weight=1.0),
                     "MiniLM embedding of the prompt, PCA 30, then the default clustering"))
ROWS.append(("text + expression: stllm prompt, text_weight 0.5", "text",
             dict(prompt="stllm", text_weight=0.5),
             "joint PCA 30 of [sqrt(.5) text PCA, sqrt(.5) expression PCA] (blocks at unit "
             "variance), then the default clustering"))
# What makes the text path carry signal? Prompt content (bench-built texts from the same top
# genes as the prompts: obs['prompt_genes']) and the text / expression weight.
for _v, _w in (("stllm", 0.1), ("stllm", 0.25), ("stllm", 0.75), ("se", 0.03), ("se", 0.1),
               ("se", 0.25)):
    ROWS.append((f"explore: {_v} prompt + expression, text_weight {_w}", "explore",
                 dict(prompt=_v, text_weight=_w), "text + expression at another weight"))
EXPLORE = {
    "explore: genes-only text (top-10 spatial genes)": (
        "genes", 1.0, "bench-built text: 'Genes: ' + the prompt's 10 top genes (no task / "
        "position / graph text)"),
    "explore: position-only text (control)": (
        "position", 1.0, "bench-built text: the prompt's Spatial(i) sentence alone "
        "(coordinates and tissue region, no genes), a control"),
    "explore: full gene names (top-10 spatial genes)": (
        "names", 1.0, "bench-built text: the NCBI official full names of the prompt's 10 "
        "top genes"),
    "explore: full gene names + expression, text_weight 0.5": (
        "names", 0.5, "the full-names text embedding + expression (joint PCA)"),
}


def load_descriptions(knowledge: Path | None, genes) -> dict[str, str] | None:
    """gene -> RefSeq summary (else the official full name) from knowledge/gene_descriptions;
    None when the file is absent."""
    if knowledge is None:
        return None
    path = Path(knowledge) / "gene_descriptions" / "human_gene_descriptions.jsonl.gz"
    if not path.exists():
        return None
    from tools.pipeline import read_descriptions

    return read_descriptions(path, genes)


def _stats(values) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if not len(v):
        return {"mean": None, "sd": None, "min": None, "max": None}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


def run_row(raw, params: dict, seeds, label_key: str, descriptions, embedder: str) -> dict:
    from tools.domains import DomainParams, find_domains
    from tools.pipeline import PipelineParams, run_domain_pipeline

    runs = []
    for seed in seeds:
        a = raw.copy()
        p = PipelineParams(**params, seed=seed, graph_seed=0, label_key=label_key,
                           embedder=embedder,
                           descriptions=descriptions if params.get("prompt") == "rag" else None)
        t = time.perf_counter()
        res = run_domain_pipeline(a, p, cache=False)
        sec = time.perf_counter() - t
        raw_res = find_domains(a, DomainParams(
            n_domains=p.n_domains, embedding=res["embedding"], smooth_rounds=0, refine="none",
            covariance="tied", label_key=label_key, seed=seed, key_added="domain_features"))
        emb = dict(a.uns.get("X_text", {}))
        runs.append({"seed": seed, "ari": res["ari"], "ami": res["ami"], "nmi": res["nmi"],
                     "ari_features": raw_res.ari, "seconds": sec, "stages": res["stages"],
                     "n_computed": int(emb.get("n_computed", 0)),
                     "n_cached": int(emb.get("n_cached", 0)),
                     "mean_tokens": float(a.uns["prompt"]["tokens"]["mean"])
                     if "prompt" in a.uns else None,
                     "n_shortened": int(a.uns["prompt"]["tokens"]["n_shortened"])
                     if "prompt" in a.uns else None})
        print(f"  seed {seed}: ARI {res['ari']:.3f} (features only {raw_res.ari:.3f}) "
              f"{sec:.1f} s {res['stages']}", file=sys.stderr, flush=True)
    return {"runs": runs, **{k: _stats([r[k] for r in runs])
                             for k in ("ari", "ami", "nmi", "ari_features", "seconds")}}


def custom_texts(a, kind: str, full_names: dict[str, str]) -> list[str]:
    if kind == "position":
        from tools.serialise import tissue_regions

        xy = np.asarray(a.obsm["spatial"], dtype=float)[:, :2]
        reg = tissue_regions(xy)
        return [f"The spot is at ({x:.0f}, {y:.0f}), in the {r} of the tissue."
                for (x, y), r in zip(xy, reg)]
    genes = [str(g).split(",") if str(g) else [] for g in a.obs["prompt_genes"]]
    if kind == "genes":
        return ["Genes: " + ", ".join(g) + "." for g in genes]
    return ["; ".join(full_names.get(x, x) for x in g) + "." for g in genes]


def run_explore(raw, kind: str, text_weight: float, seeds, label_key: str, embedder: str,
                full_names: dict[str, str]) -> dict:
    """Bench-built text per spot from the prompt's top genes, embedded, then the default
    clustering (the same stages as the pipeline's text path, with another text)."""
    from tools.data import PreprocessParams
    from tools.domains import DomainParams, find_domains
    from tools.embedding import EmbedParams, embed_prompts
    from tools.graph import GraphParams
    from tools.pipeline import expression_stage, text_features
    from tools.serialise import PromptParams, serialise_prompts

    t = time.perf_counter()
    base = raw.copy()
    expression_stage(base, PreprocessParams(n_top_genes=min(3000, base.n_vars), n_comps=30),
                     GraphParams(method="grid" if "array_row" in base.obs else "knn",
                                 n_neighs=6), cache=False)
    serialise_prompts(base, PromptParams(variant="se"))
    base.obs["prompt"] = custom_texts(base, kind, full_names)
    embed_prompts(base, EmbedParams(embedder=embedder))
    shared = time.perf_counter() - t
    emb = dict(base.uns["X_text"])
    runs = []
    for seed in seeds:
        a = base.copy()
        t = time.perf_counter()
        key = text_features(a, text_weight, 30, seed)
        res = find_domains(a, DomainParams(embedding=key, label_key=label_key, seed=seed))
        sec = time.perf_counter() - t + shared
        raw_res = find_domains(a, DomainParams(
            embedding=key, smooth_rounds=0, refine="none", covariance="tied",
            label_key=label_key, seed=seed, key_added="domain_features"))
        runs.append({"seed": seed, "ari": res.ari, "ami": res.ami, "nmi": res.nmi,
                     "ari_features": raw_res.ari, "seconds": sec,
                     "n_computed": int(emb["n_computed"]), "n_cached": int(emb["n_cached"]),
                     "mean_words": float(np.mean([len(x.split()) for x in base.obs["prompt"]]))})
        print(f"  seed {seed}: ARI {res.ari:.3f} (features only {raw_res.ari:.3f}) {sec:.1f} s",
              file=sys.stderr, flush=True)
    return {"runs": runs, **{k: _stats([r[k] for r in runs])
                             for k in ("ari", "ami", "nmi", "ari_features", "seconds")}}


def load_full_names(knowledge: Path | None, genes) -> dict[str, str]:
    if knowledge is None:
        return {}
    path = Path(knowledge) / "gene_descriptions" / "human_gene_descriptions.jsonl.gz"
    if not path.exists():
        return {}
    from tools.ncbi import read_descriptions_jsonl

    wanted = {str(g) for g in genes}
    return {r["symbol"]: r["official_full_name"] for r in read_descriptions_jsonl(path)
            if r["symbol"] in wanted and r.get("official_full_name")}


def cold_embed_rate(raw, embedder: str, n: int = 64) -> dict | None:
    """Texts/s of the embedder on `n` stllm prompts of this slice, with an empty cache."""
    from tools.data import PreprocessParams, preprocess
    from tools.embedding import get_embedder
    from tools.graph import GraphParams, build_graph
    from tools.serialise import PromptParams, serialise_prompts

    a = raw.copy()
    preprocess(a, PreprocessParams(n_top_genes=min(3000, a.n_vars), n_comps=30))
    build_graph(a, GraphParams(method="grid" if "array_row" in a.obs else "knn", n_neighs=6))
    serialise_prompts(a, PromptParams(variant="stllm"))
    texts = a.obs["prompt"].astype(str).tolist()
    idx = np.random.default_rng(0).choice(len(texts), size=min(n, len(texts)), replace=False)
    with tempfile.TemporaryDirectory() as d:
        e = get_embedder(embedder, cache_dir=d)
        e.embed(["warm-up: load the model"])
        t = time.perf_counter()
        e.embed([texts[i] for i in idx])
        sec = time.perf_counter() - t
    return {"n": len(idx), "seconds": sec, "rate": len(idx) / sec}


def cli_timing(data: Path, label_key: str, flags: list[str]) -> dict:
    """Cold (empty cache) then warm run of `tissuetalk domains` in a subprocess."""
    exe = Path(sys.executable).parent / "tissuetalk"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "agent.cli"]
    out = {}
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as outdir:
        env = {**os.environ, "TISSUETALK_CACHE": cache}
        for which in ("cold", "warm"):
            t = time.perf_counter()
            r = subprocess.run(cmd + ["domains", "--data", str(data), "--label-key", label_key,
                                      "--out", outdir, "--json", *flags],
                               capture_output=True, text=True, env=env, cwd=REPO)
            wall = time.perf_counter() - t
            if r.returncode != 0:
                raise RuntimeError(f"tissuetalk domains failed: {r.stderr.strip()[-500:]}")
            js = json.loads(r.stdout)
            out[which] = {"wall": wall, "seconds": js["seconds"], "ari": js["ari"],
                          "stages": js["stages"], "cache": js["cache"]}
    return out


def _fmt(s: dict, digits: int = 3) -> str:
    if s["mean"] is None:
        return "n/a"
    return (f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f} "
            f"({s['min']:.{digits}f}–{s['max']:.{digits}f})")


def render(meta: dict, rows: list[dict], timing: dict | None) -> str:
    L = [f"# Spatial domains on {meta['data_name']}", "",
         f"Generated by `{meta['command']}` on {meta['date']} ({meta['machine']}; load average "
         f"{meta['load_start']} at start, {meta['load_end']} at end; bench wall time "
         f"{meta['wall'] / 60:.1f} min).", "",
         f"{meta['n_spots']} spots, {meta['n_scored']} annotated ('{meta['label_key']}', NaN "
         f"excluded), 7 domains; seeds {', '.join(map(str, meta['seeds']))}. "
         "Scores: mean ± sd (min–max) over seeds. \"features only\": the row's features "
         "clustered by a tied GMM with no smoothing and no HMRF. Seconds: mean wall time of one "
         "pipeline run in-process (preprocessing included, no expression cache).", "",
         "| method | ARI | AMI | NMI | ARI, features only | seconds | notes |",
         "|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['name']} | {_fmt(r['ari'])} | {_fmt(r['ami'])} | {_fmt(r['nmi'])} | "
                 f"{_fmt(r['ari_features'])} | {r['seconds']['mean']:.1f} | {r['note']} |")
    L += ["", "Published on this slice (for comparison, not re-run here): ST-LLM 0.655 ARI, "
          "GraphST 0.633.", ""]
    L += ["Notes:", ""]
    for n in meta["notes"]:
        L.append(f"- {n}")
    if timing:
        L += ["", "## Timing of `tissuetalk domains` (subprocess, whole command)", "",
              "Cold: empty `$TISSUETALK_CACHE` (no preprocessing / graph / prompt / embedding / "
              "UMAP cache); warm: the same command again with that cache. Wall seconds include "
              "Python start-up, imports, reading the file, figures (spatial map + UMAP) and "
              "writing the h5ad.", "",
              "| command | cold s | warm s | ARI | cold stages (s) | warm stages (s) |",
              "|---|---|---|---|---|---|"]
        for name, t in timing["runs"].items():
            st = lambda d: ", ".join(f"{k} {v}" for k, v in d.items())  # noqa: E731
            L.append(f"| {name} | {t['cold']['wall']:.1f} | {t['warm']['wall']:.1f} | "
                     f"{t['cold']['ari']:.3f} | {st(t['cold']['stages'])} | "
                     f"{st(t['warm']['stages'])} |")
        d, b = timing["runs"]["default"], timing["runs"]["PCA + GMM baseline"]
        L += ["", f"Default / PCA + GMM baseline wall-time ratio: cold "
              f"{d['cold']['wall'] / b['cold']['wall']:.2f}, warm "
              f"{d['warm']['wall'] / b['warm']['wall']:.2f}."]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="annotated .h5ad slice")
    ap.add_argument("--label-key", default="ground_truth")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", required=True, help="markdown file to write")
    ap.add_argument("--knowledge", help="knowledge folder with gene_descriptions/ for the RAG "
                    "prompt (default: <data folder>/../knowledge)")
    ap.add_argument("--embedder", default="minilm")
    ap.add_argument("--rows", nargs="*", help="only rows whose name contains one of these")
    ap.add_argument("--no-timing", action="store_true", help="skip the subprocess timing runs")
    args = ap.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore")
    from tools.data import read_dataset, validate

    t_start = time.perf_counter()
    load_start = " ".join(f"{x:.1f}" for x in os.getloadavg())
    data = Path(args.data)
    raw = read_dataset(data)
    validate(raw)
    from tools.domains import labelled

    knowledge = Path(args.knowledge) if args.knowledge else data.resolve().parent.parent / "knowledge"
    descriptions = load_descriptions(knowledge if knowledge.exists() else None, raw.var_names)
    rows_def = [r for r in ROWS if not args.rows or any(s in r[0] for s in args.rows)]
    notes = []
    if descriptions is None:
        rows_def = [r for r in rows_def if r[2].get("prompt") != "rag"]
        notes.append("RAG rows skipped: no gene descriptions (knowledge/gene_descriptions) found.")
    else:
        notes.append(f"RAG: NCBI RefSeq summaries (else official full names) for "
                     f"{len(descriptions)} of {raw.n_vars} genes, first sentence per top gene; "
                     "to fit the 256-token budget the serialiser drops second-order neighbours, "
                     "then neighbour genes, then descriptions, so RAG prompts keep only the "
                     "first one or two descriptions.")
    explore_def = {k: v for k, v in EXPLORE.items()
                   if not args.rows or any(s in k for s in args.rows)}
    full_names = load_full_names(knowledge if knowledge.exists() else None, raw.var_names) \
        if explore_def else {}
    rows = []
    for name, group, params, note in rows_def:
        print(f"[{name}]", file=sys.stderr, flush=True)
        r = run_row(raw, params, args.seeds, args.label_key, descriptions, args.embedder)
        if params.get("prompt"):
            n_new = sum(x["n_computed"] for x in r["runs"])
            tok = r["runs"][0]["mean_tokens"]
            short = r["runs"][0]["n_shortened"]
            note = note + f"; mean prompt length {tok:.0f} tokens (estimate)" + (
                f", {short:,} of {raw.n_obs:,} prompts shortened to fit the 256-token budget"
                if short else "") + (
                f"; {n_new} prompts embedded in this run" if n_new else
                "; embeddings read from the cache")
        rows.append({"name": name, "group": group, "params": params, "note": note, **r})
    for name, (kind, w, note) in explore_def.items():
        if kind == "names" and not full_names:
            notes.append(f"'{name}' skipped: no gene names (knowledge/gene_descriptions).")
            continue
        print(f"[{name}]", file=sys.stderr, flush=True)
        r = run_explore(raw, kind, w, args.seeds, args.label_key, args.embedder, full_names)
        n_new = sum(x["n_computed"] for x in r["runs"][:1])
        note += f"; mean {r['runs'][0]['mean_words']:.0f} words" + (
            f"; {n_new} texts embedded in this run" if n_new else
            "; embeddings read from the cache")
        rows.append({"name": name, "group": "explore", "params": {"text": kind,
                     "text_weight": w}, "note": note, **r})
    if any(p.get("prompt") for _, _, p, _ in rows_def):
        rate = cold_embed_rate(raw, args.embedder)
        notes.append(f"Cold text embedding ({args.embedder}, empty cache, {rate['n']} stllm "
                     f"prompts): {rate['rate']:.1f} prompts/s, i.e. about "
                     f"{raw.n_obs / rate['rate'] / 60:.1f} min per {raw.n_obs:,}-prompt set; "
                     "text rows' seconds above are with embeddings from the cache unless noted.")
    notes.append("Text rows with a refined graph: refinement seed fixed at 0 (graph_seed=0), so "
                 "prompts and embeddings are shared by the seeds; seeds vary PCA / GMM only.")
    timing = None
    if not args.no_timing:
        print("[timing]", file=sys.stderr, flush=True)
        timing = {"runs": {
            "default": cli_timing(data, args.label_key, []),
            "default, no figures": cli_timing(data, args.label_key, ["--no-plots"]),
            "PCA + GMM baseline": cli_timing(data, args.label_key, [
                "--smooth-rounds", "0", "--refine", "none", "--covariance", "full"]),
            "text path: --prompt stllm": cli_timing(data, args.label_key,
                                                     ["--prompt", "stllm"]),
        }}
    meta = {
        "data_name": data.name, "label_key": args.label_key, "seeds": args.seeds,
        "n_spots": raw.n_obs, "n_scored": int(labelled(raw.obs[args.label_key]).sum()),
        "command": "python -m evals.bench.domains " + " ".join(
            a if " " not in a else repr(a) for a in (argv if argv is not None else sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python "
                   f"{platform.python_version()}",
        "load_start": load_start, "load_end": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "wall": time.perf_counter() - t_start, "notes": notes,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(meta, rows, timing))
    out.with_suffix(".json").write_text(json.dumps(
        {"meta": meta, "rows": rows, "timing": timing}, indent=1, default=str))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
