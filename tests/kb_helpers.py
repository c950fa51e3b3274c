"""Helpers for the knowledge-store tests: slices of the shared gene files written to tmp, NCBI-format
files built from those records, and a local HTTP server that answers like E-utilities / the FTP site."""
from __future__ import annotations

import gzip
import http.server
import json
import urllib.parse
from pathlib import Path

from local_server import LocalServer

GENE_INFO_HEADER = ("#tax_id\tGeneID\tSymbol\tLocusTag\tSynonyms\tdbXrefs\tchromosome\tmap_location\t"
                    "description\ttype_of_gene\tSymbol_from_nomenclature_authority\t"
                    "Full_name_from_nomenclature_authority\tNomenclature_status\tOther_designations\t"
                    "Modification_date\tFeature_type")


def read_lines(shared_file: Path, n: int | None = None, symbols=None, mentions=None) -> list[str]:
    """The first ``n`` lines, the lines whose symbol is in ``symbols``, or (``mentions``) the lines
    that name one of these genes anywhere (symbol or synonym)."""
    import re

    names = symbols if symbols is not None else mentions
    pat = re.compile('"(' + "|".join(map(re.escape, names)) + ')"') if names else None
    out = []
    with gzip.open(shared_file, "rt") as fh:
        for line in fh:
            if pat is None:
                if len(out) >= n:
                    break
                out.append(line)
            elif pat.search(line) and (mentions is not None or json.loads(line)["symbol"] in names):
                out.append(line)
    return out


def slice_for_genes(gene_dir: Path, species: str, genes, dest: Path) -> Path:
    """Write the records naming ``genes`` (and, for mouse, their human orthologs) to ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    lines = read_lines(gene_dir / f"{species}_gene_descriptions.jsonl.gz", mentions=list(genes))
    out = write_gz(dest / f"{species}_genes.jsonl.gz", lines)
    if species == "mouse":
        human = {h for ln in lines for h in json.loads(ln).get("human_orthologs") or ()}
        write_gz(dest / "human_gene_descriptions.jsonl.gz",
                 read_lines(gene_dir / "human_gene_descriptions.jsonl.gz", symbols=human))
    return out


def write_gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt") as fh:
        fh.writelines(lines)
    return path


def gene_info_row(rec: dict, tax: int) -> str:
    j = lambda xs: "|".join(xs) if xs else "-"  # noqa: E731
    return "\t".join(map(str, [
        tax, rec["entrez_id"], rec["symbol"], "-", j(rec["synonyms"]), "-", rec["chromosome"] or "-",
        rec["map_location"] or "-", rec["official_full_name"], rec["type_of_gene"], rec["symbol"],
        rec["official_full_name"], "O", j(rec["other_designations"]), "20240101", "-"]))


def docsum(rec: dict, tax: int) -> dict:
    return {"uid": str(rec["entrez_id"]), "name": rec["symbol"], "description": rec["official_full_name"],
            "otheraliases": ", ".join(rec["synonyms"]), "otherdesignations": "|".join(rec["other_designations"]),
            "chromosome": rec["chromosome"], "maplocation": rec["map_location"],
            "summary": rec["refseq_summary"] or "", "status": "", "currentid": "",
            "organism": {"scientificname": "Homo sapiens", "commonname": "human", "taxid": tax}}


def esummary_json(recs: list[dict], tax: int = 9606) -> dict:
    res = {"uids": [str(r["entrez_id"]) for r in recs]}
    res.update({str(r["entrez_id"]): docsum(r, tax) for r in recs})
    return {"header": {"type": "esummary", "version": "0.3"}, "result": res}


class FakeNCBI(LocalServer):
    """A 127.0.0.1 server answering esearch/esummary (JSON) and serving a gene_info.gz file."""

    def __init__(self, recs: list[dict], tax: int = 9606, gene_info_gz: bytes | None = None):
        self.recs, self.tax, self.gene_info_gz = recs, tax, gene_info_gz
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.requests.append(self.path)
                url = urllib.parse.urlparse(self.path)
                q = urllib.parse.parse_qs(url.query)
                if url.path.endswith("esearch.fcgi"):
                    term = q["term"][0]
                    ids = [str(r["entrez_id"]) for r in outer.recs if f"{r['symbol']}[sym]" in term]
                    body = {"header": {"type": "esearch"},
                            "esearchresult": {"count": str(len(ids)), "idlist": ids}}
                elif url.path.endswith("esummary.fcgi"):
                    want = q["id"][0].split(",")
                    body = esummary_json([r for r in outer.recs if str(r["entrez_id"]) in want], outer.tax)
                elif url.path.endswith(".gene_info.gz") and outer.gene_info_gz is not None:
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(outer.gene_info_gz)
                    return
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(data)

        self.serve(Handler)
        self.url = f"http://127.0.0.1:{self.port}/"
