"""Question builders: ground truth from the data's own annotations, computed here with
numpy / pandas / scipy (never with the tools under test).

The first half holds small, testable statistics (counts, one-vs-rest AUROC markers, region
composition, neighbour counts, nearest-type distances, near-vs-far differences, rank-based set
enrichment, hypergeometric over-representation); the second half turns them into question
families over one dataset. Each family keeps only clear-cut cases (a margin between the right
answer and the runner-up), so a question's answer does not hinge on a method detail.

A question is a dict (see evals/suite.py): id, category, family, dataset, question, answer, grade.
"""
from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

# ---------------------------------------------------------------------------- statistics
def lognorm(X, counts: bool = True, target_sum: float = 1e4) -> np.ndarray:
    """Dense log1p expression; raw counts are first scaled to `target_sum` per observation."""
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    X = X.astype(np.float64)
    if counts:
        tot = X.sum(1, keepdims=True)
        tot[tot == 0] = 1
        X = X / tot * target_sum
    return np.log1p(X)


def category_counts(obs: pd.DataFrame, column: str) -> pd.Series:
    """Observations per category of `column` (NaN left out), most first."""
    return obs[column].dropna().astype(str).value_counts()


def auroc_one_vs_rest(X: np.ndarray, labels) -> pd.DataFrame:
    """groups x genes: AUROC of each gene separating a group from all other labelled obs
    (Mann-Whitney U / (n1 n0), ties averaged). NaN labels are left out."""
    from scipy.stats import rankdata

    labels = pd.Series(labels).astype(object)
    ok = labels.notna().to_numpy()
    lab = labels[ok].astype(str).to_numpy()
    R = rankdata(X[ok], axis=0)
    out = {}
    for g in sorted(set(lab)):
        m = lab == g
        n1, n0 = m.sum(), (~m).sum()
        out[g] = (R[m].sum(0) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return pd.DataFrame(out).T


def mean_difference(X: np.ndarray, labels) -> pd.DataFrame:
    """groups x genes: mean in the group minus mean in the rest (log scale)."""
    labels = pd.Series(labels).astype(object)
    ok = labels.notna().to_numpy()
    lab = labels[ok].astype(str).to_numpy()
    Xo = X[ok]
    return pd.DataFrame({g: Xo[lab == g].mean(0) - Xo[lab != g].mean(0)
                         for g in sorted(set(lab))}).T


def top_markers(X: np.ndarray, genes, labels, n: int = 20, min_pct: float = 0.1) -> dict[str, list[str]]:
    """Per group: the n genes with the highest one-vs-rest AUROC among genes higher in the group
    and detected in at least `min_pct` of its observations."""
    genes = np.asarray(genes, dtype=str)
    auc = auroc_one_vs_rest(X, labels)
    diff = mean_difference(X, labels)
    lab = pd.Series(labels).astype(object)
    out = {}
    for g in auc.index:
        m = (lab.astype(str) == g).to_numpy() & lab.notna().to_numpy()
        pct = (X[m] > 0).mean(0)
        ok = (diff.loc[g].to_numpy() > 0) & (pct >= min_pct)
        score = np.where(ok, auc.loc[g].to_numpy(), -np.inf)
        order = np.argsort(-score, kind="stable")
        out[g] = [genes[i] for i in order[:n] if np.isfinite(score[i])]
    return out


def top_expressed(X: np.ndarray, genes, labels, n: int = 10) -> dict[str, list[str]]:
    """Per group: the n genes with the highest mean (log) expression."""
    genes = np.asarray(genes, dtype=str)
    lab = pd.Series(labels).astype(object)
    out = {}
    for g in sorted(set(lab.dropna().astype(str))):
        m = (lab.astype(str) == g).to_numpy() & lab.notna().to_numpy()
        mu = X[m].mean(0)
        out[g] = [genes[i] for i in np.argsort(-mu, kind="stable")[:n]]
    return out


def region_composition(obs: pd.DataFrame, region_key: str, label_key: str,
                       exclude=("Excluded",)) -> pd.DataFrame:
    """regions x labels cell counts (excluded / NaN categories dropped)."""
    o = obs[[region_key, label_key]].dropna().astype(str)
    o = o[~o[region_key].isin(exclude) & ~o[label_key].isin(exclude)]
    return pd.crosstab(o[region_key], o[label_key])


def _sections(n: int, sections) -> np.ndarray:
    return np.zeros(n, dtype=object) if sections is None else np.asarray(sections).astype(str)


def neighbour_counts(coords, labels, center: str, radius: float, sections=None) -> pd.Series:
    """(center cell, neighbour) pairs within `radius` (same section, self excluded), by the
    neighbour's label; NaN-labelled cells are left out entirely."""
    from scipy.spatial import cKDTree

    lab = pd.Series(labels).astype(object)
    ok = lab.notna().to_numpy()
    xy = np.asarray(coords, dtype=float)[ok, :2]
    lab = lab[ok].astype(str).to_numpy()
    sec = _sections(len(ok), sections)[ok]
    counts: dict[str, int] = {}
    for s in np.unique(sec):
        ms = sec == s
        tree = cKDTree(xy[ms])
        lab_s = lab[ms]
        cidx = np.flatnonzero(lab_s == center)
        for i, nb in zip(cidx, tree.query_ball_point(xy[ms][cidx], r=radius)):
            for j in nb:
                if j != i:
                    counts[lab_s[j]] = counts.get(lab_s[j], 0) + 1
    return pd.Series(counts, dtype=float).sort_values(ascending=False)


def nearest_type_distance(coords, labels, center: str, other: str, sections=None) -> np.ndarray:
    """For each `center` cell (in index order): distance to the nearest other cell labelled
    `other` in the same section (inf if there is none)."""
    from scipy.spatial import cKDTree

    lab = pd.Series(labels).astype(object).astype(str).to_numpy()
    xy = np.asarray(coords, dtype=float)[:, :2]
    sec = _sections(len(lab), sections)
    cidx = np.flatnonzero(lab == center)
    out = np.full(len(cidx), np.inf)
    for s in np.unique(sec[cidx]):
        sel = sec[cidx] == s
        c = cidx[sel]
        o = np.flatnonzero((sec == s) & (lab == other))
        o_set = o
        if center == other:
            if len(o) < 2:
                continue
            d, j = cKDTree(xy[o]).query(xy[c], k=2)
            d = np.where(o_set[j[:, 0]] == c, d[:, 1], d[:, 0])
        else:
            if not len(o):
                continue
            d, _ = cKDTree(xy[o]).query(xy[c], k=1)
        out[sel] = d
    return out


def near_far_groups(coords, labels, target: str, neighbour: str, near: float, far: float,
                    sections=None) -> tuple[np.ndarray, np.ndarray]:
    """Indices of `target` cells with a `neighbour` cell within `near`, and with none within `far`."""
    lab = pd.Series(labels).astype(object).astype(str).to_numpy()
    t = np.flatnonzero(lab == target)
    d = nearest_type_distance(coords, lab, target, neighbour, sections)
    return t[d <= near], t[d > far]


def near_far_difference(X: np.ndarray, genes, near_idx, far_idx) -> pd.DataFrame:
    """Per gene: mean(near) - mean(far) and the two-sided Mann-Whitney p-value."""
    from scipy.stats import mannwhitneyu

    a, b = X[near_idx], X[far_idx]
    p = mannwhitneyu(a, b, axis=0, alternative="two-sided").pvalue
    return pd.DataFrame({"gene": np.asarray(genes, dtype=str), "diff": a.mean(0) - b.mean(0),
                         "p": p}).sort_values("p", kind="stable").reset_index(drop=True)


def read_gmt(path) -> dict[str, list[str]]:
    op = gzip.open if str(path).endswith(".gz") else open
    sets = {}
    with op(path, "rt", encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) > 2:
                sets[parts[0]] = [g for g in parts[2:] if g]
    return sets


def set_rank_enrichment(gene_scores: pd.Series, sets: dict[str, list[str]], min_size: int = 15,
                        max_size: int = 500) -> pd.DataFrame:
    """Per gene set: is it shifted up or down in the ranking of `gene_scores` (two-sided Mann-
    Whitney of its genes' scores vs all other genes). Columns: term, n, shift (AUROC - 0.5), p."""
    from scipy.stats import mannwhitneyu

    s = gene_scores.dropna()
    up = {g.upper(): g for g in s.index}
    rows = []
    for term, genes in sets.items():
        members = {up[g.upper()] for g in genes if g.upper() in up}
        if not (min_size <= len(members) <= max_size):
            continue
        m = s.index.isin(list(members))
        res = mannwhitneyu(s[m], s[~m], alternative="two-sided")
        rows.append((term, int(m.sum()), res.statistic / (m.sum() * (~m).sum()) - 0.5, res.pvalue))
    return pd.DataFrame(rows, columns=["term", "n", "shift", "p"]).sort_values("p").reset_index(drop=True)


def overrepresentation(genes, background, sets: dict[str, list[str]], min_size: int = 5) -> pd.DataFrame:
    """Hypergeometric over-representation of `genes` within `background`; BH-adjusted."""
    from scipy.stats import hypergeom

    bg = {g.upper() for g in background}
    hits = {g.upper() for g in genes} & bg
    rows = []
    for term, members in sets.items():
        mem = {g.upper() for g in members} & bg
        if len(mem) < min_size:
            continue
        k = len(hits & mem)
        p = hypergeom.sf(k - 1, len(bg), len(mem), len(hits)) if k else 1.0
        rows.append((term, k, len(mem), p))
    df = pd.DataFrame(rows, columns=["term", "overlap", "size", "p"]).sort_values("p").reset_index(drop=True)
    n = len(df)
    adj = (df["p"] * n / np.arange(1, n + 1)).to_numpy()
    df["padj"] = np.minimum.accumulate(adj[::-1])[::-1].clip(max=1)
    return df


def ranked_overlap(pred, truth, k: int) -> float:
    """|top-k(pred) ∩ top-k(truth)| / k (TissueNarrator overlap@k)."""
    return len(set(list(pred)[:k]) & set(list(truth)[:k])) / k


# ---------------------------------------------------------------------------- datasets
DLPFC, DLPFC_HVG = "dlpfc_151673", "fixture_dlpfc_151673_hvg300"
MERFISH, OSMFISH, MOB = ("merfish_hypothalamus_moffitt2018", "osmfish_sscortex_codeluppi2018",
                         "st_mouse_olfactory_bulb_stahl2016")
HALLMARK_HUMAN = "{knowledge}/gene_sets/h.all.v2024.1.Hs.symbols.gmt"
HALLMARK_MOUSE = "{knowledge}/gene_sets/mh.all.v2023.1.Mm.symbols.gmt"
GO_BP_HUMAN = "{knowledge}/gene_sets/enrichr.GO_Biological_Process_2021.human.gmt.gz"


class Data:
    """One dataset and its derived matrices, read once per build."""

    def __init__(self, name: str, root: Path):
        import anndata as ad

        self.name = name
        self.adata = ad.read_h5ad(Path(root) / f"{name}.h5ad")
        a = self.adata
        keep = ~a.var_names.str.startswith("Blank_")
        self.genes = np.asarray(a.var_names[keep], dtype=str)
        counts = name != MERFISH  # MERFISH is volume-normalised already
        self.X = lognorm(a.X[:, np.flatnonzero(keep)], counts=counts)
        self.obs = a.obs
        self.coords = np.asarray(a.obsm["spatial"], dtype=float)
        self.info = dict(a.uns.get("dataset_info", {}))


def q(qid, category, family, dataset, question, answer, grade, **extra) -> dict:
    d = {"id": qid, "category": category, "family": family, "dataset": dataset,
         "question": question, "answer": answer, "grade": grade}
    d.update(extra)
    return d


def slug(s) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", str(s)).strip("_").lower()


def display(label) -> str:
    """A label as a biologist writes it ('1: Granular Cell Layer' -> 'Granular Cell Layer')."""
    return re.sub(r"^\d+\s*:\s*", "", str(label))


def pick(templates: list[str], i: int) -> str:
    return templates[i % len(templates)]


# ---------------------------------------------------------------------------- data
def data_questions(d: Data, label_key: str, noun: str, values: list[str] | None = None,
                   group_noun: str = "layer", exclude=()) -> list[dict]:
    a, out = d.adata, []
    out.append(q(f"data.{d.name}.n_obs", "data", "size", d.name,
                 pick([f"How many {noun}s are in this dataset?", f"How many {noun}s does this slice contain?"],
                      len(d.name)), int(a.n_obs),
                 {"kind": "numeric", "tol": 0, "evidence": {"from": "path", "tool": "describe_dataset",
                                                             "path": ["n_obs"]}}))
    out.append(q(f"data.{d.name}.n_vars", "data", "size", d.name,
                 "How many genes were measured in this dataset?", int(a.n_vars),
                 {"kind": "numeric", "tol": 0, "evidence": {"from": "path", "tool": "describe_dataset",
                                                             "path": ["n_vars"]}}))
    counts = category_counts(d.obs, label_key)
    cats = list(counts.index)
    counts = counts.drop(list(exclude), errors="ignore")
    templates = [f"How many {noun}s are annotated as {{v}}?", f"How many {noun}s belong to {{v}}?",
                 f"What is the number of {{v}} {noun}s in the annotation?"]
    for i, v in enumerate(values or cats[:2]):
        out.append(q(f"data.{d.name}.count.{slug(v)}", "data", "annotation_count", d.name,
                     pick(templates, i).format(v=display(v)), int(counts[v]),
                     {"kind": "numeric", "tol": 0, "evidence": {
                         "from": "path", "tool": "describe_dataset", "path": ["annotations", label_key, v]}}))
    if counts.iloc[0] >= 1.1 * counts.iloc[1]:
        ex = f" (not counting {', '.join(exclude)})" if exclude else ""
        out.append(q(f"data.{d.name}.most_common", "data", "most_common", d.name,
                     f"Which {group_noun} has the most {noun}s{ex}?", counts.index[0],
                     {"kind": "exact_label", "options": cats, "evidence": {
                         "from": "argmax_key", "tool": "describe_dataset", "path": ["annotations", label_key],
                         "exclude": ["NA", *exclude]}}))
    org = str(d.info.get("organism", ""))
    if org:
        ans = "human" if "sapiens" in org else "mouse"
        out.append(q(f"data.{d.name}.organism", "data", "organism", d.name,
                     "Which species does this tissue come from, human or mouse?", ans,
                     {"kind": "choice", "options": ["human", "mouse"]}))
    tech = str(d.info.get("technology", ""))
    options = ["Visium", "MERFISH", "osmFISH", "Spatial Transcriptomics"]
    hit = [o for o in options if o.lower() in tech.lower()]
    if len(hit) == 1:
        out.append(q(f"data.{d.name}.technology", "data", "technology", d.name,
                     "Which spatial transcriptomics technology produced this dataset: Visium, MERFISH, "
                     "osmFISH or Spatial Transcriptomics?", hit[0], {"kind": "choice", "options": options},
                     notes=f"uns['dataset_info']['technology'] = {tech!r}"))
    return out


def n_categories_question(d: Data, label_key: str, noun: str, exclude=()) -> dict:
    cats = [c for c in category_counts(d.obs, label_key).index if c not in exclude]
    ex = f" (not counting {', '.join(exclude)})" if exclude else ""
    return q(f"domains.{d.name}.n_{slug(label_key)}", "domains", "how_many_domains", d.name,
             f"How many {noun} are annotated in this tissue{ex}?", len(cats),
             {"kind": "numeric", "tol": 0, "evidence": {
                 "from": "count_keys", "tool": "describe_dataset", "path": ["annotations", label_key],
                 "exclude": ["NA", *exclude]}})


# ---------------------------------------------------------------------------- domains
def domain_questions(d: Data, label_key: str, n: int, noun: str, min_ari: float = 0.3,
                     mask: str | None = None, exclude=(), templates=None) -> list[dict]:
    templates = templates or [
        f"Find the {n} spatial domains of this tissue and compare them with the annotated {noun}.",
        f"Segment the tissue into {n} spatial domains.",
        f"Can you find the {noun} in this slice? Cluster the spots into {n} spatial domains."]
    out = []
    for i, t in enumerate(templates):
        g = {"kind": "ari", "label_key": label_key, "min": min_ari, "n_domains": n}
        if mask:
            g["mask"] = mask
        if exclude:
            g["exclude"] = list(exclude)
        out.append(q(f"domains.{d.name}.find_{n}.{i}", "domains", "find_domains", d.name, t,
                     None, g, notes=f"ARI >= {min_ari} against obs['{label_key}']"))
    return out


def border_questions(d: Data, label_key: str, radius: float, share: float = 0.15) -> list[dict]:
    """Which annotated layers touch each layer: labels with >= `share` of the boundary pairs
    within `radius` (adjacent spots); kept if the same set holds at 1.5x the radius."""
    labs = [c for c in category_counts(d.obs, label_key).index]
    out = []
    for i, c in enumerate(sorted(labs)):
        sets = []
        for r in (radius, 1.5 * radius):
            nb = neighbour_counts(d.coords, d.obs[label_key], c, r).drop(c, errors="ignore")
            frac = nb / nb.sum()
            sets.append(list(frac[frac >= share].index))
        if set(sets[0]) != set(sets[1]) or not sets[0]:
            continue
        truth = sets[0]
        qtext = pick(["Which layers border {c}?", "Which layers are the neighbours of {c}?",
                      "Which annotated layers lie directly next to {c}?"], i).format(c=c)
        out.append(q(f"domains.{d.name}.borders.{slug(c)}", "domains", "bordering_layers", d.name,
                     qtext, truth, {"kind": "precision_at_k", "k": len(truth), "min": 0.5, "options": labs,
                                    "evidence": {"from": "neighbour_ranking", "center": c, "by": "count",
                                                 "options": labs}}))
    return out


# ---------------------------------------------------------------------------- markers
def marker_questions(d: Data, label_key: str, groups=None, n_truth: int = 20, k: int = 5,
                     min_prec: float = 0.6, noun: str = "layer", exclude=()) -> list[dict]:
    lab = d.obs[label_key].astype(object).where(~d.obs[label_key].isin(list(exclude)))
    tm = top_markers(d.X, d.genes, lab, n=n_truth)
    out = []
    templates = ["What are the top marker genes of {g}?", "Which genes mark {g}?",
                 "What genes characterise {g} compared with the rest of the tissue?"]
    for i, g in enumerate(groups or sorted(tm)):
        out.append(q(f"markers.{d.name}.top.{slug(g)}", "markers", "top_markers", d.name,
                     pick(templates, i).format(g=display(g)), tm[g],
                     {"kind": "precision_at_k", "k": k, "min": min_prec,
                      "evidence": {"from": "group_markers", "group": g}},
                     notes=f"truth: top {n_truth} one-vs-rest AUROC markers of {label_key}={g}"))
    return out


def marker_location_questions(d: Data, label_key: str, per_group: int = 1, noun: str = "layer",
                              min_auc: float = 0.75, margin: float = 0.1, exclude=(),
                              groups=None) -> list[dict]:
    """'Which layer is GENE a marker of?': genes among a group's top-3 markers whose AUROC there
    is >= min_auc and beats every other group by `margin`."""
    lab = d.obs[label_key].astype(object).where(~d.obs[label_key].isin(list(exclude)))
    auc = auroc_one_vs_rest(d.X, lab)
    tm = top_markers(d.X, d.genes, lab, n=3)
    options = list(auc.index)
    out, i = [], 0
    templates = ["Which {noun} is {gene} a marker of?", "In which {noun} is {gene} most specifically expressed?",
                 "{gene} marks one {noun} of this tissue: which one?"]
    for g in groups or options:
        n = 0
        for gene in tm.get(g, []):
            col = auc[gene] if gene in auc.columns else auc.iloc[:, list(d.genes).index(gene)]
            s = col.sort_values(ascending=False)
            if s.index[0] != g or s.iloc[0] < min_auc or s.iloc[0] - s.iloc[1] < margin:
                continue
            out.append(q(f"markers.{d.name}.where.{slug(gene)}", "markers", "marker_location", d.name,
                         pick(templates, i).format(noun=noun, gene=gene), g,
                         {"kind": "exact_label", "options": options,
                          "evidence": {"from": "marker_group", "gene": gene}},
                         notes=f"AUROC {s.iloc[0]:.2f} in {g}, next {s.index[1]} {s.iloc[1]:.2f}"))
            i += 1
            n += 1
            if n >= per_group:
                break
    return out


def top_expressed_questions(d: Data, label_key: str, groups, n_truth: int = 10, k: int = 5,
                            min_prec: float = 0.6) -> list[dict]:
    te = top_expressed(d.X, d.genes, d.obs[label_key], n=n_truth)
    return [q(f"markers.{d.name}.expressed.{slug(g)}", "markers", "top_expressed", d.name,
              f"Which genes are most highly expressed in {display(g)}?", te[g],
              {"kind": "precision_at_k", "k": k, "min": min_prec,
               "evidence": {"from": "group_markers", "group": g}},
              notes=f"truth: top {n_truth} genes by mean log-normalised expression in {g}")
            for g in groups]


# ---------------------------------------------------------------------------- composition
def region_composition_questions(d: Data, region_key: str, label_key: str, margin: float = 1.2) -> list[dict]:
    comp = region_composition(d.obs, region_key, label_key)
    labels = list(comp.columns)
    out = []
    t1 = ["Which cell type is most abundant in {r}?", "What is the most common cell type in {r}?"]
    t3 = ["What are the three most abundant cell types in {r}?",
          "Which cell types make up most of {r}? Name the top three."]
    for i, r in enumerate(comp.index):
        row = comp.loc[r].sort_values(ascending=False, kind="stable")
        if len(row) < 3:
            continue
        if row.iloc[0] >= margin * row.iloc[1]:
            out.append(q(f"composition.{d.name}.top1.{slug(r)}", "composition", "most_abundant", d.name,
                         pick(t1, i).format(r=r), row.index[0],
                         {"kind": "exact_label", "options": labels,
                          "evidence": {"from": "region_ranking", "region": r, "options": labels}},
                         notes=f"{row.index[0]} {row.iloc[0]} vs {row.index[1]} {row.iloc[1]}"))
        if row.iloc[2] > 0 and (len(row) == 3 or row.iloc[2] > row.iloc[3]):
            out.append(q(f"composition.{d.name}.top3.{slug(r)}", "composition", "most_abundant_3", d.name,
                         pick(t3, i).format(r=r), list(row.index[:3]),
                         {"kind": "precision_at_k", "k": 3, "min": 0.66, "options": labels,
                          "evidence": {"from": "region_ranking", "region": r, "options": labels}}))
    return out


def neighbour_questions(d: Data, label_key: str, centers, radius: float = 30.0, section_key=None,
                        margin: float = 1.2, exclude=("Ambiguous",)) -> list[dict]:
    lab = d.obs[label_key].astype(object).where(~d.obs[label_key].isin(list(exclude)))
    sec = d.obs[section_key] if section_key else None
    labels = sorted(lab.dropna().astype(str).unique())
    out = []
    for i, c in enumerate(centers):
        tops = []
        for r in (radius, 2 * radius):
            nb = neighbour_counts(d.coords, lab, c, r, sec).drop(c, errors="ignore")
            tops.append(nb)
        nb = tops[0]
        if nb.index[0] == tops[1].index[0] and nb.iloc[0] >= margin * nb.iloc[1]:
            qt = pick(["Which cell type is the most common neighbour of {c} cells within {r:g} µm, "
                       "apart from {c} itself?",
                       "Apart from other {c} cells, which cell type is found most often within {r:g} µm of {c} cells?"],
                      i).format(c=c, r=radius)
            out.append(q(f"composition.{d.name}.neighbour1.{slug(c)}", "composition", "neighbour_top", d.name,
                         qt, nb.index[0],
                         {"kind": "exact_label", "options": labels,
                          "evidence": {"from": "neighbour_ranking", "center": c, "by": "count",
                                       "options": labels}},
                         notes=f"pairs within {radius:g} µm: {nb.head(3).to_dict()}"))
        if len(nb) > 3 and nb.iloc[2] > 1.1 * nb.iloc[3] and list(nb.index[:3]) == list(tops[1].index[:3]):
            out.append(q(f"composition.{d.name}.neighbour3.{slug(c)}", "composition", "neighbourhood_top3",
                         d.name, f"What are the three most common cell types in the neighbourhood of {c} "
                         f"cells (within {radius:g} µm, not counting {c})?", list(nb.index[:3]),
                         {"kind": "precision_at_k", "k": 3, "min": 0.66, "options": labels,
                          "evidence": {"from": "neighbour_ranking", "center": c, "by": "count",
                                       "options": labels}}))
    return out


def closer_questions(d: Data, label_key: str, triples, section_key=None, radius: float = 30.0,
                     min_ratio: float = 1.5, exclude=("Ambiguous",)) -> list[dict]:
    """'Which of A and B sits closer to C?': median nearest-A vs nearest-B distance from C cells
    differs >= min_ratio, and neighbour counts within `radius` agree."""
    lab = d.obs[label_key].astype(object).where(~d.obs[label_key].isin(list(exclude)))
    sec = d.obs[section_key] if section_key else None
    out = []
    templates = ["Around {c} cells, which are more common neighbours: {a} or {b}?",
                 "Which sits closer to {c} cells, {a} or {b} cells?",
                 "Are {a} or {b} cells found nearer to {c} cells?"]
    for i, (c, a, b) in enumerate(triples):
        da = np.median(nearest_type_distance(d.coords, lab.astype(str), c, a, sec))
        db = np.median(nearest_type_distance(d.coords, lab.astype(str), c, b, sec))
        nb = neighbour_counts(d.coords, lab, c, radius, sec)
        na, nb_ = nb.get(a, 0), nb.get(b, 0)
        closer = a if da < db else b
        if max(da, db) < min_ratio * min(da, db) or (na > nb_) != (closer == a) or na == nb_:
            continue
        out.append(q(f"composition.{d.name}.closer.{slug(c)}.{slug(a)}.{slug(b)}", "composition",
                     "closer_of_two", d.name, pick(templates, i).format(c=c, a=a, b=b), closer,
                     {"kind": "choice", "options": [a, b],
                      "evidence": {"from": "closer_of", "center": c, "options": [a, b]}},
                     notes=f"median nearest distance {a} {da:.1f} µm, {b} {db:.1f} µm; pairs within "
                           f"{radius:g} µm {int(na)} vs {int(nb_)}"))
    return out


def near_direction_questions(d: Data, label_key: str, pairs, section_key=None, near: float = 30.0,
                             far: float = 60.0, min_diff: float = 0.3, max_p: float = 1e-6,
                             perturbation: bool = False) -> list[dict]:
    """Direction of a gene's change in `target` cells near `neighbour` cells (observed: near vs
    far). As perturbation questions: removing the neighbours moves the targets the other way."""
    lab = d.obs[label_key].astype(str)
    sec = d.obs[section_key] if section_key else None
    out = []
    for i, (t, nbr) in enumerate(pairs):
        ni, fi = near_far_groups(d.coords, lab, t, nbr, near, far, sec)
        if len(ni) < 30 or len(fi) < 30:
            continue
        df = near_far_difference(d.X, d.genes, ni, fi)
        df = df[(df["p"] < max_p) & (df["diff"].abs() >= min_diff)]
        picks = []
        for sign in (1, -1):
            sub = df[np.sign(df["diff"]) == sign]
            if len(sub):
                picks.append(sub.iloc[0])
        for j, row in enumerate(picks):
            gene, obs_dir = row["gene"], ("up" if row["diff"] > 0 else "down")
            note = (f"{t} near {nbr} (<= {near:g} µm, n={len(ni)}) vs far (> {far:g} µm, n={len(fi)}): "
                    f"mean diff {row['diff']:+.2f}, p={row['p']:.1e}")
            if perturbation:
                ans = "down" if obs_dir == "up" else "up"
                qt = pick([f"If we remove the {nbr} cells near {t} cells, does {gene} go up or down in the {t} cells?",
                           f"How would {gene} in {t} cells change if the nearby {nbr} cells were removed: up or down?",
                           f"Remove {nbr} cells near {t} cells: is {gene} predicted to go up or down in the {t} cells?"],
                          i + j)
                out.append(q(f"generation.{d.name}.remove.{slug(nbr)}.{slug(t)}.{slug(gene)}", "generation",
                             "perturbation_direction", d.name, qt, ans,
                             {"kind": "choice", "options": ["up", "down"],
                              "evidence": {"from": "perturb_direction", "gene": gene}},
                             notes="truth: opposite of the observed near-vs-far difference; " + note))
            else:
                qt = pick([f"Is {gene} expression in {t} cells higher or lower near {nbr} cells (within {near:g} µm) "
                           f"than away from them? Answer up or down.",
                           f"Do {t} cells next to {nbr} cells express {gene} more (up) or less (down) than "
                           f"{t} cells far from them?"], i + j)
                out.append(q(f"composition.{d.name}.near.{slug(t)}.{slug(nbr)}.{slug(gene)}", "composition",
                             "near_direction", d.name, qt, obs_dir,
                             {"kind": "choice", "options": ["up", "down"]}, notes=note))
    return out


# ---------------------------------------------------------------------------- generation
def generation_questions(d: Data, label_key: str, types, section_key: str, test_value: str,
                         k: int = 10, seed: int = 0, exclude=("Ambiguous",)) -> list[dict]:
    """Generate a held-out cell from its neighbours; truth = its observed top-k genes; the bar is
    what the class-mean baseline (its type's mean profile in the other sections) reaches."""
    rng = np.random.default_rng(seed)
    lab = d.obs[label_key].astype(str).to_numpy()
    sec = d.obs[section_key].astype(str).to_numpy()
    train = (sec != test_value) & ~np.isin(lab, list(exclude))
    out = []
    for i, t in enumerate(types):
        cand = np.flatnonzero((sec == test_value) & (lab == t) & ((d.X > 0).sum(1) >= 2 * k))
        if not len(cand):
            continue
        c = int(rng.choice(cand))
        order = np.lexsort((d.genes, -d.X[c]))
        truth = [str(d.genes[j]) for j in order[:k]]
        mean = d.X[train & (lab == t)].mean(0)
        base = ranked_overlap([d.genes[j] for j in np.lexsort((d.genes, -mean))], truth, k)
        bar = max(0.2, np.floor(base * 10) / 10)
        name = str(d.adata.obs_names[c])
        qt = pick([f"Generate cell {name} from its neighbours: which {k} genes should it express most?",
                   f"Predict the expression of cell {name} (cell type {t}) from its neighbourhood and list its top {k} genes.",
                   f"Cell {name} is missing: complete its cell sentence from the surrounding cells (top {k} genes)."], i)
        out.append(q(f"generation.{d.name}.generate.{slug(name)}", "generation", "generate_cell", d.name, qt,
                     truth, {"kind": "precision_at_k", "k": k, "min": bar,
                             "evidence": {"from": "generated_genes"}},
                     notes=f"{t} cell in {section_key}={test_value}; class-mean baseline overlap@{k} = {base:.2f}"))
    return out


# ---------------------------------------------------------------------------- enrichment
def gsea_questions(d: Data, label_key: str, gmt_path: str, gmt_file: Path, groups, n_yes: int = 1,
                   n_no: int = 1, p_yes: float = 1e-3, p_no: float = 1e-3, noun: str = "layer",
                   collection: str = "Hallmark") -> list[dict]:
    """'Is TERM enriched in GROUP?': gene score = one-vs-rest AUROC; yes = set shifted up with
    p < p_yes, no = set shifted down with p < p_no."""
    sets = read_gmt(gmt_file)
    auc = auroc_one_vs_rest(d.X, d.obs[label_key])
    out = []
    templates = [
        "Run a gene set enrichment analysis of {g} against the rest of the tissue with the {col} gene sets "
        "in {path}. Is {term} enriched in {g}?",
        "Using the {col} gene sets ({path}), is {term} enriched among the genes upregulated in {g}? Answer yes or no.",
        "Does GSEA with {path} show {term} as enriched in {g} compared with the other {noun}s?"]
    i = 0
    for g in groups:
        scores = pd.Series(auc.loc[g].to_numpy(), index=d.genes)
        scores = scores[~scores.index.duplicated()]
        res = set_rank_enrichment(scores, sets)
        yes = res[(res["shift"] > 0) & (res["p"] < p_yes)].head(n_yes)
        no = res[(res["shift"] < 0) & (res["p"] < p_no)].head(n_no)
        for ans, rows in (("yes", yes), ("no", no)):
            for r in rows.itertuples():
                out.append(q(f"enrichment.{d.name}.gsea.{slug(g)}.{slug(r.term)}", "enrichment", "pathway_enriched",
                             d.name, pick(templates, i).format(g=display(g), term=r.term, path=gmt_path, col=collection,
                                                               noun=noun),
                             ans, {"kind": "choice", "options": ["yes", "no"],
                                   "evidence": {"from": "gsea_term", "term": r.term}},
                             notes=f"rank test of one-vs-rest AUROC: shift {r.shift:+.3f}, p={r.p:.1e}, n={r.n}"))
                i += 1
    return out


def ora_questions(d: Data, label_key: str, gmt_path: str, gmt_file: Path, groups, n_genes: int = 100,
                  n_truth: int = 10, k: int = 5, min_prec: float = 0.2, max_p: float = 1e-3) -> list[dict]:
    """'Which GO processes are over-represented among GROUP's genes?': truth = the (at most
    n_truth) terms with hypergeometric p < max_p for the group's top n_genes AUROC markers;
    pass if >= min_prec of the agent's top k terms are among them."""
    sets = read_gmt(gmt_file)
    tm = top_markers(d.X, d.genes, d.obs[label_key], n=n_genes)
    out = []
    templates = ["Run a GO over-representation analysis on the genes upregulated in {g} ({path}): "
                 "which biological processes come out?",
                 "Which GO biological processes are over-represented among the marker genes of {g}? Use {path}."]
    for i, g in enumerate(groups):
        res = overrepresentation(tm[g], d.genes, sets)
        truth = list(res[res["p"] < max_p]["term"].head(n_truth))
        if len(truth) < 3:
            continue
        out.append(q(f"enrichment.{d.name}.ora.{slug(g)}", "enrichment", "go_overrepresentation", d.name,
                     pick(templates, i).format(g=display(g), path=gmt_path), truth,
                     {"kind": "precision_at_k", "k": k, "min": min_prec, "terms": True,
                      "evidence": {"from": "ora_terms"}},
                     notes=f"truth: GO terms with p < {max_p:g} for the top {n_genes} AUROC markers of {g}"))
    return out


# ---------------------------------------------------------------------------- knowledge
def read_descriptions(path) -> dict[str, dict]:
    out = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            out.setdefault(r["symbol"], r)
    return out


def gene_info_questions(desc: dict[str, dict], genes, species: str, dataset: str | None = None) -> list[dict]:
    out = []
    templates = ["What does the {sp} gene {g} encode?", "What is the function of the {sp} gene {g}?",
                 "Tell me about the {sp} gene {g}: what is its full name?"]
    for i, g in enumerate(genes):
        r = desc.get(g)
        if not r or not r.get("official_full_name"):
            continue
        out.append(q(f"knowledge.{species}.gene_info.{slug(g)}", "knowledge", "gene_info", dataset,
                     pick(templates, i).format(sp=species, g=g), [r["official_full_name"]],
                     {"kind": "must_mention"}, needs_kb=species,
                     notes="truth: NCBI Gene official full name"))
    return out


def gene_text(r: dict, human: dict | None = None) -> str:
    parts = [r.get("official_full_name") or "", r.get("refseq_summary") or ""]
    if human is not None and not r.get("refseq_summary"):
        for h in r.get("human_orthologs") or []:
            parts.append((human.get(h) or {}).get("refseq_summary") or "")
    return " ".join(parts)


def gene_search_questions(desc: dict, universe, species: str, topics, human=None, k: int = 5,
                          min_prec: float = 0.6, dataset: str | None = None) -> list[dict]:
    """'Which genes are involved in TOPIC?' over the eval store's genes; truth = the genes whose
    NCBI name or summary matches the topic's pattern."""
    out = []
    for i, (topic, pattern) in enumerate(topics):
        rx = re.compile(pattern, re.I)
        truth = sorted(g for g in universe if g in desc and rx.search(gene_text(desc[g], human)))
        if len(truth) < k:
            continue
        out.append(q(f"knowledge.{species}.search.{slug(topic)}", "knowledge", "gene_search", dataset,
                     pick(["Which {sp} genes are involved in {t}?", "Find {sp} genes related to {t}."],
                          i).format(sp=species, t=topic), truth,
                     {"kind": "precision_at_k", "k": k, "min": min_prec,
                      "evidence": {"from": "search_genes"}},
                     needs_kb=species,
                     notes=f"truth: store genes whose NCBI name/summary matches /{pattern}/"))
    return out
