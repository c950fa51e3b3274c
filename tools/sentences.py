"""Cell and spatial sentences (TissueNarrator / Cell2Sentence) and the rank -> expression model.

A *cell sentence* is ``x, y, metadata..., genes`` with the genes written in decreasing expression
(top-N expressed genes, ties broken by gene name). A *spatial sentence* is one cell sentence per
line for the cells of a square neighbourhood, in a distance-weighted random traversal from one of
five anchors. Writes ``adata.obs['cell_sentence']`` and ``adata.uns['cell_sentence']``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np
from pydantic import BaseModel, Field

from tools.errors import DataError, ParameterError, UnknownKeyError, require_obs, suggest
from tools.registry import register

ANCHORS = ("center", "top_left", "top_right", "bottom_left", "bottom_right")


def rank_order(values: np.ndarray, genes) -> np.ndarray:
    """Gene indices in decreasing expression, ties broken by gene name; works on rows of 2-D input."""
    values = np.asarray(values, dtype=float)
    name_pos = np.argsort(np.argsort(np.asarray(genes, dtype=str), kind="stable"), kind="stable")
    return np.lexsort((np.broadcast_to(name_pos, values.shape), -values), axis=-1)


def _field(v) -> str:
    return str(v).replace(",", ";").replace("\n", " ").strip()


def cell_sentence(values, genes, x=None, y=None, metadata=(), top_n: int = 50) -> str:
    """``x, y, meta..., g1 g2 ...``: the top-N expressed genes (value > 0) in decreasing order."""
    values = np.asarray(values, dtype=float)
    order = rank_order(values, genes)
    order = order[values[order] > 0][:top_n]
    parts = [] if x is None else [f"{x:.0f}", f"{y:.0f}"]
    parts += [_field(m) for m in metadata]
    parts.append(" ".join(str(genes[i]) for i in order))
    return ", ".join(parts)


@dataclass
class ParsedCell:
    genes: list[str]
    x: float | None = None
    y: float | None = None
    metadata: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def _gene_lookup(genes) -> dict[str, str]:
    lookup = {str(g).lower(): str(g) for g in genes}
    lookup.update({str(g): str(g) for g in genes})
    return lookup


def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def parse_genes(text: str, genes, lookup: dict | None = None) -> tuple[list[str], list[str]]:
    """Known genes (dataset spelling, first occurrence kept, case-insensitive) and unknown tokens."""
    lookup = lookup or _gene_lookup(genes)
    known, unknown, seen = [], [], set()
    for tok in text.replace(",", " ").split():
        tok = tok.strip(".;:()[]{}\"'`*")
        if not tok or _is_number(tok):
            continue
        g = lookup.get(tok) or lookup.get(tok.lower())
        if g is None:
            unknown.append(tok)
        elif g not in seen:
            seen.add(g)
            known.append(g)
    return known, unknown


def parse_cell_sentence(text: str, genes) -> ParsedCell:
    """Parse ``x, y, meta..., genes`` (or a bare gene list) back into a cell; validates gene names."""
    parts = [p.strip() for p in text.strip().splitlines()[0].split(",")] if text.strip() else [""]
    x = y = None
    meta: list[str] = []
    if len(parts) >= 3:
        try:
            x, y = float(parts[0]), float(parts[1])
            meta, parts = parts[2:-1], parts[-1:]
        except ValueError:
            pass
    known, unknown = parse_genes(" ".join(parts), genes)
    return ParsedCell(known, x, y, meta, unknown)


def square_neighbourhood(coords: np.ndarray, centre, side: float) -> np.ndarray:
    """Indices of the cells inside the axis-aligned square of side `side` centred on `centre`."""
    d = np.abs(np.asarray(coords, float) - np.asarray(centre, float))
    return np.flatnonzero((d <= side / 2).all(axis=1))


def traversal_order(coords: np.ndarray, anchor_point, temperature: float, seed: int = 0) -> np.ndarray:
    """Distance-weighted random walk: start at the cell nearest the anchor, then draw the next
    unvisited cell with probability ∝ exp(-d / temperature) (d: distance from the current cell)."""
    coords = np.asarray(coords, float)
    n = len(coords)
    if n == 0:
        return np.zeros(0, dtype=int)
    if temperature <= 0:
        raise ParameterError(f"temperature must be > 0, got {temperature}")
    rng = np.random.default_rng(seed)
    left = np.ones(n, bool)
    cur = int(np.argmin(np.linalg.norm(coords - np.asarray(anchor_point, float), axis=1)))
    order = [cur]
    left[cur] = False
    for _ in range(n - 1):
        cand = np.flatnonzero(left)
        d = np.linalg.norm(coords[cand] - coords[cur], axis=1)
        logit = -(d - d.min()) / temperature
        p = np.exp(logit)
        cur = int(cand[rng.choice(len(cand), p=p / p.sum())])
        order.append(cur)
        left[cur] = False
    return np.asarray(order)


def anchor_point(centre, side: float, anchor: str) -> np.ndarray:
    """Coordinates of one of the five anchors of a square (centre or a corner; y grows upward)."""
    if anchor not in ANCHORS:
        raise ParameterError(f"unknown anchor '{anchor}'{suggest(anchor, ANCHORS)}")
    cx, cy = np.asarray(centre, float)
    h = side / 2
    dx = {"center": 0, "top_left": -h, "bottom_left": -h, "top_right": h, "bottom_right": h}[anchor]
    dy = {"center": 0, "top_left": h, "top_right": h, "bottom_left": -h, "bottom_right": -h}[anchor]
    return np.array([cx + dx, cy + dy])


def spatial_sentence(expr, genes, coords, metadata, centre, side: float = 100.0,
                     anchor: str = "center", temperature: float = 10.0, seed: int = 0,
                     top_n: int = 50, exclude=()) -> tuple[str, np.ndarray]:
    """Serialise the cells of a square neighbourhood (coordinates relative to its centre).

    Returns the text (one cell sentence per line) and the cell indices in traversal order.
    """
    coords = np.asarray(coords, float)
    idx = square_neighbourhood(coords, centre, side)
    idx = idx[~np.isin(idx, np.asarray(list(exclude), dtype=int))]
    order = idx[traversal_order(coords[idx], anchor_point(centre, side, anchor), temperature, seed)]
    rel = coords - np.asarray(centre, float)
    lines = [cell_sentence(np.asarray(expr[i]).ravel(), genes, rel[i, 0], rel[i, 1],
                           metadata[i], top_n) for i in order]
    return "\n".join(lines), order


def parse_spatial_sentence(text: str, genes) -> list[ParsedCell]:
    """Parse a spatial sentence (one cell per non-empty line)."""
    return [parse_cell_sentence(line, genes) for line in text.splitlines() if line.strip()]


class RankExpressionModel(BaseModel):
    """Cell2Sentence's per-dataset linear model: log expression = slope * log10(rank) + intercept."""
    slope: float
    intercept: float
    r2: float

    @classmethod
    def fit(cls, expr: np.ndarray) -> "RankExpressionModel":
        """Fit on the non-zero (log-normalised) values of a cells x genes matrix, pooled over cells."""
        expr = np.asarray(expr, float)
        ranks = np.argsort(np.argsort(-expr, axis=1, kind="stable"), axis=1) + 1
        nz = expr > 0
        if nz.sum() < 3:
            raise DataError("too few expressed values to fit the rank -> expression model")
        x, y = np.log10(ranks[nz]), expr[nz]
        slope, intercept = np.polyfit(x, y, 1)
        resid = y - (slope * x + intercept)
        r2 = 1 - resid.var() / y.var() if y.var() > 0 else 0.0
        return cls(slope=float(slope), intercept=float(intercept), r2=float(r2))

    def to_expression(self, ranked_genes: list[list[str]], genes) -> np.ndarray:
        """Expression vectors (cells x genes) from ranked gene lists; unlisted genes get 0."""
        pos = {str(g): i for i, g in enumerate(genes)}
        out = np.zeros((len(ranked_genes), len(pos)))
        for c, lst in enumerate(ranked_genes):
            for r, g in enumerate(lst, start=1):
                out[c, pos[g]] = max(0.0, self.slope * np.log10(r) + self.intercept)
        return out


class CellSentenceParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    metadata_keys: list[str] = Field(default_factory=list,
                                     description="obs columns written after the coordinates, e.g. cell type")
    top_n: int = Field(50, ge=1, le=2000, description="number of top expressed genes per sentence")
    drop_gene_prefixes: list[str] = Field(["Blank_"], description="genes starting with these are left out")


class CellSentenceResult(BaseModel):
    key: str
    n_cells: int
    n_genes: int
    example: str
    rank_model: RankExpressionModel


@register("cell_sentences", CellSentenceParams, CellSentenceResult,
          intents=("cell sentence", "cell sentences", "serialise cells as text", "rank genes per cell"))
def cell_sentences(adata, p: CellSentenceParams) -> CellSentenceResult:
    """Write each cell as a cell sentence (x, y, metadata, genes by decreasing expression) to
    adata.obs['cell_sentence']; fits the rank -> expression model into adata.uns['cell_sentence']."""
    from tools.generation import log_expression

    for k in p.metadata_keys:
        require_obs(adata, k)
    expr, genes = log_expression(adata, p.drop_gene_prefixes)
    coords = np.asarray(adata.obsm["spatial"], float) if "spatial" in adata.obsm else None
    meta = adata.obs[p.metadata_keys].astype(str).to_numpy() if p.metadata_keys else [[]] * adata.n_obs
    sents = [cell_sentence(expr[i], genes, *(coords[i] if coords is not None else (None, None)),
                           metadata=meta[i], top_n=p.top_n) for i in range(adata.n_obs)]
    model = RankExpressionModel.fit(expr)
    adata.obs["cell_sentence"] = sents
    adata.uns["cell_sentence"] = {"top_n": p.top_n, "metadata_keys": list(p.metadata_keys),
                                  "rank_model": model.model_dump()}
    return CellSentenceResult(key="cell_sentence", n_cells=adata.n_obs, n_genes=len(genes),
                              example=sents[0] if sents else "", rank_model=model)


def require_gene(genes, name: str) -> str:
    """The dataset spelling of gene `name`, or UnknownKeyError with close matches."""
    lookup = _gene_lookup(genes)
    g = lookup.get(name) or lookup.get(name.lower())
    if g is None:
        raise UnknownKeyError(f"gene '{name}' is not in the dataset{suggest(name, list(genes))}")
    return g
