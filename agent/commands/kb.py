"""`tissuetalk kb build|search|get`: the gene-description knowledge store."""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kb_command", metavar="ACTION", required=True)

    def common(p):
        p.add_argument("--species", default="human", help="human or mouse (default human)")
        p.add_argument("--store", default=None, help="store folder (default $TISSUETALK_HOME/kb)")
        p.add_argument("--embedder", default="minilm", help="embedder spec (default minilm)")

    b = sub.add_parser("build", help="build or extend the store (only missing genes are added)")
    common(b)
    b.add_argument("--source", required=True,
                   help="gene-description .jsonl(.gz), NCBI gene_info(.gz) TSV, esummary .json, "
                        "or 'ncbi' to download")
    b.add_argument("--summaries", default=None, help="JSON lines of RefSeq summaries (with gene_info)")
    b.add_argument("--human-source", default=None,
                   help="human file for mouse ortholog summaries (default: a human* file beside --source)")
    b.add_argument("--orthologs", default=None, help="HCOP-style mouse-human ortholog TSV")
    b.add_argument("--genes", default=None, help="comma-separated symbols, or @file with one per line")
    b.add_argument("--limit", type=int, default=None, help="only the first N records (quick builds)")
    b.add_argument("--batch-size", type=int, default=256, help="records per write (default 256)")
    b.add_argument("--ncbi-url", default=None, help="E-utilities base URL (for --source ncbi)")
    b.add_argument("--ftp-url", default=None, help="gene_info folder URL (for --source ncbi)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("search", help="semantic search of gene descriptions")
    common(s)
    s.add_argument("query", nargs="*", help="words describing the genes")
    s.add_argument("-k", type=int, default=5, help="number of genes (default 5)")
    s.add_argument("--json", action="store_true", help="print JSON")

    g = sub.add_parser("get", help="description (and embedding) of gene symbols")
    common(g)
    g.add_argument("symbols", nargs="+", help="gene symbols")
    g.add_argument("--embedding", action="store_true", help="include the embedding vectors (JSON)")
    g.add_argument("--json", action="store_true", help="print JSON")


def _genes(arg: str | None) -> list[str] | None:
    from pathlib import Path

    from tools.errors import DataError

    if not arg:
        return None
    if arg.startswith("@"):
        path = Path(arg[1:])
        if not path.is_file():
            raise DataError(f"gene list file not found: {path}")
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    return [g.strip() for g in arg.split(",") if g.strip()]


def run(args) -> int:
    from tools import knowledge as kb

    if args.kb_command == "build":
        download = {k: v for k, v in (("base_url", args.ncbi_url), ("ftp_url", args.ftp_url)) if v}
        res = kb.build_store(args.source, args.species, args.store, args.embedder, limit=args.limit,
                             genes=_genes(args.genes), summaries=args.summaries,
                             human_source=args.human_source, orthologs=args.orthologs,
                             batch_size=args.batch_size, progress=not args.quiet, **download)
        print(f"{res.collection}: {res.n_added} added, {res.n_already} already present, "
              f"{res.n_total} in the store ({res.n_refseq} RefSeq summaries, {res.n_ortholog} from "
              f"human orthologs, {res.n_llm} by a chat model) in {res.seconds:.1f} s")
        if res.missing_genes:
            print(f"not found in the source ({len(res.missing_genes)}): "
                  + ", ".join(res.missing_genes[:50]))
        return 0
    if args.kb_command == "search":
        hits = kb.search(" ".join(args.query), args.species, args.store, args.embedder, args.k)
        if args.json:
            print(json.dumps(hits, indent=1))
        for h in [] if args.json else hits:
            print(f"{h['symbol']:<12} {h['distance']:.3f}  {h['full_name']}  [{h['source']}]")
        return 0
    look = kb.get_genes(args.symbols, args.species, args.store, args.embedder,
                        embeddings=args.embedding)
    if args.json or args.embedding:
        out = {s: {"symbol": r["symbol"], "matched_by": r["matched_by"], "source": r["meta"]["source"],
                   "text": r["text"], **({"embedding": r["embedding"].round(6).tolist()}
                                         if args.embedding else {})}
               for s, r in look.found.items()}
        print(json.dumps({"genes": out, "missing": look.missing}, indent=1))
    else:
        for s, r in look.found.items():
            via = "" if r["matched_by"] == "symbol" else f" (matched {s} by {r['matched_by']})"
            print(f"{r['symbol']}{via} [{r['meta']['source']}]\n  {r['text']}\n")
        if look.missing:
            print("not found: " + ", ".join(look.missing))
    return 1 if look.missing and not look.found else 0
