"""Benchmark of the gene-knowledge layer: description embeddings vs expression, and the store itself.

    python -m evals.bench.knowledge --data-root ../shared/data [--full-build] [--out table.md]

Datasets: osmFISH (cell_type; region on in_benchmark cells), MERFISH hypothalamus (cell_class,
train on bregma 0.26, test on 0.21) and scanpy's bundled pbmc68k_reduced (bulk_labels). Features:
PCA of expression, GenePT wa / aa, wa from genes with a summary only, wa with random gene vectors
(a control: is it the descriptions or just any projection?), and scReader-style ranked sentences.
Scores: kNN (k=10) accuracy / macro F1 and k-means ARI / NMI / label ASW, mean and sd over seeds.
``--full-build`` times the full human store build and query latency.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_datasets(root: Path):
    import anndata as ad
    import scanpy as sc

    osm = ad.read_h5ad(root / "spatial/osmfish_sscortex_codeluppi2018.h5ad")
    sc.pp.normalize_total(osm)
    sc.pp.log1p(osm)
    mer = ad.read_h5ad(root / "spatial/merfish_hypothalamus_moffitt2018.h5ad")
    mer = mer[mer.obs["cell_class"] != "Ambiguous", ~mer.var_names.str.startswith("Blank_")].copy()
    sc.pp.log1p(mer)  # already volume-normalised
    mer.obs["bregma"] = mer.obs["bregma"].astype(str)
    pbmc = sc.datasets.pbmc68k_reduced().raw.to_adata()  # bundled; raw = log-normalised
    pbmc.uns["dataset_info"] = {"organism": "Homo sapiens"}
    return {"osmFISH": (osm, "mouse"), "MERFISH": (mer, "mouse"), "pbmc68k_reduced": (pbmc, "human")}


def build_stores(data: dict, root: Path, store: Path, embedder: str) -> dict:
    from tools import knowledge as kb

    src = root / "knowledge/gene_descriptions"
    out = {}
    for species in ("mouse", "human"):
        genes = sorted({g for a, s in data.values() if s == species for g in map(str, a.var_names)})
        res = kb.build_store(src / f"{species}_gene_descriptions.jsonl.gz", species, store, embedder,
                             genes=genes, progress=True)
        out[species] = res
        print(f"[store] {species}: {res.n_records} genes ({res.n_refseq} RefSeq, {res.n_ortholog} "
              f"ortholog summaries), missing {len(res.missing_genes)}, {res.seconds:.0f} s", file=sys.stderr)
    return out


def features(a, species: str, store: str, embedder: str, screader: str, seed: int = 0) -> list[str]:
    """Compute every feature set into a.obsm; returns the keys."""
    import scanpy as sc

    from tools import gene_embeddings as ge

    keys = []
    b = a.copy()
    sc.pp.scale(b, max_value=10)
    a.obsm["X_pca_expr"] = sc.pp.pca(b.X, n_comps=min(30, a.n_vars - 1), random_state=seed)
    keys.append("X_pca_expr")
    cov = ge.gene_embeddings(a, ge.GeneEmbeddingParams(species=species, store=store, embedder=embedder))
    a.uns["bench_coverage"] = f"{cov.n_with_text}/{cov.n_genes} genes ({cov.n_refseq} RefSeq, " \
                              f"{cov.n_ortholog} ortholog, {cov.n_name_only} name only)"
    ge.cell_embeddings(a, ge.CellEmbeddingParams(species=species, store=store, embedder=embedder))
    keys += ["X_genept_wa", "X_genept_aa"]
    p = ge.CellEmbeddingParams(species=species, store=store, embedder=embedder, method="wa",
                               require_summary=True)
    ge.cell_embeddings(a, p)
    a.obsm["X_wa_summaries"] = a.obsm.pop("X_genept_wa")
    keys.append("X_wa_summaries")
    ge.cell_embeddings(a, ge.CellEmbeddingParams(species=species, store=store, embedder=embedder, method="wa"))
    # control: same construction with random unit gene vectors
    e = np.random.default_rng(seed).normal(size=a.varm["X_genept"].shape).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    x = ge._expression(a, None)
    a.obsm["X_wa_random"] = ge.average_embeddings(x, e, True)[0]
    keys.append("X_wa_random")
    if screader != "none":
        t0 = time.perf_counter()
        ge.rank_sentence_embeddings(a, ge.RankSentenceParams(
            species=species, store=store, embedder=embedder, n_genes=10, text=screader,
            key_added="X_screader"), progress=True)
        print(f"[screader] {a.n_obs} sentences in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        keys.append("X_screader")
    return keys


def score(a, key: str, label: str, seeds, mask=None, split=None) -> dict:
    from tools import gene_embeddings as ge

    acc, f1, ari, nmi, asw = [], [], [], [], []
    for s in seeds:
        kw = dict(embedding=key, label_key=label, mask_key=mask, seed=s)
        if split is not None:
            k = ge.knn_annotate(a, ge.KnnParams(**kw, split_key=split[0], reference=split[1]))
        else:
            k = ge.knn_annotate(a, ge.KnnParams(**kw))
        c = ge.embedding_cluster_scores(a, ge.ClusterScoreParams(**kw))
        acc.append(k.accuracy), f1.append(k.f1), ari.append(c.ari), nmi.append(c.nmi), asw.append(c.asw)
    return {m: (float(np.mean(v)), float(np.std(v))) for m, v in
            zip(("acc", "f1", "ari", "nmi", "asw"), (acc, f1, ari, nmi, asw))}


TASKS = {
    "osmFISH": [("cell_type", None, None), ("region", "in_benchmark", None)],
    "MERFISH": [("cell_class", None, ("bregma", "0.26"))],
    "pbmc68k_reduced": [("bulk_labels", None, None)],
}
NAMES = {"X_pca_expr": "PCA of expression", "X_genept_wa": "GenePT wa", "X_genept_aa": "GenePT aa",
         "X_wa_summaries": "wa, genes with a summary only", "X_wa_random": "wa, random gene vectors",
         "X_screader": "ranked-gene sentence (scReader-style)"}


def full_build(root: Path, embedder: str, limit: int | None = None, n_queries: int = 20) -> str:
    from tools import knowledge as kb

    store = Path(tempfile.mkdtemp(prefix="kb-full-"))
    t0 = time.perf_counter()
    res = kb.build_store(root / "knowledge/gene_descriptions/human_gene_descriptions.jsonl.gz", "human",
                         store, embedder, limit=limit, progress=True)
    build = time.perf_counter() - t0
    queries = ["synaptic vesicle exocytosis", "myelin sheath of oligodendrocytes", "T cell receptor",
               "hemoglobin oxygen transport", "cell cycle mitosis", "insulin secretion"]
    kb.search(queries[0], "human", store, embedder)  # warm-up (model load)
    t0 = time.perf_counter()
    for i in range(n_queries):
        kb.search(queries[i % len(queries)] + f" {i}", "human", store, embedder, k=10)
    lat = (time.perf_counter() - t0) / n_queries
    t0 = time.perf_counter()
    kb.get_genes(["TP53", "GAPDH", "MBP", "CD3E", "SNAP25"], "human", store, embedder)
    get = time.perf_counter() - t0
    what = f"Human build (first {limit} records)" if limit else "Full human build"
    return (f"{what}: {res.n_added} records ({res.n_refseq} with a RefSeq summary) in "
            f"{build:.0f} s with {res.embedder}; search latency {lat * 1000:.0f} ms per query "
            f"(k=10, includes embedding the query); get of 5 symbols {get * 1000:.0f} ms. Store: {store}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=os.environ.get("TISSUETALK_DATA", "../shared/data"))
    ap.add_argument("--store", default=None, help="store folder (default: a new temporary folder)")
    ap.add_argument("--embedder", default="minilm")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--screader", choices=["symbols", "names", "none"], default="names")
    ap.add_argument("--screader-on", nargs="+", default=["osmFISH", "pbmc68k_reduced"],
                    help="datasets that get the (slow to embed) ranked-sentence row")
    ap.add_argument("--datasets", nargs="+", default=list(TASKS))
    ap.add_argument("--full-build", action="store_true", help="also time the full human build")
    ap.add_argument("--full-limit", type=int, default=None, help="only the first N records of that build")
    ap.add_argument("--skip-table", action="store_true", help="only the store build/latency figures")
    ap.add_argument("--out", default=None, help="write the Markdown table here too")
    args = ap.parse_args(argv)
    root = Path(args.data_root)
    if not (root / "spatial").is_dir():
        print(f"error: no spatial/ folder under {root}", file=sys.stderr)
        return 2
    if args.skip_table:
        print(full_build(root, args.embedder, args.full_limit))
        return 0
    store = args.store or tempfile.mkdtemp(prefix="kb-bench-")
    data = {k: v for k, v in load_datasets(root).items() if k in args.datasets}
    build_stores(data, root, Path(store), args.embedder)
    lines = ["| dataset | labels | features | kNN acc | kNN macro F1 | ARI | NMI | ASW |",
             "|---|---|---|---|---|---|---|---|"]
    notes = []
    for name, (a, species) in data.items():
        t0 = time.perf_counter()
        sr = args.screader if name in args.screader_on else "none"
        keys = features(a, species, store, args.embedder, sr)
        notes.append(f"{name}: {a.n_obs} cells, coverage {a.uns['bench_coverage']}")
        for label, mask, split in TASKS[name]:
            for key in keys:
                r = score(a, key, label, args.seeds, mask, split)
                cells = " | ".join(f"{r[m][0]:.3f} ± {r[m][1]:.3f}" for m in ("acc", "f1", "ari", "nmi", "asw"))
                task = label + (f" ({mask})" if mask else "") + (f", train {split[0]} {split[1]}" if split else "")
                lines.append(f"| {name} | {task} | {NAMES[key]} | {cells} |")
                print(lines[-1], file=sys.stderr)
        print(f"[{name}] {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    text = "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    text += f"- ranked-sentence row ({args.screader}, top 10 genes) on {', '.join(args.screader_on)}\n"
    text += f"- seeds {args.seeds} (kNN split and k-means); k=10, cosine; k-means with k = number of labels\n"
    if args.full_build:
        text += "\n" + full_build(root, args.embedder, args.full_limit) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
