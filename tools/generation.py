"""Generate a missing cell from its neighbourhood (TissueNarrator task), with baselines and metrics.

Methods: ``nearest_neighbor`` (the closest context cell's profile), ``class_mean`` (mean training
profile of the target's type; unconditioned: of the most common type among the context cells),
``context_model`` (ours, :class:`ContextModel`) and ``llm`` (a chat model or a local causal LM
completes the target's cell sentence, :func:`llm_generate`).
Metrics exactly as TissueNarrator: NDCG@k with binary relevance and overlap@k, mean over cells.
Writes ``adata.uns['generation']`` (evaluation) and ``adata.uns['generated_cell']``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from tools.errors import BackendError, DataError, ParameterError, UnknownKeyError, require_obs, suggest
from tools.registry import register
from tools.sentences import rank_order

MODEL_NAME = "context_model"


# ---------------------------------------------------------------- data

def log_expression(adata, drop_gene_prefixes=("Blank_",)) -> tuple[np.ndarray, np.ndarray]:
    """Dense log1p expression (cells x kept genes) and gene names. If ``adata.uns['log1p']`` exists
    (scanpy's marker) ``.X`` is taken as already logged."""
    import scipy.sparse as sp

    keep = ~adata.var_names.str.startswith(tuple(drop_gene_prefixes)) if drop_gene_prefixes else \
        np.ones(adata.n_vars, bool)
    X = adata.X[:, np.flatnonzero(keep)]
    X = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float32)
    if not np.isfinite(X).all():
        raise DataError("expression matrix contains NaN or infinite values")
    if "log1p" not in adata.uns:
        if X.min() < 0:
            raise DataError("expression has negative values but no adata.uns['log1p'] marker; "
                            "give raw or normalised (non-negative) values")
        X = np.log1p(X)
    return X, np.asarray(adata.var_names[keep], dtype=str)


@dataclass
class CellData:
    expr: np.ndarray      # cells x genes, log1p
    genes: np.ndarray
    type_idx: np.ndarray  # int code per cell
    types: list[str]      # code -> name
    coords: np.ndarray
    section: np.ndarray   # section label per cell (str)
    names: np.ndarray     # obs names


def prepare(adata, cell_type_key: str, split_key: str | None = None,
            drop_gene_prefixes=("Blank_",), drop_types=("Ambiguous",)) -> CellData:
    """Cells and genes used for generation: drops control genes (e.g. Blank_*), genes never detected
    and unwanted types (e.g. Ambiguous)."""
    require_obs(adata, cell_type_key)
    if split_key is not None:
        require_obs(adata, split_key)
    if "spatial" not in adata.obsm:
        raise DataError("no coordinates: adata.obsm['spatial'] is missing")
    lab = adata.obs[cell_type_key].astype(str).to_numpy()
    keep = ~np.isin(lab, list(drop_types)) & (adata.obs[cell_type_key].notna().to_numpy())
    if keep.sum() < 3:
        raise DataError(f"fewer than 3 cells left after dropping types {list(drop_types)}")
    sub = adata[keep]
    expr, genes = log_expression(sub, drop_gene_prefixes)
    seen = (expr > 0).any(0)  # genes never detected (e.g. Fos in MERFISH) carry no ranking
    expr, genes = expr[:, seen], genes[seen]
    types, type_idx = np.unique(lab[keep], return_inverse=True)
    section = (sub.obs[split_key].astype(str).to_numpy() if split_key else np.full(sub.n_obs, "all"))
    return CellData(expr, genes, type_idx, [str(t) for t in types],
                    np.asarray(sub.obsm["spatial"], float)[:, :2], section,
                    np.asarray(sub.obs_names, dtype=str))


def section_value(data: CellData, value) -> str:
    """Match a user's section value (e.g. 0.21) to a section label."""
    labels = np.unique(data.section)
    for lab in labels:
        if lab == str(value):
            return lab
        try:
            if float(lab) == float(value):
                return lab
        except ValueError:
            pass
    raise UnknownKeyError(f"section value '{value}' not found (available: {', '.join(labels)})")


# ---------------------------------------------------------------- contexts

def contexts(data: CellData, targets: np.ndarray, k: int = 10, cross_type: bool = False):
    """The k nearest cells of each target in its own section (cross_type: other types only).

    Returns (indices, distances), each targets x k, sorted by distance.
    """
    from scipy.spatial import cKDTree

    targets = np.asarray(targets, dtype=int)
    idx = np.zeros((len(targets), k), dtype=int)
    dist = np.zeros((len(targets), k))
    groups = data.section[targets] + ("|" + data.type_idx[targets].astype(str) if cross_type else "")
    for g in np.unique(groups):
        t = targets[groups == g]
        pool = data.section == data.section[t[0]]
        if cross_type:
            pool &= data.type_idx != data.type_idx[t[0]]
        pool = np.flatnonzero(pool)
        extra = 0 if cross_type else 1
        if len(pool) < k + extra:
            raise DataError(f"only {len(pool) - extra} candidate context cells for {k} neighbours "
                            f"(section {data.section[t[0]]}); lower k")
        d, j = cKDTree(data.coords[pool]).query(data.coords[t], k=k + extra)
        j = pool[j]
        if extra:  # drop the target itself (or one duplicate-position cell if it came first)
            own = j == t[:, None]
            drop = np.where(own.any(1), own.argmax(1), k)
            mask = np.ones_like(j, bool)
            mask[np.arange(len(t)), drop] = False
            j, d = j[mask].reshape(len(t), k), d[mask].reshape(len(t), k)
        sel = groups == g
        idx[sel], dist[sel] = j, d
    return idx, dist


# ---------------------------------------------------------------- metrics

def ranking_metrics(pred: np.ndarray, true: np.ndarray, genes, ks=(10, 30, 50)) -> dict[str, float]:
    """Mean NDCG@k (binary relevance: a predicted gene is relevant if in the true top k) and
    overlap@k (|top-k predicted ∩ top-k true| / k) over cells; ties broken by gene name."""
    pred, true = np.atleast_2d(pred), np.atleast_2d(true)
    po, to = rank_order(pred, genes), rank_order(true, genes)
    rows = np.arange(len(true))[:, None]
    out = {}
    for k in ks:
        k = min(k, true.shape[1])
        in_true = np.zeros(true.shape, bool)
        in_true[rows, to[:, :k]] = True
        rel = in_true[rows, po[:, :k]]
        disc = 1.0 / np.log2(np.arange(2, k + 2))
        out[f"ndcg@{k}"] = float(((rel * disc).sum(1) / disc.sum()).mean())
        out[f"overlap@{k}"] = float(rel.mean(1).mean())
    return out


# ---------------------------------------------------------------- baselines and context model

def class_means(data: CellData, cells: np.ndarray) -> np.ndarray:
    """Mean log expression per type (types x genes) over `cells`; absent types get the global mean."""
    x, t = data.expr[cells], data.type_idx[cells]
    out = np.tile(x.mean(0), (len(data.types), 1))
    for c in np.unique(t):
        out[c] = x[t == c].mean(0)
    return out


def most_common_type(nb_type: np.ndarray, n_types: int) -> np.ndarray:
    """Most common type per row of a targets x k type matrix (ties: the nearer cell's type first)."""
    counts = np.zeros((len(nb_type), n_types))
    np.add.at(counts, (np.repeat(np.arange(len(nb_type)), nb_type.shape[1]), nb_type.ravel()),
              1.0 - 1e-3 * np.arange(nb_type.shape[1])[None].repeat(len(nb_type), 0).ravel())
    return counts.argmax(1)


class ContextModel:
    """Ridge regression of a cell's log expression on its context (ours, CPU).

    Features: the neighbours' distance-weighted mean log expression and type composition; if
    conditioned, also the target's type one-hot and the same-type neighbours' weighted deviation from
    their class mean (sub-type / regional signal; zero when none, as in cross-type mode). It predicts the residual from the target's
    class mean (unconditioned: the global mean); the ridge penalty is chosen by NDCG@10 on a
    2-fold spatial split (left / right half) of the training cells, never on the test section.
    """

    name = MODEL_NAME
    alphas = (1.0, 10.0, 100.0, 1000.0, 3000.0, 10000.0)

    def __init__(self, conditioned: bool = True, scale: float = 20.0):
        self.conditioned, self.scale = conditioned, scale
        self.alpha = None

    def features(self, nb_expr, nb_type, nb_dist, target_type=None) -> np.ndarray:
        """Feature rows from neighbours' expression (n x k x genes), types and distances (n x k)."""
        nb_dist = np.asarray(nb_dist, float)
        if nb_dist.ndim != 2 or nb_dist.shape[1] == 0:
            raise DataError("empty neighbourhood: a target has no context cells")
        nb_type = np.asarray(nb_type)
        w0 = 1.0 / (1.0 + nb_dist / self.scale)
        w = w0 / w0.sum(1, keepdims=True)
        n, k = nb_dist.shape
        comp = np.zeros((n, self.n_types))
        np.add.at(comp, (np.repeat(np.arange(n), k), nb_type.ravel()), w.ravel())
        parts = [np.einsum("nk,nkg->ng", w, nb_expr), comp]
        if self.conditioned:
            tt = np.asarray(target_type)
            same = w0 * (nb_type == tt[:, None])  # same-type neighbours' deviation from their class
            tot = same.sum(1, keepdims=True)
            dev = np.einsum("nk,nkg->ng", same, nb_expr - self.means[nb_type]) / np.maximum(tot, 1e-12)
            parts = [np.eye(self.n_types)[tt], *parts, dev, (tot > 0).astype(float)]
        return np.hstack(parts)

    def _base(self, target_type, n: int) -> np.ndarray:
        return self.means[np.asarray(target_type)] if self.conditioned else np.tile(self.mean, (n, 1))

    def fit(self, data: CellData, targets, idx, dist, mean_cells=None) -> "ContextModel":
        """Fit on training targets with their contexts (idx, dist from :func:`contexts`)."""
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        targets = np.asarray(targets)
        mean_cells = targets if mean_cells is None else mean_cells
        self.n_types, self.genes = len(data.types), data.genes
        self.means, self.mean = class_means(data, mean_cells), data.expr[mean_cells].mean(0)
        X = self.features(data.expr[idx], data.type_idx[idx], dist, data.type_idx[targets])
        y = data.expr[targets] - self._base(data.type_idx[targets], len(targets))
        make = lambda a: make_pipeline(StandardScaler(), Ridge(alpha=a))  # noqa: E731
        left = data.coords[targets, 0] < np.median(data.coords[targets, 0])
        scores = []
        for a in self.alphas:
            s = 0.0
            for tr in (left, ~left):
                pred = make(a).fit(X[tr], y[tr]).predict(X[~tr]) + (data.expr[targets] - y)[~tr]
                s += ranking_metrics(pred, data.expr[targets][~tr], data.genes, ks=(10,))["ndcg@10"]
            scores.append(s)
        self.alpha = float(self.alphas[int(np.argmax(scores))])
        self.reg = make(self.alpha).fit(X, y)
        return self

    def predict_from(self, nb_expr, nb_type, nb_dist, target_type=None) -> np.ndarray:
        """Predicted log expression (n x genes), clipped at 0, from raw context arrays."""
        X = self.features(nb_expr, nb_type, nb_dist, target_type)
        return np.clip(self.reg.predict(X) + self._base(target_type, len(X)), 0, None)

    def predict(self, data: CellData, targets, idx, dist) -> np.ndarray:
        return self.predict_from(data.expr[idx], data.type_idx[idx], dist, data.type_idx[targets])


def sample_per_type(data: CellData, cells: np.ndarray, max_per_type: int | None, seed: int) -> np.ndarray:
    """At most `max_per_type` cells of each type (seeded), in their original order."""
    if not max_per_type:
        return np.asarray(cells)
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(cells[data.type_idx[cells] == t])[:max_per_type]
            for t in np.unique(data.type_idx[cells])]
    return np.sort(np.concatenate(keep))


def baseline_predictions(data: CellData, means, targets, idx, conditioned: bool) -> dict[str, np.ndarray]:
    """nearest_neighbor and class_mean predictions (unconditioned class mean: most common context type)."""
    t = data.type_idx[targets] if conditioned else most_common_type(data.type_idx[idx], len(data.types))
    return {"nearest_neighbor": data.expr[idx[:, 0]], "class_mean": means[t]}


# ---------------------------------------------------------------- LLM generator

def make_chat_model(spec: str, max_tokens: int = 256):
    """A chat model (`.invoke(messages)`) from a spec string: ``hf:<dir>`` (a local Hugging Face
    causal LM, greedy decoding) or any spec the agent's providers take (``openai:<model>``,
    ``anthropic:<model>``, ``openai-compatible:<url>#<model>``). Keys come from the environment."""
    from agent.providers import make_chat_model as provider_model, parse_spec

    kind, _, rest = spec.partition(":")
    if kind == "hf" and rest:
        return HFCausalLM(rest, max_new_tokens=max_tokens)
    if kind not in ("openai", "anthropic", "openai-compatible"):
        raise ParameterError(f"unknown model provider '{kind}'"
                             f"{suggest(kind, ['openai', 'anthropic', 'openai-compatible', 'hf'])}")
    return provider_model(parse_spec(spec), max_retries=1, max_tokens=max_tokens)


class HFCausalLM:
    """A local Hugging Face causal LM directory behind `.invoke(messages)` (greedy decoding)."""

    def __init__(self, path: str, max_new_tokens: int = 256):
        from pathlib import Path

        if not (Path(path) / "config.json").is_file():
            raise BackendError(f"'{path}' is not a Hugging Face model directory (no config.json)")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()
        self.max_new_tokens = max_new_tokens

    def invoke(self, messages):
        import torch
        from langchain_core.messages import AIMessage

        msgs = [{"role": {"human": "user", "ai": "assistant"}.get(m.type, m.type), "content": m.content}
                for m in messages]
        if getattr(self.tok, "chat_template", None):
            text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        else:
            text = "\n\n".join(m["content"] for m in msgs) + "\n"
        enc = self.tok(text, return_tensors="pt")
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tok.pad_token_id or self.tok.eos_token_id)
        return AIMessage(self.tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))


def generation_messages(data: CellData, target: int, ctx: np.ndarray, conditioned: bool = True,
                        n_genes: int = 20, anchor: str = "center", temperature: float = 10.0,
                        seed: int = 0):
    """System + user messages asking the model to complete the target's cell sentence."""
    from langchain_core.messages import HumanMessage, SystemMessage

    import prompts
    from tools.sentences import spatial_sentence

    centre = data.coords[target]
    side = 2 * float(np.abs(data.coords[ctx] - centre).max()) + 1.0
    meta = [[data.types[t]] for t in data.type_idx]
    sub = np.asarray(ctx)
    text, _ = spatial_sentence(data.expr[sub], data.genes, data.coords[sub], [meta[i] for i in sub],
                               centre, side, anchor, temperature, seed, top_n=n_genes)
    prefix = "0, 0, " + (f"{data.types[data.type_idx[target]]}, " if conditioned else "")
    user = prompts.load("cell_generation").format(
        side=side, anchor=anchor.replace("_", " "), context=text, panel=" ".join(data.genes),
        n_genes=n_genes, target_prefix=prefix)
    return [SystemMessage(prompts.load("cell_generation_system").strip()), HumanMessage(user)]


def llm_generate(chat, messages, genes, max_attempts: int = 3, ignore=()) -> tuple[list[str], int, int]:
    """Ask `chat` for a cell sentence; returns (valid genes in order, unknown-token count, attempts).

    A reply with no gene of the dataset is retried with a correction (at most `max_attempts` calls),
    then BackendError. Unknown tokens are dropped and counted.
    """
    from langchain_core.messages import AIMessage, HumanMessage

    from tools.sentences import parse_cell_sentence

    skip = {w.lower() for t in ignore for w in str(t).split()}
    messages, reply = list(messages), ""
    for attempt in range(1, max_attempts + 1):
        try:
            reply = chat.invoke(messages).content
        except Exception as e:  # provider errors come in many types
            raise BackendError(f"chat model call failed: {type(e).__name__}: {e}") from e
        reply = reply if isinstance(reply, str) else " ".join(
            c.get("text", "") if isinstance(c, dict) else str(c) for c in reply)
        cell = parse_cell_sentence(reply.strip(), genes)
        if cell.genes:
            return cell.genes, sum(u.lower() not in skip for u in cell.unknown), attempt
        messages += [AIMessage(reply), HumanMessage(
            "That reply contained no gene from the panel. Reply with one cell sentence whose genes "
            "are names from the gene panel, in decreasing expression.")]
    raise BackendError(f"model reply was not a valid cell sentence after {max_attempts} attempts "
                       f"(no gene of the dataset's {len(genes)}-gene panel; last reply: {reply[:80]!r})")


# ---------------------------------------------------------------- evaluation and tools

def split_cells(data: CellData, test_value) -> tuple[np.ndarray, np.ndarray]:
    lab = section_value(data, test_value)
    test, train = np.flatnonzero(data.section == lab), np.flatnonzero(data.section != lab)
    if len(train) == 0:
        raise ParameterError(f"no training cells: every cell is in section {lab}")
    return train, test


def evaluate(data: CellData, test_value, k: int = 10, cross_type: bool = False,
             conditioned: bool = True, max_per_type: int | None = None, seed: int = 0,
             ks=(10, 30, 50), llm=None, llm_cells: int = 10) -> dict:
    """Train on the other sections, score every method on the test section's cells.

    Returns {"ndcg@10": {method: score}, ..., "n_cells", "alpha"} (+ "llm" block if `llm` is given:
    the LLM and the baselines scored on the same first `llm_cells` test cells).
    """
    train, test = split_cells(data, test_value)
    tr, te = sample_per_type(data, train, max_per_type, seed), sample_per_type(data, test, max_per_type, seed + 1)
    (itr, dtr), (ite, dte) = contexts(data, tr, k, cross_type), contexts(data, te, k, cross_type)
    model = ContextModel(conditioned).fit(data, tr, itr, dtr, mean_cells=train)
    preds = baseline_predictions(data, model.means, te, ite, conditioned)
    preds[model.name] = model.predict(data, te, ite, dte)
    scores = {m: ranking_metrics(p, data.expr[te], data.genes, ks) for m, p in preds.items()}
    out = {key: {m: s[key] for m, s in scores.items()} for key in next(iter(scores.values()))}
    out.update(n_cells=int(len(te)), n_train_cells=int(len(tr)), alpha=model.alpha)
    if llm is not None:
        out["llm"] = evaluate_llm(data, llm, te[:llm_cells], ite[:llm_cells], preds, conditioned, ks, seed)
    return out


def evaluate_llm(data, chat, targets, idx, preds, conditioned, ks, seed) -> dict:
    """Score LLM completions (rank lists -> expression) against the truth on a few test cells."""
    from tools.sentences import RankExpressionModel

    rank_model = RankExpressionModel.fit(data.expr[data.section != data.section[targets[0]]])
    lists, unknown = [], 0
    for j, t in enumerate(targets):
        msgs = generation_messages(data, t, idx[j], conditioned, seed=seed + j)
        genes, n_unk, _ = llm_generate(chat, msgs, data.genes, ignore=data.types)
        lists.append(genes)
        unknown += n_unk
    pred = rank_model.to_expression(lists, data.genes)
    n = len(targets)
    scores = {m: ranking_metrics(p[:n], data.expr[targets], data.genes, ks) for m, p in preds.items()}
    scores["llm"] = ranking_metrics(pred, data.expr[targets], data.genes, ks)
    out = {key: {m: s[key] for m, s in scores.items()} for key in scores["llm"]}
    out.update(n_cells=n, unknown_genes=unknown)
    return out


class _DataParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    cell_type_key: str = Field("cell_class", description="obs column with cell types")
    k: int = Field(10, ge=1, le=100, description="context size: the target's k nearest cells")
    cross_type: bool = Field(False, description="remove same-type cells from the context")
    conditioned: bool = Field(True, description="give the model the target's cell type")
    drop_types: list[str] = Field(["Ambiguous"], description="cell types left out entirely")
    drop_gene_prefixes: list[str] = Field(["Blank_"], description="genes starting with these are left out")


class EvaluateGenerationParams(_DataParams):
    split_key: str = Field("bregma", description="obs column naming the sections")
    test_value: str = Field("0.21", description="section held out for testing; others train")
    max_cells_per_type: int | None = Field(None, ge=1, description="at most this many target cells per type")
    seed: int = Field(0, description="random seed for subsampling and traversals")
    llm_model: str | None = Field(None, description="also score a chat model / hf:<dir> on a few cells")
    llm_cells: int = Field(10, ge=1, le=500, description="test cells given to the LLM")


class EvaluateGenerationResult(BaseModel):
    scores: dict[str, dict[str, float]]
    n_cells: int
    model: str
    alpha: float
    seconds: float
    llm: dict | None = None


@register("evaluate_generation", EvaluateGenerationParams, EvaluateGenerationResult,
          intents=("evaluate cell generation", "benchmark generation", "predict cells from neighbours",
                   "ndcg", "class mean baseline"))
def evaluate_generation(adata, p: EvaluateGenerationParams) -> EvaluateGenerationResult:
    """Train on other sections, generate held-out cells from their neighbours and score NDCG@k /
    overlap@k of nearest neighbour, class mean and the context model; writes adata.uns['generation']."""
    import time

    t0 = time.perf_counter()
    data = prepare(adata, p.cell_type_key, p.split_key, p.drop_gene_prefixes, p.drop_types)
    chat = make_chat_model(p.llm_model) if p.llm_model else None
    r = evaluate(data, p.test_value, p.k, p.cross_type, p.conditioned, p.max_cells_per_type, p.seed,
                 llm=chat, llm_cells=p.llm_cells)
    scores = {key: v for key, v in r.items() if "@" in key}
    res = EvaluateGenerationResult(scores=scores, n_cells=r["n_cells"], model=MODEL_NAME,
                                   alpha=r["alpha"], seconds=round(time.perf_counter() - t0, 2),
                                   llm=r.get("llm"))
    adata.uns["generation"] = {"params": p.model_dump(exclude_none=True), **res.model_dump(exclude_none=True)}
    return res


class GenerateCellParams(_DataParams):
    cell: str = Field(description="obs name of the cell to generate from its neighbours")
    method: Literal["context_model", "class_mean", "nearest_neighbor", "llm"] = Field(
        "context_model", description="how to generate the cell")
    llm_model: str | None = Field(None, description="model spec for method='llm' (e.g. openai:gpt-4o-mini, hf:<dir>)")
    n_genes: int = Field(20, ge=1, le=500, description="genes reported in the generated cell sentence")
    max_train_cells_per_type: int = Field(1000, ge=10, description="training cells per type for the model")


class GenerateCellResult(BaseModel):
    cell: str
    method: str
    genes: list[str]
    ndcg_at_10: float
    overlap_at_10: float
    unknown_genes: int = 0


def cell_index(data: CellData, adata, cell: str) -> int:
    """Position of obs name `cell` among the kept cells, or UnknownKeyError."""
    hit = np.flatnonzero(data.names == str(cell))
    if len(hit):
        return int(hit[0])
    if str(cell) in adata.obs_names:
        raise UnknownKeyError(f"cell '{cell}' was left out (its type is in drop_types)")
    raise UnknownKeyError(f"cell '{cell}' not found{suggest(cell, data.names[:5000])}")


@register("generate_cell", GenerateCellParams, GenerateCellResult,
          intents=("generate a cell", "generate missing cell", "predict cell from neighbourhood",
                   "complete cell sentence", "predict the expression of cell", "generate cell",
                   "from its neighbourhood", "from its neighbours", "from the surrounding cells"))
def generate_cell(adata, p: GenerateCellParams) -> GenerateCellResult:
    """Generate one cell's ranked genes from its neighbours and score it against the observed cell;
    writes adata.uns['generated_cell']."""
    data = prepare(adata, p.cell_type_key, None, p.drop_gene_prefixes, p.drop_types)
    t = cell_index(data, adata, p.cell)
    target = np.array([t])
    idx, dist = contexts(data, target, p.k, p.cross_type)
    unknown = 0
    if p.method == "llm":
        if not p.llm_model:
            raise ParameterError("method 'llm' needs llm_model (e.g. openai:<model> or hf:<dir>)")
        from tools.sentences import RankExpressionModel

        msgs = generation_messages(data, t, idx[0], p.conditioned, p.n_genes)
        genes, unknown, _ = llm_generate(make_chat_model(p.llm_model), msgs, data.genes, ignore=data.types)
        others = np.delete(np.arange(len(data.names)), t)
        pred = RankExpressionModel.fit(data.expr[others]).to_expression([genes], data.genes)
    else:
        others = sample_per_type(data, np.delete(np.arange(len(data.names)), t),
                                 p.max_train_cells_per_type, 0)
        if p.method == "context_model":
            itr, dtr = contexts(data, others, p.k, p.cross_type)
            pred = ContextModel(p.conditioned).fit(data, others, itr, dtr).predict(data, target, idx, dist)
        else:
            pred = baseline_predictions(data, class_means(data, others), target, idx, p.conditioned)[p.method]
    order = rank_order(pred[0], data.genes)
    genes = [str(data.genes[i]) for i in order[pred[0][order] > 0][: p.n_genes]]
    m = ranking_metrics(pred, data.expr[target], data.genes, ks=(10,))
    res = GenerateCellResult(cell=str(p.cell), method=p.method, genes=genes, ndcg_at_10=m["ndcg@10"],
                             overlap_at_10=m["overlap@10"], unknown_genes=unknown)
    adata.uns["generated_cell"] = res.model_dump()
    return res
