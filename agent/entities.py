"""Entities in a request, checked against the dataset: genes (var_names), categories of obs
annotations (cell types, domains, regions), numbers with their unit or noun ("7 domains",
"30 µm"), and gene-like or type-like words that the dataset does not have."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

NUM_RE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*(µm|um|microns?|micrometers?|%|[a-zA-Z_-]+)?")
STOP = set("""a an the of in on at to for and or with by from is are be this that these those
what which where how many much show me my please find give tell about do does all each per
top into than its it as can could would i we you cell cells gene genes type types data
dataset tissue spot spots domain domains region regions cluster clusters neighbouring
neighboring nearby surrounding other more fewer single individual most least some any no
one two three four five six seven eight nine ten""".split())


@dataclass
class Entities:
    genes: list[str] = field(default_factory=list)
    unknown_genes: list[str] = field(default_factory=list)
    categories: list[tuple[str, str]] = field(default_factory=list)  # (obs column, value)
    unknown_types: list[str] = field(default_factory=list)
    numbers: list[tuple[float, str]] = field(default_factory=list)  # (value, following word)
    before: list[str] = field(default_factory=list)  # the word before each number
    after: list[list[str]] = field(default_factory=list)  # the two words after each number
    columns: list[str] = field(default_factory=list)  # obs columns named (or implied) in the text
    mapped: list[str] = field(default_factory=list)  # how common names were read (for the answer)
    words: list[str] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)  # obs names named in the text ("cell_6800")
    spans: list[tuple[int, int]] = field(default_factory=list)  # category spans in the text
    positions: list[int] = field(default_factory=list)  # start of each category in the text
    annotations: dict[str, list[str]] = field(default_factory=dict)  # categorical obs columns


def _norm(s: str) -> str:
    return re.sub(r"[\s_-]+", " ", str(s).lower()).strip()


def categorical_columns(adata, max_categories: int = 100) -> dict[str, list[str]]:
    """obs columns that are categorical (or short string columns) -> their values."""
    import pandas as pd

    out = {}
    for col in adata.obs.columns:
        s = adata.obs[col]
        if isinstance(s.dtype, pd.CategoricalDtype) or s.dtype == object:
            vals = [v for v in pd.unique(s.dropna().astype(str))]
            if 1 < len(vals) <= max_categories:
                out[col] = vals
    return out


def extract(text: str, adata=None) -> Entities:
    """Find genes, obs categories and numbers of `text` (checked against `adata` if given)."""
    ent = Entities()
    tokens = re.findall(r"[A-Za-z][A-Za-z0-9_.\-]*[A-Za-z0-9]|[A-Za-z]", text)
    ent.words = [t.lower() for t in tokens]
    num_pos = []
    for m in NUM_RE.finditer(text):
        prev = re.findall(r"([A-Za-z_]+)\W*$", text[: m.start()])
        ent.numbers.append((float(m.group(1)), (m.group(2) or "").lower()))
        ent.before.append(prev[0].lower() if prev else "")
        ent.after.append([w.lower() for w in re.findall(r"[A-Za-zµ_-]+", text[m.end(1):])[:2]])
        num_pos.append(m.start(1))
    if adata is None:
        return ent
    genes = {str(g).upper(): str(g) for g in adata.var_names}
    lowtext = " " + _norm(text) + " "
    matched_spans: set[str] = set()
    found = []  # (start, end, column, value) in the original text
    ent.annotations = categorical_columns(adata)
    for col, vals in ent.annotations.items():
        for v in vals:
            for name in label_names(v):
                ms = _find_label(name, text)
                if ms:
                    found += [(a, b, col, v) for a, b in ms]
                    break
    # longest match first; a label inside a longer matched label ("Layer 2-3" in "Layer 2-3
    # medial", "Endothelial" in "Endothelial 1") is not a mention of its own
    found.sort(key=lambda t: (-(t[1] - t[0]), t[0]))
    taken: list[tuple[int, int]] = []
    for a, b, col, v in found:
        if any(a >= x and b <= y and (b - a) < (y - x) for x, y in taken):
            continue
        if not any(c == col and w == v for c, w, _ in ent.categories):
            ent.categories.append((col, v, a))
        taken.append((a, b))
        matched_spans.update(_norm(text[a:b]).split())
    ent.spans = sorted(set(taken))
    _synonym_categories(re.sub(r"[_-]", " ", text.lower()), adata, ent)
    ordered = sorted(ent.categories, key=lambda t: t[2])
    ent.categories = [(c, v) for c, v, _ in ordered]
    ent.positions = [p for _, _, p in ordered]
    ent.columns = _columns(lowtext, adata)
    # numbers inside a label ("Layer 6", "OD Mature 2", "1: Granular Cell Layer") are not arguments
    keep = [i for i, p in enumerate(num_pos) if not any(a <= p < b for a, b in ent.spans)]
    ent.numbers = [ent.numbers[i] for i in keep]
    ent.before = [ent.before[i] for i in keep]
    ent.after = [ent.after[i] for i in keep]
    names = set(map(str, adata.obs_names)) if adata.n_obs <= 2_000_000 else set()
    for t in re.findall(r"[\w.:-]*\w", text):
        if t in names and t not in ent.cells and not t.isdigit() and t.upper() not in genes:
            ent.cells.append(t)
    for t in tokens:
        up = t.upper()
        if up in genes and t.lower() not in STOP and len(t) > 1:
            if genes[up] not in ent.genes:
                ent.genes.append(genes[up])
        elif _looks_like_gene(t) and t.lower() not in matched_spans and t not in ent.cells:
            ent.unknown_genes.append(t)
    for m in re.finditer(r"\b([A-Za-z][\w+-]*)\s+cells?\b|\bcell type\s+([A-Za-z][\w+-]*)", text):
        w = m.group(1) or m.group(2)
        if w.lower() not in STOP and _norm(w) not in matched_spans and w.upper() not in genes \
                and not any(_norm(w) in _norm(v) for _, v in ent.categories):
            ent.unknown_types.append(w)
    return ent


def label_names(v) -> list[str]:
    """Ways a label can be written: itself and, for a numbered label ('1: Granular Cell Layer'),
    its name alone."""
    v = str(v)
    out = [v]
    short = re.sub(r"^\s*\d+\s*[:.)]\s*", "", v)
    if short != v and len(short) >= 3:
        out.append(short)
    return out


def _find_label(name: str, text: str) -> list[tuple[int, int]]:
    """(start, end) of each mention of `name` in `text`: case-insensitive, spaces / '_' / '-'
    interchangeable, an optional plural 's'. Single digits and very short names are ignored."""
    words = [w for w in re.split(r"[\s_\-]+", name.strip()) if w]
    if not words or (len(_norm(name)) < 2) or _norm(name).isdigit():
        return []
    pat = r"(?<![\w])" + r"[\s_\-]*".join(re.escape(w) for w in words) + r"s?(?![\w])"
    return [(m.start(), m.end()) for m in re.finditer(pat, text, re.I)]


# Common names of cell types and regions -> the words and abbreviations annotations use for them
# ("oligodendrocytes" -> "OD Mature 2", "white matter" -> "WM").
SYNONYMS = {
    "oligodendrocyte": ("od", "oligo", "oligodendrocyte", "oligodendrocytes", "ol"),
    "oligodendrocyte precursor": ("opc", "opcs", "od immature", "immature od"),
    "microglia": ("microglia", "micro", "mg", "microglial"),
    "astrocyte": ("astrocyte", "astrocytes", "astro"),
    "endothelial": ("endothelial", "endo"),
    "excitatory neuron": ("excitatory", "exc", "glutamatergic"),
    "inhibitory neuron": ("inhibitory", "inh", "gabaergic"),
    "pericyte": ("pericyte", "pericytes", "peri"),
    "white matter": ("wm", "white matter"),
    "neuron": ("neuron", "neurons", "neuronal"),
}


def _synonym_categories(lowtext: str, adata, ent: Entities) -> None:
    """Add (column, value, position) for common names the annotations spell otherwise; among
    several matching values ("OD Mature 1", "OD Mature 2") the most abundant one is taken."""
    taken = {(c, _norm(v)) for c, v, _ in ent.categories}
    for name in sorted(SYNONYMS, key=len, reverse=True):
        m = re.search(rf"(?<![\w]){re.escape(name)}s?(?![\w])", lowtext)
        if not m or any(a <= m.start() < b for a, b in ent.spans):
            continue
        for col, vals in categorical_columns(adata).items():
            hits = [v for v in vals if (col, _norm(v)) not in taken and any(
                re.search(rf"(?<![a-z]){re.escape(a)}(?![a-z])", _norm(v)) for a in SYNONYMS[name])]
            if hits:
                counts = adata.obs[col].astype(str).value_counts()
                best = max(hits, key=lambda v: counts.get(v, 0))
                ent.categories.append((col, best, m.start()))
                ent.spans.append((m.start(), m.end()))
                taken.add((col, _norm(best)))
                others = f" (also matching: {', '.join(h for h in hits if h != best)})" if len(hits) > 1 else ""
                note = f"I read '{name}' as {col} '{best}'{others}"
                if not any(n.startswith(f"I read '{name}'") for n in ent.mapped):
                    ent.mapped.append(note)


def _columns(lowtext: str, adata) -> list[str]:
    """Categorical obs columns the text names ('ground_truth', 'domains') or implies
    ('each layer' -> the column whose values are Layer1, Layer2, ...)."""
    words = set(re.findall(r"[a-z0-9]+", lowtext))
    stems = {w[:-1] if w.endswith("s") else w for w in words}
    named, implied = [], []
    for col, vals in categorical_columns(adata).items():
        nc = _norm(col)
        if re.search(rf"(?<![\w]){re.escape(nc)}s?(?![\w])", lowtext) or nc in stems:
            named.append(col)
        elif any(re.sub(r"[\d\s_]+$", "", _norm(v)) in stems for v in vals):
            implied.append(col)
    return named + implied


ACRONYMS = {"HTML", "JSON", "PDF", "UMAP", "PCA", "GSEA", "ORA", "DNA", "RNA", "GMM", "KNN", "ARI",
            "NMI", "LLM", "CSV", "TSV", "GO", "QC", "HVG", "HVGS", "DE", "WM", "ST",
            # spatial technologies
            "MERFISH", "OSMFISH", "SEQFISH", "STARMAP", "VISIUM", "XENIUM", "COSMX", "SLIDESEQ",
            "STEREOSEQ", "FISH", "SMFISH", "HDST", "DBIT"}


def _looks_like_gene(t: str) -> bool:
    """Upper-case symbol with a digit or 3+ letters (GFAP, Cd74, SNAP25), not a plain word."""
    if len(t) < 3 or len(t) > 15 or t.lower() in STOP:
        return False
    has_digit = any(c.isdigit() for c in t)
    if t.isupper() and t.isalnum() and (has_digit or len(t) >= 3) and t not in ACRONYMS:
        return True
    return bool(re.fullmatch(r"[A-Z][a-z]{1,4}\d+[a-z]?", t))  # mouse style: Cd74, Gad1
