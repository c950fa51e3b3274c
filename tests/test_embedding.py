"""Embedders: MiniLM (real model), hf:<dir> (tiny models built here), openai (local HTTP server)."""
import hashlib
import json
import shutil
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from tools.embedding import (EmbedParams, HFEmbedder, OpenAIEmbedder, embed_prompts,
                             get_embedder)
from tools.errors import BackendError, DataError, ParameterError, UnknownKeyError


# --- minilm ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("minilm_cache")


def test_minilm_semantics_shape_and_norm(minilm_cache):
    e = get_embedder("minilm", cache_dir=minilm_cache)
    x = e.embed(["oligodendrocyte myelin", "myelin sheath of oligodendrocytes", "stock market"])
    assert x.shape == (3, 384) and x.dtype == np.float32 and e.dim == 384
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert x[0] @ x[1] > x[0] @ x[2] + 0.3
    assert "all-MiniLM-L6-v2" in e.name


def test_minilm_cache_computes_only_missing(minilm_cache):
    texts = ["astrocyte GFAP", "layer 5 pyramidal neuron", "astrocyte GFAP"]
    e = get_embedder("minilm", cache_dir=minilm_cache)
    x1 = e.embed(texts)
    assert (e.n_cached, e.n_computed) == (0, 2)  # the duplicate is computed once
    np.testing.assert_array_equal(x1[0], x1[2])
    e2 = get_embedder("minilm", cache_dir=minilm_cache)  # a new object reads the same file
    x2 = e2.embed(texts)
    assert (e2.n_cached, e2.n_computed) == (2, 0)
    np.testing.assert_array_equal(x1, x2)
    x3 = e2.embed(texts + ["microglia"], batch_size=1, progress=True)
    assert (e2.n_cached, e2.n_computed) == (2, 1)
    np.testing.assert_array_equal(x3[:3], x1)


def test_minilm_max_seq_length_truncates(tmp_path):
    long = "myelin " * 40 + "stock market " * 200
    short = get_embedder("minilm", cache_dir=tmp_path, max_seq_length=32)
    full = get_embedder("minilm", cache_dir=tmp_path, max_seq_length=512)
    assert short.name != full.name  # truncation changes vectors, so it is part of the cache key
    a, b = short.embed([long]), full.embed([long])
    assert float(a[0] @ b[0]) < 0.99
    with pytest.raises(ParameterError, match="max_seq_length"):
        get_embedder("minilm", cache_dir=tmp_path, max_seq_length=513)


def test_cache_file_is_sqlite_float32(tmp_path):
    e = get_embedder("minilm", cache_dir=tmp_path)
    e.embed(["hippocampus"])
    (f,) = tmp_path.glob("*.sqlite")
    con = sqlite3.connect(f)
    h, dim, blob = con.execute("SELECT h, dim, v FROM emb").fetchone()
    con.close()
    assert h == hashlib.sha256(b"hippocampus").hexdigest() and dim == 384
    assert len(blob) == 384 * 4


def test_embed_prompts_tool_on_dlpfc(dlpfc_hvg300, tmp_path, monkeypatch):
    """Prompts listing each spot's top genes: white-matter spots resemble each other more
    than they resemble Layer1 spots."""
    import anndata as ad
    import scanpy as sc

    monkeypatch.setenv("TISSUETALK_CACHE", str(tmp_path))
    a = ad.read_h5ad(dlpfc_hvg300)
    gt = a.obs["ground_truth"].astype(str)
    idx = np.r_[np.flatnonzero(gt == "WM")[:60], np.flatnonzero(gt == "Layer1")[:60]]
    a = a[idx].copy()
    with pytest.raises(UnknownKeyError, match="serialise_prompts"):
        embed_prompts(a, EmbedParams())
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    x = a.X.toarray() if hasattr(a.X, "toarray") else np.asarray(a.X)
    top = np.argsort(-x, axis=1)[:, :10]
    a.obs["prompt"] = ["Top genes: " + ", ".join(a.var_names[t]) for t in top]
    r = embed_prompts(a, EmbedParams(key_added="X_text", batch_size=32))
    assert (r.n_texts, r.dim, r.key) == (120, 384, "X_text")
    assert r.n_cached + r.n_computed == a.obs["prompt"].nunique() and r.n_cached == 0
    e = a.obsm["X_text"]
    assert e.shape == (120, 384) and a.uns["X_text"]["embedder"] == r.embedder
    wm, l1 = e[:60], e[60:]
    within = (wm @ wm.T)[np.triu_indices(60, 1)].mean()
    across = (wm @ l1.T).mean()
    assert within > across + 0.05
    a.obs["prompt"] = a.obs["prompt"].astype("category")  # as after an h5ad round trip
    r2 = embed_prompts(a, EmbedParams(key_added="X_text2"))
    assert r2.n_computed == 0 and np.array_equal(a.obsm["X_text2"], e)


def test_embed_prompts_rejects_missing_text(tmp_path, monkeypatch):
    import anndata as ad
    import pandas as pd

    monkeypatch.setenv("TISSUETALK_CACHE", str(tmp_path))
    a = ad.AnnData(np.zeros((3, 2), dtype=np.float32))
    a.obs["prompt"] = pd.Series(["a spot", None, "another"], index=a.obs_names, dtype=object)
    with pytest.raises(DataError, match="1 of 3"):
        embed_prompts(a, EmbedParams())
    assert "X_text" not in a.obsm


# --- hf:<dir> ---------------------------------------------------------------------------------

SENTENCES = ["the oligodendrocyte makes myelin in white matter",
             "neurons of layer five project to the spinal cord",
             "astrocytes express glial fibrillary acidic protein",
             "microglia are the immune cells of the brain"]


def _tokenizer(with_pad: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[UNK]", "[PAD]", "[EOS]"] if with_pad else ["[UNK]", "[EOS]"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=specials))
    kw = {"pad_token": "[PAD]"} if with_pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]", **kw)


@pytest.fixture(scope="module", params=["gpt2", "bert"])
def tiny_model(request, tmp_path_factory):
    import torch
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    torch.manual_seed(0)
    tok = _tokenizer(with_pad=request.param == "bert")  # the decoder has no pad token
    if request.param == "gpt2":
        model = GPT2Model(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2,
                                     n_positions=64))
    else:
        model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=64))
    d = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_hf_shape_determinism_padding(tiny_model, tmp_path):
    e = get_embedder(f"hf:{tiny_model}", cache_dir=tmp_path / "a")
    assert e.dim == 32 and e.name.startswith(f"hf:{tiny_model.name}:layer-1")
    x = e.embed(SENTENCES)
    assert x.shape == (4, 32) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert np.abs(x[0] - x[1]).max() > 1e-3
    again = get_embedder(f"hf:{tiny_model}", cache_dir=tmp_path / "b").embed(SENTENCES)
    np.testing.assert_array_equal(x, again)
    # a short text alone vs. padded in a batch with a longer one
    short, long = "microglia", SENTENCES[1] + " " + SENTENCES[2]
    alone = get_embedder(f"hf:{tiny_model}", cache_dir=tmp_path / "c").embed([short])
    batched = get_embedder(f"hf:{tiny_model}", cache_dir=tmp_path / "d").embed([long, short])
    np.testing.assert_allclose(alone[0], batched[1], atol=1e-5)


def test_hf_layer_selection_and_fingerprint(tiny_model, tmp_path):
    last = get_embedder(f"hf:{tiny_model}", cache_dir=tmp_path)
    prev = get_embedder(f"hf:{tiny_model}#layer=-2", cache_dir=tmp_path)
    assert last.name != prev.name
    a, b = last.embed(SENTENCES[:2]), prev.embed(SENTENCES[:2])
    assert np.abs(a - b).max() > 1e-3
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    assert get_embedder(f"hf:{copy}", cache_dir=tmp_path).name.split(":")[-1] == \
        last.name.split(":")[-1]  # same content, same cache id
    with pytest.raises(ParameterError, match="out of range"):
        get_embedder(f"hf:{tiny_model}#layer=7", cache_dir=tmp_path)
    with pytest.raises(ParameterError, match="integer"):
        get_embedder(f"hf:{tiny_model}#layer=last", cache_dir=tmp_path)
    with pytest.raises(ParameterError, match="unknown option"):
        get_embedder(f"hf:{tiny_model}#pool=cls", cache_dir=tmp_path)


def test_hf_truncates_to_model_positions(tiny_model, tmp_path):
    e = get_embedder(f"hf:{tiny_model}", cache_dir=tmp_path, max_seq_length=512)
    assert e.max_seq_length == 64  # the tiny models have 64 positions
    x = e.embed([" ".join(SENTENCES * 10)])  # ~280 words would overflow the position table
    assert x.shape == (1, 32) and np.isfinite(x).all()


# --- openai -----------------------------------------------------------------------------------

KEY = "sk-test-SECRET-0123456789"


def _vec(text: str) -> list[float]:
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).normal(size=8).round(6).tolist()


@pytest.fixture
def api_server():
    """An OpenAI-wire embeddings server; `script` is a list of status codes to answer first."""
    state = {"script": [], "requests": [], "auth": []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["requests"].append(req)
            auth = self.headers.get("Authorization", "")
            state["auth"].append(auth)
            code = state["script"].pop(0) if state["script"] else 200
            if self.path != "/v1/embeddings":
                return self._send(404, {"error": {"message": "not found"}})
            if code != 200:
                msg = f"Incorrect API key provided: {auth.removeprefix('Bearer ')}" \
                    if code == 401 else "internal error"
                return self._send(code, {"error": {"message": msg, "type": "error"}})
            inp = req["input"] if isinstance(req["input"], list) else [req["input"]]
            data = [{"object": "embedding", "index": i, "embedding": _vec(t)}
                    for i, t in reversed(list(enumerate(inp)))]  # order must come from index
            self._send(200, {"object": "list", "data": data, "model": req["model"],
                             "usage": {"prompt_tokens": 1, "total_tokens": 1}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()
    server.server_close()


def test_openai_success_and_cache(api_server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    e = get_embedder(f"openai:test-embed@{api_server['url']}", cache_dir=tmp_path)
    texts = ["myelin", "neuron", "astrocyte"]
    x = e.embed(texts, batch_size=2)
    want = np.array([_vec(t) for t in texts], dtype=np.float32)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(x, want, atol=1e-6)
    assert len(api_server["requests"]) == 2 and api_server["auth"][0] == f"Bearer {KEY}"
    assert api_server["requests"][0]["model"] == "test-embed"
    assert e.dim == 8 and KEY not in e.name
    e.embed(texts)
    assert e.n_computed == 0 and len(api_server["requests"]) == 2


def test_openai_retries_server_error(api_server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    api_server["script"] = [500]
    e = get_embedder(f"openai:test-embed@{api_server['url']}", cache_dir=tmp_path)
    x = e.embed(["oligodendrocyte"])
    assert len(api_server["requests"]) == 2  # one failure, one retry
    np.testing.assert_allclose(x[0], np.array(_vec("oligodendrocyte")) /
                               np.linalg.norm(_vec("oligodendrocyte")), atol=1e-6)


def test_openai_auth_error_hides_key(api_server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    api_server["script"] = [401] * 5
    e = get_embedder(f"openai:test-embed@{api_server['url']}", cache_dir=tmp_path)
    with pytest.raises(BackendError) as info:
        e.embed(["myelin"])
    msg = str(info.value)
    assert "401" in msg and "OPENAI_API_KEY" in msg and "test-embed" in msg
    assert KEY not in msg and KEY not in repr(info.value) and info.value.__cause__ is None
    assert len(api_server["requests"]) == 1  # an auth failure is not retried
    assert len(e.cache) == 0  # nothing half-written


def test_openai_unreachable_and_missing_key(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    e = OpenAIEmbedder("m", f"http://127.0.0.1:{port}/v1", cache_dir=tmp_path, max_retries=1)
    with pytest.raises(BackendError, match="unreachable"):
        e.embed(["x"])
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(BackendError, match="OPENAI_API_KEY is not set"):
        get_embedder("openai:text-embedding-3-small", cache_dir=tmp_path)


# --- bad specs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, err, match", [
    ("minilm2", ParameterError, "did you mean: minilm"),
    ("", ParameterError, "unknown embedder spec"),
    ("bert", ParameterError, "unknown embedder spec 'bert'"),
    ("hf:", ParameterError, "unknown embedder spec"),
    ("openai:", ParameterError, "unknown embedder spec"),
    ("openai:@http://x", ParameterError, "no model name"),
    ("openai:m@ftp://x", ParameterError, "http:// or https://"),
    ("hf:/nonexistent/model/dir", BackendError, "not found: /nonexistent/model/dir"),
])
def test_bad_specs(spec, err, match, tmp_path):
    with pytest.raises(err, match=match):
        get_embedder(spec, cache_dir=tmp_path)


def test_hf_dir_without_model(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(BackendError, match="no config.json"):
        get_embedder(f"hf:{tmp_path / 'm'}", cache_dir=tmp_path)
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(BackendError, match="could not load"):
        HFEmbedder(str(tmp_path / "m"), cache_dir=tmp_path)


def test_embed_rejects_bad_texts(tmp_path):
    e = get_embedder("minilm", cache_dir=tmp_path)
    with pytest.raises(ParameterError, match="list of texts"):
        e.embed("one string")
    with pytest.raises(ParameterError, match="text 1 is NoneType"):
        e.embed(["ok", None])


# --- cache safety ---------------------------------------------------------------------------------

class _Flaky:
    """Wraps a real embedder's model call and fails on the n-th batch (an interrupted run)."""

    def __init__(self, emb, fail_on: int):
        self.emb, self.fail_on, self.calls = emb, fail_on, 0
        self.real = emb._compute
        emb._compute = self

    def __call__(self, texts):
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyboardInterrupt
        return self.real(texts)


def test_cache_keeps_committed_batches_after_interruption(tmp_path):
    texts = [f"cortical layer {i}" for i in range(6)]
    e = get_embedder("minilm", cache_dir=tmp_path)
    _Flaky(e, fail_on=2)
    with pytest.raises(KeyboardInterrupt):
        e.embed(texts, batch_size=2)
    assert len(e.cache) == 2  # the first batch was committed, nothing of the second
    e2 = get_embedder("minilm", cache_dir=tmp_path)
    x = e2.embed(texts, batch_size=2)
    assert (e2.n_cached, e2.n_computed) == (2, 4)
    fresh = get_embedder("minilm", cache_dir=tmp_path / "fresh").embed(texts)
    np.testing.assert_allclose(x, fresh, atol=1e-6)


def _write_rows(args):
    from tools.embedding_cache import EmbeddingCache

    cache_dir, start = args
    c = EmbeddingCache(cache_dir, "concurrency-test")
    for i in range(start, start + 50, 10):
        hs = [f"{j:064d}" for j in range(i, i + 10)]
        c.put(hs, np.full((10, 4), i, dtype=np.float32))
        assert len(c.get(hs)) == 10
    return len(c)


def test_cache_concurrent_processes(tmp_path):
    import multiprocessing as mp

    from tools.embedding_cache import EmbeddingCache

    with mp.get_context("spawn").Pool(3) as pool:
        pool.map(_write_rows, [(str(tmp_path), s) for s in (0, 50, 100)])
    c = EmbeddingCache(tmp_path, "concurrency-test")
    assert len(c) == 150
    got = c.get([f"{j:064d}" for j in (0, 75, 149)])
    assert {h[-3:]: float(v[0]) for h, v in got.items()} == {"000": 0.0, "075": 70.0, "149": 140.0}
    assert c.any_dim() == 4
