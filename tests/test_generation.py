"""Cell generation: contexts, metrics, baselines, context model, LLM generator, command."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anndata as ad
import numpy as np
import pytest

from tools.errors import BackendError, ParameterError, UnknownKeyError
from tools.generation import (ContextModel, class_means, contexts, evaluate, generation_messages,
                              llm_generate, make_chat_model, prepare, ranking_metrics)

GENES = ["Aqp4", "Cbln2", "Cldn5", "Flt1", "Gad1", "Gja1", "Mbp", "Mlc1", "Olig2", "Penk",
         "Plp1", "Sgk1", "Slc32a1", "Sox10", "Sst", "Ttyh2"]


def tissue(n=600, seed=0, sections=("s1", "s2")):
    """Random cells of types A/B/C; A cells express Penk in proportion to their neighbours' Cbln2."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    blocks = []
    for s in sections:
        xy = rng.uniform(0, 600, (n, 2))
        t = rng.choice(["A", "B", "C"], n, p=[0.5, 0.3, 0.2])
        lam = np.full((n, len(GENES)), 0.2)
        for typ, genes in {"A": range(4, 8), "B": range(8, 12), "C": range(12, 16)}.items():
            lam[np.ix_(t == typ, list(genes))] = rng.uniform(3, 12, len(genes))
        X = rng.poisson(lam).astype(float)
        X[:, 1] = np.where(t == "B", np.exp(rng.normal(2.0, 0.8, n)), 0)  # Cbln2: variable, B only
        _, nb = cKDTree(xy).query(xy, k=11)
        signal = np.log1p(X[nb[:, 1:], 1]).mean(1)
        X[:, 9] = np.where(t == "A", rng.poisson(1 + 20 * signal), 0)  # Penk responds in A cells
        blocks.append((X, xy, t, s))
    a = ad.AnnData(np.vstack([b[0] for b in blocks]).astype(np.float32))
    a.var_names = GENES
    a.obs_names = [f"c{i}" for i in range(a.n_obs)]
    a.obs["cell_class"] = np.concatenate([b[2] for b in blocks])
    a.obs["section"] = np.concatenate([[b[3]] * n for b in blocks])
    a.obsm["spatial"] = np.vstack([b[1] for b in blocks])
    return a


def test_ranking_metrics_match_hand_computed_values():
    genes = [f"g{i}" for i in range(6)]
    true = np.array([[6.0, 5, 4, 3, 2, 1]])
    assert ranking_metrics(true, true, genes, ks=(3,)) == {"ndcg@3": 1.0, "overlap@3": 1.0}
    pred = np.array([[6.0, 0, 4, 5, 0, 0]])  # top-3 predicted: g0 (rel), g3 (not), g2 (rel)
    m = ranking_metrics(pred, true, genes, ks=(3,))
    disc = 1 / np.log2([2, 3, 4])
    assert m["ndcg@3"] == pytest.approx((disc[0] + disc[2]) / disc.sum())
    assert m["overlap@3"] == pytest.approx(2 / 3)


def test_contexts_exclude_self_and_same_type_in_cross_type_mode():
    data = prepare(tissue(200), "cell_class", "section")
    targets = np.arange(0, 400, 7)
    idx, dist = contexts(data, targets, k=5)
    assert not (idx == targets[:, None]).any()
    assert (np.diff(dist, axis=1) >= 0).all()
    assert (data.section[idx] == data.section[targets][:, None]).all()
    idx, _ = contexts(data, targets, k=5, cross_type=True)
    assert (data.type_idx[idx] != data.type_idx[targets][:, None]).all()


def test_context_model_learns_a_neighbourhood_effect_class_mean_cannot():
    data = prepare(tissue(), "cell_class", "section")
    tr, te = np.flatnonzero(data.section == "s1"), np.flatnonzero(data.section == "s2")
    (itr, dtr), (ite, dte) = contexts(data, tr, 10), contexts(data, te, 10)
    model = ContextModel().fit(data, tr, itr, dtr)
    pred = model.predict(data, te, ite, dte)
    a = data.type_idx[te] == data.types.index("A")
    penk = list(data.genes).index("Penk")
    r = np.corrcoef(pred[a, penk], data.expr[te][a, penk])[0, 1]
    assert r > 0.5
    cm = class_means(data, tr)[data.type_idx[te]]
    err = lambda p: np.mean((p[a, penk] - data.expr[te][a, penk]) ** 2)  # noqa: E731
    assert err(pred) < 0.75 * err(cm)


def test_evaluate_reports_every_method_and_k():
    data = prepare(tissue(300), "cell_class", "section")
    r = evaluate(data, "s2", k=8, cross_type=True, max_per_type=50)
    assert r["n_cells"] == 150
    for key in ("ndcg@10", "overlap@10"):
        assert set(r[key]) == {"nearest_neighbor", "class_mean", "context_model"}
        assert all(0 <= v <= 1 for v in r[key].values())
    assert "ndcg@16" in r  # k capped at the panel size
    with pytest.raises(UnknownKeyError, match="available: s1, s2"):
        evaluate(data, "s3")


def test_bad_keys_and_cells_are_named():
    from tools.generation import GenerateCellParams, generate_cell

    a = tissue(100)
    with pytest.raises(UnknownKeyError, match="did you mean: cell_class"):
        prepare(a, "cell_clas")
    with pytest.raises(UnknownKeyError, match="cell 'zz9' not found"):
        generate_cell(a, GenerateCellParams(cell="zz9"))
    with pytest.raises(ParameterError, match="unknown model provider"):
        make_chat_model("opneai:gpt")


# ---------------------------------------------------------------- LLM: scripted OpenAI server

@pytest.fixture
def scripted_server():
    """A local server speaking the OpenAI chat-completions wire format with scripted replies."""
    state = {"replies": [], "requests": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["requests"].append((self.path, body))
            text = state["replies"].pop(0) if state["replies"] else "nothing"
            out = json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                              "model": body.get("model"), "choices": [{
                                  "index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": text}}],
                              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out.encode())

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    state["spec"] = f"openai-compatible:http://127.0.0.1:{srv.server_port}/v1#scripted"
    yield state
    srv.shutdown()


def test_llm_reply_retried_then_parsed_through_openai_sdk(scripted_server):
    data = prepare(tissue(100), "cell_class", "section")
    idx, _ = contexts(data, np.array([5]), k=6)
    msgs = generation_messages(data, 5, idx[0], conditioned=True, n_genes=5)
    scripted_server["replies"] = ["Sorry, I cannot answer that.", "0, 0, A, Gad1 Foo1 gja1 Penk"]
    genes, unknown, attempts = llm_generate(make_chat_model(scripted_server["spec"]), msgs,
                                            data.genes, ignore=data.types)
    assert (genes, unknown, attempts) == (["Gad1", "Gja1", "Penk"], 1, 2)
    path, first = scripted_server["requests"][0]
    assert path.endswith("/chat/completions") and first["model"] == "scripted"
    user = first["messages"][-1]["content"]
    assert f"0, 0, {data.types[data.type_idx[5]]}, " in user and "Gene panel: Aqp4 Cbln2" in user
    assert "no gene from the panel" in scripted_server["requests"][1][1]["messages"][-1]["content"]


def test_llm_gives_a_clear_error_after_bounded_retries(scripted_server):
    scripted_server["replies"] = ["no idea"] * 5
    with pytest.raises(BackendError, match="not a valid cell sentence after 3 attempts"):
        llm_generate(make_chat_model(scripted_server["spec"]), [], GENES)
    assert len(scripted_server["requests"]) == 3


# ---------------------------------------------------------------- LLM: tiny random GPT-2

def tiny_gpt2(path, words):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(path)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=2048, n_embd=32, n_layer=1, n_head=2,
                     pad_token_id=1, bos_token_id=None, eos_token_id=None)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    return f"hf:{path}"


def test_tiny_random_gpt2_junk_is_retried_then_a_clear_error(tmp_path):
    data = prepare(tissue(100), "cell_class", "section")
    idx, _ = contexts(data, np.array([3]), k=6)
    msgs = generation_messages(data, 3, idx[0], n_genes=5)
    chat = make_chat_model(tiny_gpt2(tmp_path / "junk", ["alpha", "beta", "gamma", "delta"]), max_tokens=8)
    with pytest.raises(BackendError, match="after 3 attempts"):
        llm_generate(chat, msgs, data.genes)


def test_tiny_random_gpt2_genes_are_parsed_when_present(tmp_path):
    data = prepare(tissue(100), "cell_class", "section")
    idx, _ = contexts(data, np.array([3]), k=6)
    msgs = generation_messages(data, 3, idx[0], n_genes=5)
    chat = make_chat_model(tiny_gpt2(tmp_path / "genes", [*GENES, "junk"]), max_tokens=12)
    reply = chat.invoke(msgs).content
    genes, unknown, attempts = llm_generate(chat, msgs, data.genes)
    words = reply.split()
    assert genes == list(dict.fromkeys(w for w in words if w in GENES))
    assert unknown == words.count("junk") and attempts == 1


def test_hf_spec_must_be_a_model_directory(tmp_path):
    with pytest.raises(BackendError, match="not a Hugging Face model directory"):
        make_chat_model(f"hf:{tmp_path}")


# ---------------------------------------------------------------- real data

def test_generate_command_on_merfish_beats_class_mean(merfish, capsys):
    import argparse

    from agent.commands import generate

    parser = argparse.ArgumentParser()
    generate.add_arguments(parser)
    args = parser.parse_args(["--data", str(merfish), "--cell-type-key", "cell_class", "--split-key",
                              "bregma", "--test-value", "0.21", "--cross-type",
                              "--max-cells-per-type", "100", "--json"])
    assert generate.run(args) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("ndcg@10", "overlap@10", "ndcg@30", "overlap@30", "ndcg@50", "overlap@50"):
        assert set(out[key]) == {"nearest_neighbor", "class_mean", "context_model"}
    assert out["ndcg@10"]["context_model"] > out["ndcg@10"]["class_mean"] > out["ndcg@10"]["nearest_neighbor"]
    assert out["overlap@10"]["context_model"] > out["overlap@10"]["class_mean"]
    assert out["n_cells"] > 500 and out["seconds"] > 0


def test_generate_cell_on_merfish(merfish):
    from tools.generation import GenerateCellParams, generate_cell

    a = ad.read_h5ad(merfish)
    cell = a.obs_names[(a.obs["cell_class"] == "Astrocyte").to_numpy()][10]
    r = generate_cell(a, GenerateCellParams(cell=cell, method="class_mean", n_genes=10))
    assert len(r.genes) == 10 and "Aqp4" in r.genes and r.ndcg_at_10 > 0.3
    assert a.uns["generated_cell"]["cell"] == cell
    amb = a.obs_names[(a.obs["cell_class"] == "Ambiguous").to_numpy()][0]
    with pytest.raises(UnknownKeyError, match="left out"):
        generate_cell(a, GenerateCellParams(cell=amb))


def test_evaluate_scores_an_llm_on_the_same_cells(scripted_server):
    data = prepare(tissue(150), "cell_class", "section")
    scripted_server["replies"] = ["0, 0, A, Gad1 Gja1 Mlc1 Mbp", "0, 0, B, Olig2 Plp1"]
    r = evaluate(data, "s2", k=6, llm=make_chat_model(scripted_server["spec"]), llm_cells=2)
    llm = r["llm"]
    assert llm["n_cells"] == 2 and llm["unknown_genes"] == 0
    assert set(llm["ndcg@10"]) == {"nearest_neighbor", "class_mean", "context_model", "llm"}
    assert 0 <= llm["ndcg@10"]["llm"] <= 1 and len(scripted_server["requests"]) == 2
