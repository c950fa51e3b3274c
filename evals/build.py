"""Generate the question files of the suite from the shared datasets.

    python -m evals.build --data-root ../shared/data/spatial [--knowledge ../shared/data/knowledge]
                          [--out evals/questions]

Writes one ``<category>.jsonl`` per category, ``ci_dlpfc_hvg300.jsonl`` (the fast subset on the
300-gene DLPFC fixture, also part of the full suite) and ``kb_genes.json`` (the genes the eval's
knowledge store must hold). The files hold question text, dataset names and answers only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from evals import builders as B
from evals.suite import CATEGORIES, write_jsonl

HUMAN_INFO = ["MOBP", "SNAP25", "GFAP", "PCP4", "NRGN", "MBP", "CARTPT", "RELN"]
MOUSE_INFO = ["Gad1", "Slc17a6", "Aqp4", "Pdgfra", "Oxt", "Selplg"]
HUMAN_TOPICS = [("myelination", r"myelin"), ("synaptic vesicle release", r"synap|vesicle"),
                ("oxygen transport by hemoglobin", r"hemoglobin|oxygen transport|oxygen[- ]carr"),
                ("antibodies and immunoglobulins", r"immunoglobulin|antibod")]
MOUSE_TOPICS = [("neuropeptide signalling", r"neuropeptide|peptide hormone"),
                ("GABA synthesis and inhibitory neurotransmission", r"GABA|gamma-aminobutyric"),
                ("G protein-coupled receptor signalling", r"G[- ]protein[- ]coupled")]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_dlpfc(root: Path, kdir: Path) -> tuple[list[dict], dict]:
    d = B.Data(B.DLPFC, root)
    lk = "ground_truth"
    out = B.data_questions(d, lk, "spot", ["Layer3", "WM", "Layer1"], group_noun="layer")
    out.append(B.n_categories_question(d, lk, "cortical layers (counting white matter as one)"))
    out += B.domain_questions(d, lk, 7, "cortical layers")
    out += B.border_questions(d, lk, radius=7.0)
    mk = B.marker_questions(d, lk)
    out += mk
    out += B.marker_location_questions(d, lk, per_group=2)
    out += B.top_expressed_questions(d, lk, ["Layer1", "Layer4", "WM"])
    out += B.gsea_questions(d, lk, B.HALLMARK_HUMAN, kdir / "gene_sets/h.all.v2024.1.Hs.symbols.gmt",
                            ["Layer1", "Layer2", "Layer3", "Layer4", "Layer5", "Layer6", "WM"])
    out += B.ora_questions(d, lk, B.GO_BP_HUMAN, kdir / "gene_sets/enrichr.GO_Biological_Process_2021.human.gmt.gz",
                           ["WM", "Layer1", "Layer4", "Layer5", "Layer6"])
    markers = {x["id"].rsplit(".", 1)[-1]: x["answer"] for x in mk}
    out += open_dlpfc(d, markers)
    te = B.top_expressed(d.X, d.genes, d.obs[lk], n=10)
    human_universe = {g for v in markers.values() for g in v} | {g for v in te.values() for g in v}
    return out, {"human": human_universe}


def open_dlpfc(d: B.Data, markers: dict) -> list[dict]:
    """Hand-written questions that need several tools (truth from the builders)."""
    lk = "ground_truth"
    obs = d.obs
    two = obs[lk].isin(["Layer5", "Layer6"]).to_numpy()
    pair = B.top_markers(d.X[two], d.genes, obs[lk][two].astype(str).to_numpy(), n=20)
    return [
        B.q("domains.dlpfc_151673.open.layers_and_wm_markers", "domains", "open", d.name,
            "Find the layers in this slice and name white matter's markers.", None,
            {"kind": "all_of", "parts": [
                {"kind": "ari", "label_key": lk, "min": 0.3},
                {"kind": "precision_at_k", "k": 5, "min": 0.6, "answer": markers["wm"],
                 "evidence": {"from": "group_markers", "group": "WM"}}]},
            notes="ARI >= 0.3 of the agent's domains, and WM's top-5 markers within the AUROC top 20"),
        B.q("markers.dlpfc_151673.open.layer5_vs_layer6", "markers", "open", d.name,
            "Which genes are differentially expressed in Layer5 compared with Layer6?", pair["Layer5"],
            {"kind": "precision_at_k", "k": 5, "min": 0.6,
             "evidence": {"from": "de_genes", "group": "Layer5", "reference": "Layer6"}},
            notes="truth: top 20 AUROC genes of Layer5 vs Layer6 only"),
        B.q("knowledge.dlpfc_151673.open.top_wm_marker_function", "knowledge", "open", d.name,
            "What is the top marker gene of white matter (WM) in this slice, and what does it do?",
            ["myelin"], {"kind": "must_mention"}, needs_kb="human",
            notes=f"WM's top AUROC markers {markers['wm'][:3]} are myelin genes; the answer must say so"),
        B.q("data.dlpfc_151673.open.describe_and_count", "data", "open", d.name,
            "Give me an overview of this dataset, and tell me how many spots are in Layer1.",
            int((obs[lk] == "Layer1").sum()),
            {"kind": "numeric", "tol": 0, "evidence": {"from": "path", "tool": "describe_dataset",
                                                        "path": ["annotations", lk, "Layer1"]}}),
    ]


def build_hvg(root: Path) -> list[dict]:
    d = B.Data(B.DLPFC_HVG, root)
    lk = "ground_truth"
    out = B.data_questions(d, lk, "spot", ["Layer5"])
    out.append(B.n_categories_question(d, lk, "cortical layers (counting white matter as one)"))
    out += B.domain_questions(d, lk, 7, "cortical layers",
                              templates=["Find 7 spatial domains in this slice and compare them with ground_truth."])
    out += B.marker_questions(d, lk, groups=["WM", "Layer1", "Layer5"])
    out += B.marker_location_questions(d, lk, groups=["WM", "Layer5", "Layer2"])
    return out


def build_mob(root: Path, kdir: Path) -> list[dict]:
    d = B.Data(B.MOB, root)
    lk = "ground_truth"
    layers = sorted(B.category_counts(d.obs, lk).index)
    out = B.data_questions(d, lk, "spot", layers[:2])
    out.append(B.n_categories_question(d, lk, "layers"))
    out += B.domain_questions(d, lk, 5, "olfactory bulb layers",
                              templates=["Find 5 spatial domains in this olfactory bulb section.",
                                         "Segment the tissue into 5 spatial domains and compare them with the "
                                         "annotated layers."])
    out += B.marker_questions(d, lk)
    out += B.marker_location_questions(d, lk)
    out += B.gsea_questions(d, lk, B.HALLMARK_MOUSE, kdir / "gene_sets/mh.all.v2023.1.Mm.symbols.gmt", layers,
                            n_yes=1, n_no=0)
    gm = B.top_markers(d.X, d.genes, d.obs[lk], n=20)
    out.append(B.q("domains.st_mouse_olfactory_bulb_stahl2016.open.domains_and_gcl_markers", "domains", "open",
                   d.name, "Find 5 spatial domains in this olfactory bulb and tell me the marker genes of the "
                   "Granular Cell Layer.", None,
                   {"kind": "all_of", "parts": [
                       {"kind": "ari", "label_key": lk, "min": 0.3},
                       {"kind": "precision_at_k", "k": 5, "min": 0.6, "answer": gm["1: Granular Cell Layer"],
                        "evidence": {"from": "group_markers", "group": "1: Granular Cell Layer"}}]}))
    return out


def build_osmfish(root: Path) -> list[dict]:
    d = B.Data(B.OSMFISH, root)
    rk, ck = "region", "cell_type"
    out = B.data_questions(d, rk, "cell", ["Layer 4", "Hippocampus"], group_noun="region",
                           exclude=("Excluded",))
    out.append(B.n_categories_question(d, rk, "anatomical regions", exclude=("Excluded",)))
    out += B.domain_questions(d, rk, 11, "anatomical regions", mask="in_benchmark", exclude=("Excluded",),
                              templates=["Find 11 spatial domains in this tissue and compare them with the "
                                         "annotated regions.", "Segment this cortex section into 11 spatial domains."])
    out += B.marker_questions(d, rk, groups=["Layer 6", "White matter", "Hippocampus", "Pia Layer 1", "Ventricle"],
                              n_truth=5, k=3, min_prec=0.66, noun="region", exclude=("Excluded",))
    out += B.marker_location_questions(d, rk, noun="region", exclude=("Excluded",),
                                       groups=["Layer 6", "White matter", "Hippocampus", "Pia Layer 1",
                                               "Ventricle", "Layer 4"])
    out += B.marker_questions(d, ck, groups=["Pyramidal L6", "Oligodendrocyte Mature", "Astrocyte Gfap",
                                             "Microglia", "Inhibitory Vip"],
                              n_truth=5, k=3, min_prec=0.66, noun="cell type", exclude=("Excluded",))
    out += B.region_composition_questions(d, rk, ck)
    comp = B.region_composition(d.obs, rk, ck)
    wm_top = comp.loc["White matter"].idxmax()
    ctm = B.top_markers(d.X, d.genes, d.obs[ck].astype(object).where(d.obs[ck] != "Excluded"), n=5)
    out.append(B.q("composition.osmfish_sscortex_codeluppi2018.open.wm_type_and_markers", "composition", "open",
                   d.name, "Which cell type dominates the White matter region, and what are its marker genes?",
                   None, {"kind": "all_of", "parts": [
                       {"kind": "exact_label", "answer": wm_top, "options": list(comp.columns),
                        "evidence": {"from": "region_ranking", "region": "White matter",
                                     "options": list(comp.columns)}},
                       {"kind": "precision_at_k", "k": 3, "min": 0.66, "answer": ctm[wm_top],
                        "evidence": {"from": "group_markers", "group": wm_top}}]}))
    return out


MERFISH_TYPES = ["Astrocyte", "Microglia", "Excitatory", "Inhibitory", "OD Mature 2", "OD Immature 1",
                 "Endothelial 1", "Pericytes"]


def build_merfish(root: Path) -> tuple[list[dict], dict]:
    d = B.Data(B.MERFISH, root)
    ck, sk = "cell_class", "slice_id"
    out = B.data_questions(d, ck, "cell", ["Astrocyte", "Microglia"], group_noun="cell class")
    out.append(B.n_categories_question(d, ck, "cell classes", exclude=("Ambiguous",)))
    out += B.marker_questions(d, ck, groups=MERFISH_TYPES, n_truth=10, noun="cell class", exclude=("Ambiguous",))
    out += B.marker_location_questions(d, ck, noun="cell class", exclude=("Ambiguous",),
                                       groups=MERFISH_TYPES)
    out += B.neighbour_questions(d, ck, MERFISH_TYPES, radius=30.0, section_key=sk)
    types = MERFISH_TYPES
    triples = []
    for c in types:
        for i, a in enumerate(types):
            for b in types[i + 1:]:
                if c not in (a, b):
                    triples.append((c, a, b))
    closer = B.closer_questions(d, ck, triples, section_key=sk, min_ratio=2.0)
    # at most two per centre type, to keep the family varied
    seen: dict[str, int] = {}
    for x in closer:
        c = x["id"].split(".")[3]
        if seen.get(c, 0) < 2:
            out.append(x)
            seen[c] = seen.get(c, 0) + 1
    pairs = [("Astrocyte", "OD Mature 2"), ("Astrocyte", "Endothelial 1"), ("Microglia", "OD Mature 2"),
             ("Inhibitory", "Excitatory"), ("Excitatory", "Astrocyte"), ("OD Mature 2", "Astrocyte")]
    out += B.near_direction_questions(d, ck, pairs, section_key=sk)
    out += B.near_direction_questions(d, ck, pairs, section_key=sk, perturbation=True)
    out += B.generation_questions(d, ck, MERFISH_TYPES, "bregma", "0.21")
    mk = B.top_markers(d.X, d.genes, d.obs[ck].astype(object).where(d.obs[ck] != "Ambiguous"), n=10)
    nb = B.neighbour_counts(d.coords, d.obs[ck].astype(object).where(d.obs[ck] != "Ambiguous"), "Microglia",
                            30.0, d.obs[sk]).drop("Microglia")
    labels = sorted(set(d.obs[ck].astype(str)) - {"Ambiguous"})
    out.append(B.q("composition.merfish_hypothalamus_moffitt2018.open.microglia_neighbours_markers",
                   "composition", "open", d.name,
                   "Which cell types surround Microglia, and what are the marker genes of Microglia?", None,
                   {"kind": "all_of", "parts": [
                       {"kind": "exact_label", "answer": nb.index[0], "options": labels,
                        "evidence": {"from": "neighbour_ranking", "center": "Microglia", "options": labels}},
                       {"kind": "precision_at_k", "k": 5, "min": 0.6, "answer": mk["Microglia"],
                        "evidence": {"from": "group_markers", "group": "Microglia"}}]},
                   notes="most common neighbour within 30 µm (not Microglia), and Microglia's markers"))
    ex = d.obs[ck].isin(["Excitatory", "Inhibitory"]).to_numpy()
    pair = B.top_markers(d.X[ex], d.genes, d.obs[ck][ex].astype(str).to_numpy(), n=10)
    out.append(B.q("markers.merfish_hypothalamus_moffitt2018.open.excitatory_vs_inhibitory", "markers", "open",
                   d.name, "Compare Excitatory and Inhibitory neurons: which genes are higher in the "
                   "Excitatory ones?", pair["Excitatory"],
                   {"kind": "precision_at_k", "k": 5, "min": 0.6,
                    "evidence": {"from": "de_genes", "group": "Excitatory", "reference": "Inhibitory"}}))
    return out, {"mouse": set(d.genes)}


def build_knowledge(kdir: Path, universe: dict) -> tuple[list[dict], dict]:
    gd = kdir / "gene_descriptions"
    human = B.read_descriptions(gd / "human_gene_descriptions.jsonl.gz")
    mouse = B.read_descriptions(gd / "mouse_gene_descriptions.jsonl.gz")
    uh = sorted(g for g in set(universe["human"]) | set(HUMAN_INFO) if g in human)
    um = sorted(g for g in set(universe["mouse"]) | set(MOUSE_INFO) if g in mouse)
    # asked with a dataset of the same species loaded, as a user would (its genes are named)
    out = (B.gene_info_questions(human, HUMAN_INFO, "human", B.DLPFC)
           + B.gene_info_questions(mouse, MOUSE_INFO, "mouse", B.MERFISH))
    out += B.gene_search_questions(human, uh, "human", HUMAN_TOPICS, dataset=B.DLPFC)
    out += B.gene_search_questions(mouse, um, "mouse", MOUSE_TOPICS, human=human, dataset=B.MERFISH)
    return out, {"human": uh, "mouse": um}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evals.build", description=__doc__.split("\n\n")[0])
    default_root = os.environ.get("TISSUETALK_DATA")
    ap.add_argument("--data-root", default=str(Path(default_root) / "spatial") if default_root
                    else "../shared/data/spatial", help="folder with the .h5ad datasets")
    ap.add_argument("--knowledge", default=None, help="knowledge folder (default: <data-root>/../knowledge)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "questions"))
    args = ap.parse_args(argv)
    root = Path(args.data_root)
    kdir = Path(args.knowledge) if args.knowledge else root.parent / "knowledge"
    t0 = time.time()
    qs: list[dict] = []
    log("DLPFC 151673")
    x, uni = build_dlpfc(root, kdir)
    qs += x
    log("DLPFC hvg300 fixture (CI subset)")
    ci = build_hvg(root)
    log("olfactory bulb")
    qs += build_mob(root, kdir)
    log("osmFISH")
    qs += build_osmfish(root)
    log("MERFISH")
    x, u2 = build_merfish(root)
    qs += x
    uni.update(u2)
    uni["human"] |= set(B.Data(B.DLPFC_HVG, root).genes)
    uni["mouse"] |= set(B.Data(B.OSMFISH, root).genes)
    log("knowledge")
    x, kb = build_knowledge(kdir, uni)
    qs += x
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for cat in CATEGORIES:
        write_jsonl(out / f"{cat}.jsonl", [x for x in qs if x["category"] == cat])
    write_jsonl(out / "ci_dlpfc_hvg300.jsonl", ci)
    from tools.io import write_text

    write_text(out / "kb_genes.json", json.dumps(kb, indent=0) + "\n")
    n = {c: sum(x["category"] == c for x in qs + ci) for c in CATEGORIES}
    log(f"{len(qs) + len(ci)} questions ({len(ci)} in the CI subset) in {time.time() - t0:.0f} s: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
