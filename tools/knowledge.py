"""Gene knowledge store: NCBI gene descriptions in a persistent Chroma collection.

One collection per species and embedder (the name encodes both; the embedder's name is kept in
the collection metadata and checked on every open). Documents are built from the official symbol,
full name, gene type, synonyms and RefSeq summary; mouse genes without their own summary take the
human ortholog's, labelled as such; optional chat-model descriptions are stored with
``source="llm"``. Builds are incremental and write in batches, so an interrupted build leaves a
valid store.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import time
from pathlib import Path
from typing import Callable, Iterable, Literal

from pydantic import BaseModel, Field

from tools.errors import BackendError, DataError, ParameterError
from tools.ncbi import SPECIES, tax_id
from tools.registry import register

Species = Literal["human", "mouse"]


def default_store() -> Path:
    """``$TISSUETALK_HOME/kb`` or ``~/.tissuetalk/kb``."""
    home = os.environ.get("TISSUETALK_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".tissuetalk") / "kb"


# ---- embedder and Chroma embedding function -------------------------------------------------

@functools.lru_cache(maxsize=8)
def _embedder_for(spec: str):
    from tools.embedding import get_embedder

    return get_embedder(spec)


def resolve_embedder(embedder):
    """An embedder object from a spec string (cached per process) or the object itself."""
    return _embedder_for(embedder) if isinstance(embedder, str) else embedder


def _spec_of(embedder) -> str:
    return embedder if isinstance(embedder, str) else getattr(embedder, "spec", embedder.name)


def _ef_class():
    """The project's Chroma embedding function, registered once so reopened collections find it."""
    global _EF
    if _EF is None:
        from chromadb.api.types import EmbeddingFunction
        from chromadb.utils.embedding_functions import register_embedding_function

        @register_embedding_function
        class TissueTalkEmbeddingFunction(EmbeddingFunction):
            """Chroma wrapper around ``tools.embedding.get_embedder(spec)``; the model loads lazily."""

            def __init__(self, spec: str = "minilm", embedder=None):
                self.spec, self._embedder = spec, embedder

            def __call__(self, input):
                emb = self._embedder or resolve_embedder(self.spec)
                return list(emb.embed(list(input)))

            @staticmethod
            def name() -> str:
                return "tissuetalk"

            def get_config(self) -> dict:
                return {"spec": self.spec}

            @staticmethod
            def build_from_config(config: dict):
                return TissueTalkEmbeddingFunction(config.get("spec", "minilm"))

            def default_space(self):
                return "cosine"

        _EF = TissueTalkEmbeddingFunction
    return _EF


_EF = None


def collection_name(species: str, embedder_name: str) -> str:
    """``genes_<species>_<embedder slug>_<hash>`` (valid Chroma name, unique per embedder)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", embedder_name).strip("-._")[:40].strip("-._") or "e"
    h = hashlib.sha256(embedder_name.encode()).hexdigest()[:8]
    return f"genes_{species}_{slug}_{h}"


def _client(store, create: bool):
    import chromadb

    store = Path(store or default_store()).expanduser()
    if not create and not (store / "chroma.sqlite3").exists():
        raise DataError(f"no knowledge store at {store} (build one with `tissuetalk kb build`)")
    store.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(str(store))  # chromadb 1.x telemetry is a no-op


def open_collection(store, species: str, embedder, create: bool = False):
    """The species' collection for this embedder; a clear error when the store was built with another."""
    tax_id(species)
    client = _client(store, create)  # before loading a model: a missing store fails fast
    emb = resolve_embedder(embedder)
    name = collection_name(species, emb.name)
    ef = _ef_class()(_spec_of(embedder), emb)
    existing = {c.name: c for c in client.list_collections()}
    if name not in existing:
        others = [c.metadata.get("embedder", "?") for n, c in existing.items()
                  if n.startswith(f"genes_{species}_") and c.metadata]
        if not create:
            if others:
                raise ParameterError(
                    f"the store holds {species} genes embedded with {', '.join(map(repr, others))}, "
                    f"not with '{emb.name}': ask for that embedder or rebuild the store with this one")
            raise DataError(f"the store has no {species} genes (build them with "
                            f"`tissuetalk kb build --species {species}`)")
        meta = {"species": species, "tax_id": SPECIES[species], "embedder": emb.name,
                "embedder_spec": _spec_of(embedder), "dim": int(emb.dim)}
        return client.create_collection(name, metadata=meta, embedding_function=ef,
                                        configuration={"hnsw": {"space": "cosine"}})
    col = client.get_collection(name, embedding_function=ef)
    meta = col.metadata or {}
    if meta.get("embedder") != emb.name or int(meta.get("dim", -1)) != int(emb.dim):
        raise ParameterError(
            f"collection {name} was built with embedder '{meta.get('embedder')}' "
            f"(dim {meta.get('dim')}), not '{emb.name}' (dim {emb.dim}); refusing to mix them")
    return col


# ---- documents ------------------------------------------------------------------------------

def document_text(rec: dict) -> str:
    """The text that is embedded: symbol, full name, type, synonyms and the (labelled) summary."""
    parts = [f"{rec['symbol']}: {rec['official_full_name']}." if rec.get("official_full_name")
             else f"{rec['symbol']}."]
    if rec.get("type_of_gene"):
        parts.append(f"Gene type: {rec['type_of_gene']}.")
    if rec.get("synonyms"):
        parts.append("Also known as " + ", ".join(rec["synonyms"][:8]) + ".")
    src = rec.get("summary_source")
    if rec.get("summary"):
        if src == "human_ortholog":
            parts.append(f"Summary of the human ortholog {rec['ortholog']}: {rec['summary']}")
        elif src == "llm":
            parts.append(f"Description generated by a language model (not NCBI): {rec['summary']}")
        else:
            parts.append(f"Summary: {rec['summary']}")
    return " ".join(parts)


def _metadata(rec: dict, species: str) -> dict:
    meta = {
        "symbol": rec["symbol"], "symbol_upper": rec["symbol"].upper(), "entrez_id": rec["entrez_id"],
        "species": species, "full_name": rec.get("official_full_name") or "",
        "type_of_gene": rec.get("type_of_gene") or "", "summary": rec.get("summary") or "",
        "source": rec.get("summary_source") or "ncbi_name_only", "ortholog": rec.get("ortholog") or "",
    }
    if rec.get("synonyms"):
        meta["synonyms"] = list(rec["synonyms"])
    return meta


def fill_orthologs(records: list[dict], human_records: Iterable[dict],
                   orthologs: dict[str, list[str]] | None = None) -> int:
    """Give mouse records without a summary their human ortholog's, labelled; returns how many."""
    human = {r["symbol"].upper(): r for r in human_records if r.get("summary")}
    n = 0
    for rec in records:
        if rec.get("summary"):
            continue
        cands = rec.get("human_orthologs") or (orthologs or {}).get(rec["symbol"], [])
        for h in cands:
            hr = human.get(h.upper())
            if hr:
                rec.update(summary=hr["summary"], summary_source="human_ortholog", ortholog=hr["symbol"])
                n += 1
                break
    return n


def read_orthologs(path) -> dict[str, list[str]]:
    """mouse symbol -> human symbols (best supported first) from an HCOP-style TSV."""
    import pandas as pd

    try:
        df = pd.read_csv(path, sep="\t")
    except Exception as e:  # pandas raises many types for a bad file
        raise DataError(f"{path}: unreadable ortholog table ({e})") from e
    if not {"human_symbol", "mouse_symbol"} <= set(df.columns):
        raise DataError(f"{path}: ortholog table needs columns human_symbol and mouse_symbol")
    if "support_n" in df:
        df = df.sort_values("support_n", ascending=False)
    return df.groupby("mouse_symbol", sort=False)["human_symbol"].apply(list).to_dict()


# ---- build ----------------------------------------------------------------------------------

class BuildResult(BaseModel):
    collection: str
    species: str
    embedder: str
    store: str
    n_records: int = Field(description="records selected from the source")
    n_added: int
    n_already: int = Field(description="records already in the store (skipped)")
    n_total: int = Field(description="records in the collection after the build")
    n_refseq: int
    n_ortholog: int
    n_llm: int
    missing_genes: list[str] = Field(default_factory=list, description="requested genes not in the source")
    seconds: float


def load_records(source, species: str, *, summaries=None, human_source=None, orthologs=None,
                 genes: list[str] | None = None, limit: int | None = None,
                 base_url: str | None = None, ftp_url: str | None = None, download_dir=None,
                 min_interval: float | None = None):
    """Records from a file or ``"ncbi"``, ortholog summaries filled in for mouse.

    ``ncbi`` with ``genes``: E-utilities esearch + esummary; without: the FTP ``gene_info`` file,
    then esummary for the RefSeq summaries of the (first ``limit``) genes.

    Returns (records, missing_genes, human_source_used).
    """
    from tools import ncbi

    tax_id(species)
    if str(source) == "ncbi":
        if genes:
            recs = ncbi.download_symbols(genes, species, base_url or ncbi.EUTILS_URL, min_interval)
        else:
            path = ncbi.download_gene_info(species, download_dir or default_store() / "downloads",
                                           ftp_url or ncbi.FTP_URL)
            recs = list(ncbi.read_gene_info(path, species))[:limit]
            summ = {r["entrez_id"]: r["summary"] for r in ncbi.Eutils(
                base_url or ncbi.EUTILS_URL, min_interval).summaries([r["entrez_id"] for r in recs])}
            for r in recs:
                if summ.get(r["entrez_id"]):
                    r.update(summary=summ[r["entrez_id"]], summary_source="refseq")
    else:
        recs = list(ncbi.read_source(source, species, summaries))
        if ncbi.sniff(source) == "jsonl":
            _check_case(recs, species, source)
    if not recs:
        raise DataError(f"{source}: no gene records")
    missing: list[str] = []
    if genes:
        by_sym: dict[str, dict] = {}
        by_syn: dict[str, list[dict]] = {}
        for r in recs:
            by_sym.setdefault(r["symbol"].upper(), r)
            for s in r.get("synonyms") or ():
                by_syn.setdefault(s.upper(), []).append(r)
        def pick(g):  # an official symbol first, else a synonym shared by no other gene
            syn = by_syn.get(g.upper(), [])
            return by_sym.get(g.upper()) or (syn[0] if len(syn) == 1 else None)

        picked = [pick(g) for g in genes]
        missing = [g for g, r in zip(genes, picked) if r is None]
        recs = [r for r in picked if r is not None]
    recs = list({r["entrez_id"]: r for r in recs}.values())
    used = None
    if species == "mouse" and any(not r.get("summary") for r in recs):
        used = human_source or _sibling_human(source)
        if used:
            orth = read_orthologs(orthologs) if orthologs else None
            fill_orthologs(recs, ncbi.read_source(used, "human"), orth)
    return recs, missing, used


def _check_case(recs: list[dict], species: str, source) -> None:
    """Human symbols are upper case, mouse ones capitalised: catch a file of the wrong species."""
    sym = [r["symbol"] for r in recs[:2000] if r.get("type_of_gene") == "protein-coding"
           and any(c.isalpha() for c in r["symbol"])]
    if len(sym) < 20:
        return
    upper = sum(s == s.upper() for s in sym) / len(sym)
    if (species == "human") != (upper > 0.5):
        other = "mouse" if species == "human" else "human"
        raise DataError(f"{source}: the gene symbols look {other}, not {species} "
                        f"({upper:.0%} upper case); check --species")


def _sibling_human(source) -> Path | None:
    if str(source) == "ncbi":
        return None
    cands = sorted(Path(source).parent.glob("human*gene*"))
    return cands[0] if cands else None


def build_store(source, species: str, store=None, embedder="minilm", *, limit: int | None = None,
                genes: list[str] | None = None, summaries=None, human_source=None, orthologs=None,
                describe: Callable[[str], str] | None = None, batch_size: int = 256,
                progress: bool = False, on_batch: Callable[[int], None] | None = None,
                **download) -> BuildResult:
    """Build or extend the species' collection; only records missing from it are embedded."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    if limit is not None and limit < 1:
        raise ParameterError("limit must be at least 1")
    emb = resolve_embedder(embedder)
    recs, missing, _ = load_records(source, species, summaries=summaries, human_source=human_source,
                                    orthologs=orthologs, genes=genes, limit=limit, **download)
    recs = recs[:limit] if limit else recs
    col = open_collection(store, species, embedder, create=True)
    ids = [str(r["entrez_id"]) for r in recs]
    have: set[str] = set()
    for i in range(0, len(ids), 5000):
        have |= set(col.get(ids=ids[i:i + 5000], include=[])["ids"])
    todo = [r for r, i in zip(recs, ids) if i not in have]
    bar = tqdm(total=len(todo), desc=f"kb {species}", unit="gene", disable=not progress)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        if describe is not None:
            for r in batch:
                if not r.get("summary"):
                    _describe(r, describe)
        docs = [document_text(r) for r in batch]
        try:
            vecs = emb.embed(docs, batch_size=64)
        except Exception as e:
            raise BackendError(f"embedding failed: {e}") from e
        col.upsert(ids=[str(r["entrez_id"]) for r in batch], embeddings=vecs, documents=docs,
                   metadatas=[_metadata(r, species) for r in batch])
        bar.update(len(batch))
        if on_batch is not None:
            on_batch(start + len(batch))
    bar.close()
    src = [r.get("summary_source") for r in recs]
    return BuildResult(
        collection=col.name, species=species, embedder=emb.name, store=str(Path(store or default_store())),
        n_records=len(recs), n_added=len(todo), n_already=len(recs) - len(todo), n_total=col.count(),
        n_refseq=src.count("refseq"), n_ortholog=src.count("human_ortholog"), n_llm=src.count("llm"),
        missing_genes=missing, seconds=round(time.perf_counter() - t0, 2))


def _describe(rec: dict, describe: Callable[[str], str]) -> None:
    try:
        text = (describe(rec["symbol"]) or "").strip()
    except Exception as e:
        raise BackendError(f"the chat model failed to describe {rec['symbol']}: {e}") from e
    if text:
        rec.update(summary=text, summary_source="llm")


# ---- queries --------------------------------------------------------------------------------

def search(query: str, species: str, store=None, embedder="minilm", k: int = 5) -> list[dict]:
    """Semantic search: the ``k`` genes whose descriptions are closest to ``query``."""
    if not query or not query.strip():
        raise ParameterError("empty query: give a few words describing the genes you look for")
    if not 1 <= k <= 200:
        raise ParameterError("k must be between 1 and 200")
    emb = resolve_embedder(embedder)
    col = open_collection(store, species, embedder)
    res = col.query(query_embeddings=emb.embed([query.strip()]), n_results=k,
                    include=["metadatas", "documents", "distances"])
    return [{"symbol": m["symbol"], "entrez_id": m["entrez_id"], "full_name": m["full_name"],
             "source": m["source"], "distance": round(float(d), 4), "text": doc}
            for m, doc, d in zip(res["metadatas"][0], res["documents"][0], res["distances"][0])]


class GeneLookup(BaseModel):
    model_config = {"arbitrary_types_allowed": True}
    found: dict[str, dict] = Field(description="query symbol -> record (text, metadata, match)")
    missing: list[str]


def get_genes(symbols: list[str], species: str, store=None, embedder="minilm",
              embeddings: bool = True) -> GeneLookup:
    """Records for gene symbols: exact symbol, then case-insensitive, then a unique synonym."""
    import numpy as np

    symbols = [s for s in dict.fromkeys(str(s).strip() for s in symbols) if s]
    if not symbols:
        raise ParameterError("no gene symbols given")
    col = open_collection(store, species, embedder)
    inc = ["metadatas", "documents"] + (["embeddings"] if embeddings else [])
    found: dict[str, dict] = {}

    def hit(res, j, how):
        m = res["metadatas"][j]
        emb = np.asarray(res["embeddings"][j], np.float32) if embeddings else None
        return {"symbol": m["symbol"], "text": res["documents"][j], "meta": m, "matched_by": how,
                "embedding": emb}

    pending = list(symbols)
    for key, how in (("symbol", "symbol"), ("symbol_upper", "case")):
        norm = str.upper if key == "symbol_upper" else str
        for i in range(0, len(pending), 500):
            chunk = pending[i:i + 500]
            res = col.get(where={key: {"$in": [norm(c) for c in chunk]}}, include=inc)
            rows: dict[str, int] = {}
            for j, m in enumerate(res["metadatas"]):
                rows.setdefault(m[key], j)
            for s in chunk:
                if norm(s) in rows:
                    found[s] = hit(res, rows[norm(s)], how)
        pending = [s for s in pending if s not in found]
    for s in pending:  # synonyms: one query each, accepted only when unambiguous
        res = col.get(where={"synonyms": {"$contains": s}}, include=inc, limit=2)
        if len(res["ids"]) == 1:
            found[s] = hit(res, 0, "synonym")
    pending = [s for s in pending if s not in found]
    return GeneLookup(found=found, missing=pending)


def first_sentence(text: str) -> str:
    m = re.match(r"(.+?[.!?])(\s+[A-Z(]|$)", text.strip(), flags=re.S)
    return (m.group(1) if m else text).strip()


def describe_genes(symbols: list[str], species: str, store=None, embedder="minilm") -> dict[str, str]:
    """Short description per symbol (first sentence of the summary, else the full name).

    Symbols without a match are left out; used by the ST-LLM RAG prompt (``descriptions=``).
    """
    look = get_genes(symbols, species, store, embedder, embeddings=False)
    out = {}
    for s, r in look.found.items():
        m = r["meta"]
        text = first_sentence(m["summary"]) if m.get("summary") else m.get("full_name", "")
        if m.get("source") == "human_ortholog" and m.get("summary"):
            text = f"{text} (human ortholog {m['ortholog']})"
        if text:
            out[s] = text
    return out


# ---- tools ----------------------------------------------------------------------------------

class KbParams(BaseModel):
    species: Species = Field("human", description="species of the genes")
    store: str | None = Field(None, description="knowledge store folder (default $TISSUETALK_HOME/kb)")
    embedder: str = Field("minilm", description="embedder spec the store was built with")


class GeneInfoParams(KbParams):
    genes: list[str] = Field(description="gene symbols to look up", min_length=1, max_length=50)


class GeneInfoResult(BaseModel):
    descriptions: dict[str, str] = Field(description="symbol -> full name and summary")
    sources: dict[str, str] = Field(description="symbol -> text source (refseq, human_ortholog, llm)")
    missing: list[str]


@register("gene_info", GeneInfoParams, GeneInfoResult, needs_data=False,
          intents=("what does gene", "gene function", "what is gene", "describe gene", "function of",
                   "full name", "tell me about gene"))
def gene_info(p: GeneInfoParams) -> GeneInfoResult:
    """Look up genes in the knowledge store: full name and NCBI RefSeq summary."""
    look = get_genes(p.genes, p.species, p.store, p.embedder, embeddings=False)
    desc = {s: (f"{r['meta']['full_name']}. {r['meta']['summary']}".strip()) for s, r in look.found.items()}
    return GeneInfoResult(descriptions=desc, missing=look.missing,
                          sources={s: r["meta"]["source"] for s, r in look.found.items()})


class GeneSearchParams(KbParams):
    query: str = Field(description="what the genes should do, in words", min_length=1)
    k: int = Field(5, ge=1, le=50, description="number of genes to return")


class GeneSearchResult(BaseModel):
    genes: list[str]
    full_names: list[str]
    distances: list[float]


@register("gene_search", GeneSearchParams, GeneSearchResult, needs_data=False,
          intents=("genes involved in", "which genes", "find genes", "genes related to"))
def gene_search(p: GeneSearchParams) -> GeneSearchResult:
    """Semantic search of gene descriptions: genes whose function matches a phrase."""
    hits = search(p.query, p.species, p.store, p.embedder, p.k)
    return GeneSearchResult(genes=[h["symbol"] for h in hits], full_names=[h["full_name"] for h in hits],
                            distances=[h["distance"] for h in hits])
