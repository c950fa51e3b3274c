"""Knowledge store: build from NCBI-format sources, incremental builds, search/get, bad input."""
import argparse
import gzip
import json

import pytest
from kb_helpers import FakeNCBI, GENE_INFO_HEADER, esummary_json, gene_info_row, read_lines, write_gz

from tools import knowledge as kb
from tools.errors import BackendError, DataError, ParameterError

N_SLICE = 120


@pytest.fixture(scope="session")
def human_file(knowledge):
    return knowledge / "gene_descriptions" / "human_gene_descriptions.jsonl.gz"


@pytest.fixture(scope="session")
def slice_dir(tmp_path_factory, human_file):
    """The first records of the shared human file, and a few mouse genes, written to tmp."""
    d = tmp_path_factory.mktemp("kbsrc")
    write_gz(d / "human_slice.jsonl.gz", read_lines(human_file, N_SLICE))
    mouse = read_lines(human_file.parent / "mouse_gene_descriptions.jsonl.gz",
                       symbols={"Aanat", "Aatk", "Pzp", "Acta2"})
    (d / "mouse").mkdir()
    write_gz(d / "mouse" / "mouse_genes.jsonl.gz", mouse)
    write_gz(d / "mouse" / "human_gene_descriptions.jsonl.gz",
             read_lines(human_file, symbols={"AANAT", "AATK", "ACTA2", "PZP"}))
    return d


@pytest.fixture(scope="session")
def records(slice_dir):
    return [json.loads(x) for x in gzip.open(slice_dir / "human_slice.jsonl.gz", "rt")]


@pytest.fixture(scope="session")
def store(tmp_path_factory, slice_dir):
    path = tmp_path_factory.mktemp("kb")
    res = kb.build_store(slice_dir / "human_slice.jsonl.gz", "human", path, limit=100)
    assert (res.n_added, res.n_already, res.n_total) == (100, 0, 100)
    return path


def test_build_is_incremental_and_idempotent(store, slice_dir, records):
    res = kb.build_store(slice_dir / "human_slice.jsonl.gz", "human", store)
    assert (res.n_records, res.n_added, res.n_already, res.n_total) == (N_SLICE, N_SLICE - 100, 100, N_SLICE)
    assert res.n_refseq == sum(bool(r["refseq_summary"]) for r in records)
    again = kb.build_store(slice_dir / "human_slice.jsonl.gz", "human", store)
    assert (again.n_added, again.n_total) == (0, N_SLICE)


def test_search_finds_genes_by_function(store):
    hits = kb.search("adenylate cyclase enzyme that makes cyclic AMP", "human", store, k=3)
    assert [h["symbol"][:4] for h in hits] == ["ADCY"] * 3
    assert hits[0]["distance"] <= hits[2]["distance"]
    acts = kb.search("acetylcholine hydrolysis at the neuromuscular junction", "human", store, k=3)
    assert "ACHE" in [h["symbol"] for h in acts]


def test_get_by_symbol_case_and_synonym(store):
    look = kb.get_genes(["A2M", "a1bg", "FWP007", "NOT_A_GENE"], "human", store)
    assert {s: r["symbol"] for s, r in look.found.items()} == {"A2M": "A2M", "a1bg": "A1BG", "FWP007": "A2M"}
    assert [look.found[s]["matched_by"] for s in ("A2M", "a1bg", "FWP007")] == ["symbol", "case", "synonym"]
    assert look.missing == ["NOT_A_GENE"]
    # the stored vector is the embedder's vector of the stored document
    emb = kb.resolve_embedder("minilm")
    v = emb.embed([look.found["A2M"]["text"]])[0]
    assert float(v @ look.found["A2M"]["embedding"]) > 0.999
    assert "protease inhibitor" in look.found["A2M"]["text"]


def test_describe_genes_for_prompts(store):
    d = kb.describe_genes(["A2M", "A2MP1", "NOPE"], "human", store)
    assert d["A2M"] == "The protein encoded by this gene is a protease inhibitor and cytokine transporter."
    assert d["A2MP1"] == "alpha-2-macroglobulin pseudogene 1"  # no summary: the full name
    assert "NOPE" not in d


def test_reopened_collection_uses_project_embedding_function(store):
    import chromadb

    name = kb.collection_name("human", kb.resolve_embedder("minilm").name)
    col = chromadb.PersistentClient(str(store)).get_collection(name)
    assert col.configuration_json["embedding_function"]["name"] == "tissuetalk"
    assert col.metadata["embedder"] == kb.resolve_embedder("minilm").name
    res = col.query(query_texts=["alpha-2-macroglobulin protease inhibitor"], n_results=1)
    assert res["metadatas"][0][0]["symbol"] in {"A2M", "A2MP1"}


def test_embedder_mismatch_is_refused(store):
    from tools.embedding import get_embedder

    other = get_embedder("minilm", max_seq_length=128)  # same model, different embedder name
    with pytest.raises(ParameterError, match="embedded with .*max256.*not with .*max128"):
        kb.search("kinase", "human", store, other)
    with pytest.raises(ParameterError, match="max256"):
        kb.get_genes(["A2M"], "human", store, other)


def test_tampered_collection_metadata_is_refused(tmp_path):
    import chromadb

    emb = kb.resolve_embedder("minilm")
    client = chromadb.PersistentClient(str(tmp_path))
    client.create_collection(kb.collection_name("human", emb.name), embedding_function=None,
                             metadata={"embedder": "hf:other-model", "dim": 768})
    with pytest.raises(ParameterError, match="hf:other-model.*refusing"):
        kb.search("kinase", "human", tmp_path)


def test_interrupted_build_leaves_a_valid_store(tmp_path, slice_dir):
    src = slice_dir / "human_slice.jsonl.gz"

    def stop(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        kb.build_store(src, "human", tmp_path, limit=30, batch_size=10, on_batch=stop)
    assert len(kb.get_genes(["A1BG", "A2M"], "human", tmp_path).found) == 2
    res = kb.build_store(src, "human", tmp_path, limit=30, batch_size=10)
    assert (res.n_already, res.n_added, res.n_total) == (10, 20, 30)


def test_genes_filter_reports_missing(tmp_path, slice_dir):
    res = kb.build_store(slice_dir / "human_slice.jsonl.gz", "human", tmp_path,
                         genes=["ACHE", "FWP007", "NOT_A_GENE"])
    assert res.n_added == 2 and res.missing_genes == ["NOT_A_GENE"]  # FWP007 is A2M's synonym


def test_mouse_takes_human_ortholog_summary(tmp_path, slice_dir):
    res = kb.build_store(slice_dir / "mouse" / "mouse_genes.jsonl.gz", "mouse", tmp_path)
    look = kb.get_genes(["Aanat", "Aatk", "Pzp"], "mouse", tmp_path, embeddings=False)
    meta = {s: r["meta"] for s, r in look.found.items()}
    assert meta["Aanat"]["source"] == "refseq"
    assert meta["Aatk"]["source"] == "human_ortholog" and meta["Aatk"]["ortholog"] == "AATK"
    assert "Summary of the human ortholog AATK:" in look.found["Aatk"]["text"]
    assert meta["Pzp"]["source"] == "ncbi_name_only"  # no ortholog listed: name only
    assert res.n_ortholog >= 1 and res.n_refseq >= 1


def test_llm_descriptions_are_labelled(tmp_path, slice_dir):
    calls = []

    def describe(symbol):
        calls.append(symbol)
        return f"{symbol} is a test description written by a fake chat model."

    kb.build_store(slice_dir / "human_slice.jsonl.gz", "human", tmp_path, genes=["A2M", "A2MP1"],
                   describe=describe)
    assert calls == ["A2MP1"]  # A2M has a RefSeq summary
    look = kb.get_genes(["A2MP1", "A2M"], "human", tmp_path, embeddings=False)
    assert look.found["A2MP1"]["meta"]["source"] == "llm"
    assert "generated by a language model (not NCBI)" in look.found["A2MP1"]["text"]
    assert look.found["A2M"]["meta"]["source"] == "refseq"


def test_gene_info_tsv_with_summaries_and_esummary_json(tmp_path, records):
    recs = records[:6]
    info = tmp_path / "Homo_sapiens.gene_info.gz"
    rows = [gene_info_row(r, 9606) for r in recs] + [gene_info_row(records[7] | {"symbol": "Zzz1"}, 10090)]
    write_gz(info, [GENE_INFO_HEADER + "\n"] + [r + "\n" for r in rows])
    summ = tmp_path / "summaries.jsonl"
    summ.write_text("".join(json.dumps({"entrez_id": r["entrez_id"], "refseq_summary": r["refseq_summary"]})
                            + "\n" for r in recs))
    res = kb.build_store(info, "human", tmp_path / "a", summaries=summ)
    assert (res.n_added, res.n_refseq) == (6, sum(bool(r["refseq_summary"]) for r in recs))
    es = tmp_path / "esummary.json"
    es.write_text(json.dumps(esummary_json(recs)))
    res2 = kb.build_store(es, "human", tmp_path / "b")
    assert res2.n_added == 6 and res2.n_refseq == res.n_refseq
    a = kb.get_genes(["A2M"], "human", tmp_path / "a", embeddings=False).found["A2M"]
    b = kb.get_genes(["A2M"], "human", tmp_path / "b", embeddings=False).found["A2M"]
    assert a["meta"]["summary"] == b["meta"]["summary"] == recs[1]["refseq_summary"]
    only_human = tmp_path / "human.gene_info"
    only_human.write_text("\n".join([GENE_INFO_HEADER] + rows[:6]) + "\n")
    with pytest.raises(DataError, match="no genes of mouse .*holds tax ids 9606"):
        kb.build_store(only_human, "mouse", tmp_path / "c")


def test_ncbi_download_from_local_server(tmp_path, records):
    recs = records[:5]
    gi = gzip.compress(("\n".join([GENE_INFO_HEADER] + [gene_info_row(r, 9606) for r in recs]) + "\n").encode())
    with FakeNCBI(recs, gene_info_gz=gi) as srv:
        res = kb.build_store("ncbi", "human", tmp_path / "a", genes=["A1BG", "A2M", "NOPE"],
                             base_url=srv.url, min_interval=0)
        assert res.n_added == 2 and res.missing_genes == ["NOPE"] and res.n_refseq == 2
        assert any("esearch.fcgi" in p and "txid9606" in p for p in srv.requests)
        res2 = kb.build_store("ncbi", "human", tmp_path / "b", limit=4, base_url=srv.url,
                              ftp_url=srv.url, download_dir=tmp_path / "dl", min_interval=0)
        assert res2.n_added == 4 and res2.n_refseq == sum(bool(r["refseq_summary"]) for r in recs[:4])
        assert (tmp_path / "dl" / "Homo_sapiens.gene_info.gz").exists()
    d = kb.describe_genes(["A2M"], "human", tmp_path / "b")
    assert d["A2M"].startswith("The protein encoded by this gene is a protease inhibitor")


def test_ncbi_server_errors_are_backend_errors(tmp_path, records):
    with FakeNCBI(records[:2]) as srv:  # no gene_info file: 404
        with pytest.raises(BackendError, match="gene_info.gz"):
            kb.build_store("ncbi", "mouse", tmp_path, ftp_url=srv.url, download_dir=tmp_path / "dl")
    assert not list((tmp_path / "dl").glob("*"))  # nothing half-written


# ---- bad input --------------------------------------------------------------------------------

def test_unknown_species(store, slice_dir):
    with pytest.raises(ParameterError, match="unknown species 'rat'"):
        kb.build_store(slice_dir / "human_slice.jsonl.gz", "rat", store)
    with pytest.raises(ParameterError, match="unknown species"):
        kb.search("kinase", "zebrafish", store)


def test_wrong_species_file(tmp_path, slice_dir):
    with pytest.raises(DataError, match="look human, not mouse"):
        kb.build_store(slice_dir / "human_slice.jsonl.gz", "mouse", tmp_path)


def test_store_without_species_or_missing(store, tmp_path):
    with pytest.raises(DataError, match="no mouse genes"):
        kb.search("kinase", "mouse", store)
    with pytest.raises(DataError, match="no knowledge store"):
        kb.search("kinase", "human", tmp_path / "nowhere")


def test_empty_query(store):
    with pytest.raises(ParameterError, match="empty query"):
        kb.search("   ", "human", store)
    with pytest.raises(ParameterError, match="no gene symbols"):
        kb.get_genes([""], "human", store)


def test_wrong_format_and_truncated_files(tmp_path, slice_dir):
    csv = tmp_path / "genes.csv"
    csv.write_text("gene,score\nA2M,1\n")
    with pytest.raises(DataError, match="not a recognised gene source"):
        kb.build_store(csv, "human", tmp_path / "s")
    raw = (slice_dir / "human_slice.jsonl.gz").read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated"):
        kb.build_store(cut, "human", tmp_path / "s")
    lines = gzip.decompress(raw).decode().splitlines(keepends=True)
    half = tmp_path / "half.jsonl"
    half.write_text("".join(lines[:5]) + lines[5][:40])
    with pytest.raises(DataError, match="line 6 is not valid JSON"):
        kb.build_store(half, "human", tmp_path / "s")
    tsv = tmp_path / "bad.gene_info"
    tsv.write_text("#tax_id\tGeneID\tSymbol\n9606\t1\tA1BG\n")
    with pytest.raises(DataError, match="missing columns"):
        kb.build_store(tsv, "human", tmp_path / "s")
    assert not (tmp_path / "s").exists()  # a bad source never creates a store
    es = tmp_path / "es.json"
    es.write_text('{"header": {}, "error": "API rate limit exceeded"}')
    with pytest.raises(DataError, match="not an E-utilities esummary"):
        kb.build_store(es, "human", tmp_path / "s")


# ---- CLI and registry -------------------------------------------------------------------------

def _cli(argv):
    from agent.commands import kb as cmd

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    return cmd.run(p.parse_args(argv))


def test_cli_build_search_get(tmp_path, slice_dir, capsys):
    genes = tmp_path / "genes.txt"
    genes.write_text("ACHE\nA2M\nNOT_A_GENE\n")
    assert _cli(["build", "--source", str(slice_dir / "human_slice.jsonl.gz"), "--store", str(tmp_path / "kb"),
                 "--genes", f"@{genes}", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 added" in out and "not found in the source (1): NOT_A_GENE" in out
    assert _cli(["search", "--store", str(tmp_path / "kb"), "-k", "1", "acetylcholinesterase", "enzyme"]) == 0
    assert capsys.readouterr().out.startswith("ACHE")
    assert _cli(["get", "--store", str(tmp_path / "kb"), "a2m", "--embedding"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["genes"]["a2m"]["symbol"] == "A2M" and len(got["genes"]["a2m"]["embedding"]) == 384
    assert _cli(["get", "--store", str(tmp_path / "kb"), "NOPE"]) == 1


def test_tools_registered():
    from tools.registry import REGISTRY

    assert {"gene_info", "gene_search"} <= set(REGISTRY)
    assert "what does gene" in REGISTRY["gene_info"].intents
    assert REGISTRY["gene_info"].needs_data is False


def test_gene_info_tool(store):
    from tools.knowledge import GeneInfoParams, gene_info

    res = gene_info(GeneInfoParams(genes=["ACHE", "XYZ"], store=str(store)))
    assert "acetylcholinesterase" in res.descriptions["ACHE"].lower()
    assert res.sources["ACHE"] == "refseq" and res.missing == ["XYZ"]
