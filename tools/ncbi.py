"""Readers for NCBI Gene in its own formats, and the E-utilities / FTP downloader.

Every reader yields gene records as plain dicts with the keys of ``RECORD_KEYS``:
``symbol, entrez_id, official_full_name, type_of_gene, synonyms, other_designations,
chromosome, map_location, summary, summary_source, human_orthologs``.
``summary_source`` is ``"refseq"`` for NCBI's RefSeq summary and ``None`` when there is none.

Formats: NCBI ``gene_info(.gz)`` TSV (+ optional summaries JSON lines), the gene-description
JSON lines of ``knowledge/gene_descriptions/*.jsonl.gz``, and E-utilities ``esummary`` JSON.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterable, Iterator

from tools.errors import BackendError, DataError, ParameterError, suggest
from tools.io import atomic_path

SPECIES = {"human": 9606, "mouse": 10090}
FTP_FILES = {"human": "Homo_sapiens.gene_info.gz", "mouse": "Mus_musculus.gene_info.gz"}
EUTILS_URL = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils/"
FTP_URL = "https://ftp.ncbi.nlm.nih.gov/gene/DATA/GENE_INFO/Mammalia/"
GENE_INFO_COLUMNS = ("#tax_id", "GeneID", "Symbol", "Synonyms", "description", "type_of_gene")


def tax_id(species: str) -> int:
    """NCBI taxonomy id of a supported species (ParameterError naming the choices otherwise)."""
    if species not in SPECIES:
        raise ParameterError(
            f"unknown species '{species}' (supported: {', '.join(SPECIES)}){suggest(species, SPECIES)}"
        )
    return SPECIES[species]


def _record(symbol, entrez_id, full_name=None, gene_type=None, synonyms=(), designations=(),
            chromosome=None, map_location=None, summary=None, orthologs=()) -> dict:
    summary = (summary or "").strip() or None
    return {
        "symbol": str(symbol), "entrez_id": int(entrez_id),
        "official_full_name": full_name or None, "type_of_gene": gene_type or None,
        "synonyms": list(synonyms), "other_designations": list(designations),
        "chromosome": chromosome or None, "map_location": map_location or None,
        "summary": summary, "summary_source": "refseq" if summary else None,
        "human_orthologs": list(orthologs or ()),
    }


def _open_text(path: Path):
    raw = path.open("rb")
    head = raw.read(2)
    raw.seek(0)
    stream = gzip.GzipFile(fileobj=raw) if head == b"\x1f\x8b" else raw
    return io.TextIOWrapper(stream, encoding="utf-8", errors="strict")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines; a truncated or corrupt gzip becomes a DataError naming the file."""
    try:
        with _open_text(path) as fh:
            for i, line in enumerate(fh, 1):
                yield i, line
    except (EOFError, gzip.BadGzipFile, OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable or truncated ({type(e).__name__}: {e})") from e


def _dash(v: str) -> str | None:
    return None if v in ("-", "") else v


def _split(v: str, sep: str) -> list[str]:
    v = _dash(v or "-")
    return [s.strip() for s in v.split(sep) if s.strip()] if v else []


def read_gene_info(path, species: str | None = None, summaries: dict | None = None) -> Iterator[dict]:
    """Records from an NCBI ``gene_info(.gz)`` TSV, optionally filtered to one species.

    ``summaries`` maps entrez id -> RefSeq summary (see :func:`read_summaries`).
    """
    path = Path(path)
    want = tax_id(species) if species else None
    lines = _lines(path)
    try:
        _, first = next(lines)
    except StopIteration:
        raise DataError(f"{path}: empty file") from None
    header = first.rstrip("\n").split("\t")
    missing = [c for c in GENE_INFO_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: not an NCBI gene_info TSV (missing columns {', '.join(missing)})")
    col = {c: i for i, c in enumerate(header)}
    seen_tax: set[str] = set()
    n = 0
    for i, line in lines:
        row = line.rstrip("\n").split("\t")
        if len(row) != len(header):
            raise DataError(f"{path}: line {i} has {len(row)} fields, expected {len(header)} "
                            "(truncated or not a gene_info file)")
        seen_tax.add(row[col["#tax_id"]])
        if want is not None and row[col["#tax_id"]] != str(want):
            continue
        gid = row[col["GeneID"]]
        if not gid.isdigit():
            raise DataError(f"{path}: line {i}: GeneID '{gid}' is not a number")
        full = _dash(row[col.get("Full_name_from_nomenclature_authority", col["description"])])
        n += 1
        yield _record(
            row[col["Symbol"]], gid, full or _dash(row[col["description"]]),
            _dash(row[col["type_of_gene"]]), _split(row[col["Synonyms"]], "|"),
            _split(row[col["Other_designations"]], "|") if "Other_designations" in col else (),
            _dash(row[col["chromosome"]]) if "chromosome" in col else None,
            _dash(row[col["map_location"]]) if "map_location" in col else None,
            (summaries or {}).get(int(gid)),
        )
    if want is not None and n == 0:
        raise DataError(f"{path}: no genes of {species} (tax id {want}); "
                        f"the file holds tax ids {', '.join(sorted(seen_tax)) or 'none'}")


def read_summaries(path) -> dict[int, str]:
    """Entrez id -> summary from JSON lines with ``entrez_id`` and ``refseq_summary``/``summary``."""
    path = Path(path)
    out: dict[int, str] = {}
    for i, line in _lines(path):
        if not line.strip():
            continue
        obj = _json_line(path, i, line)
        gid = obj.get("entrez_id", obj.get("uid"))
        if gid is None:
            raise DataError(f"{path}: line {i} has no entrez_id")
        text = obj.get("refseq_summary", obj.get("summary"))
        if text:
            out[int(gid)] = str(text)
    return out


def _json_line(path: Path, i: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {i} is not valid JSON (truncated file?): {e}") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: line {i} is not a JSON object")
    return obj


def read_descriptions_jsonl(path) -> Iterator[dict]:
    """Records from gene-description JSON lines (one NCBI Gene record per line)."""
    path = Path(path)
    for i, line in _lines(path):
        if not line.strip():
            continue
        obj = _json_line(path, i, line)
        if "symbol" not in obj or "entrez_id" not in obj:
            raise DataError(f"{path}: line {i} lacks 'symbol'/'entrez_id' "
                            "(not a gene-description JSON lines file)")
        yield _record(
            obj["symbol"], obj["entrez_id"], obj.get("official_full_name"), obj.get("type_of_gene"),
            obj.get("synonyms") or (), obj.get("other_designations") or (), obj.get("chromosome"),
            obj.get("map_location"), obj.get("refseq_summary"), obj.get("human_orthologs"),
        )


def parse_esummary(obj: dict, species: str | None = None, where: str = "esummary") -> list[dict]:
    """Records from an E-utilities ``esummary.fcgi?db=gene&retmode=json`` response."""
    res = obj.get("result") if isinstance(obj, dict) else None
    if not isinstance(res, dict) or "uids" not in res:
        raise DataError(f"{where}: not an E-utilities esummary JSON (no result.uids)")
    want = tax_id(species) if species else None
    out = []
    for uid in res["uids"]:
        doc = res.get(str(uid))
        if not isinstance(doc, dict) or doc.get("error") or not doc.get("name"):
            continue
        taxid = (doc.get("organism") or {}).get("taxid")
        if want is not None and taxid is not None and int(taxid) != want:
            continue
        out.append(_record(
            doc["name"], doc.get("uid", uid), doc.get("description") or doc.get("nomenclaturename"),
            None, _split(doc.get("otheraliases", ""), ","), _split(doc.get("otherdesignations", ""), "|"),
            doc.get("chromosome"), doc.get("maplocation"), doc.get("summary"),
        ))
    return out


def read_esummary(path, species: str | None = None) -> list[dict]:
    path = Path(path)
    text = "".join(line for _, line in _lines(path))
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (truncated file?): {e}") from e
    return parse_esummary(obj, species, str(path))


def sniff(path) -> str:
    """'jsonl', 'esummary' or 'gene_info' from the first line of a file; DataError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"source file not found: {path}")
    for _, line in _lines(path):
        s = line.strip()
        if not s:
            continue
        if s.startswith("#tax_id"):
            return "gene_info"
        if s.startswith("{"):
            try:
                obj = json.loads(s)
            except json.JSONDecodeError:
                return "esummary"  # a multi-line JSON document
            return "esummary" if "result" in obj or "header" in obj else "jsonl"
        break
    raise DataError(f"{path}: not a recognised gene source (expected NCBI gene_info TSV, "
                    "gene-description JSON lines or E-utilities esummary JSON)")


def read_source(path, species: str, summaries=None) -> Iterator[dict]:
    """Records from any supported file, format detected from its content."""
    kind = sniff(path)
    if kind == "gene_info":
        yield from read_gene_info(path, species, read_summaries(summaries) if summaries else None)
    elif kind == "jsonl":
        yield from read_descriptions_jsonl(path)
    else:
        yield from read_esummary(path, species)


# ---- downloading -------------------------------------------------------------------------

class Eutils:
    """Minimal E-utilities client (esearch + esummary, JSON), rate-limited as NCBI asks."""

    def __init__(self, base_url: str = EUTILS_URL, min_interval: float | None = None,
                 timeout: float = 30.0, retries: int = 3):
        self.base = base_url.rstrip("/") + "/"
        self.api_key = os.environ.get("NCBI_API_KEY")
        self.min_interval = (0.11 if self.api_key else 0.34) if min_interval is None else min_interval
        self.timeout, self.retries, self._last = timeout, retries, 0.0

    def _get(self, endpoint: str, params: dict) -> dict:
        params = dict(params, retmode="json", tool="tissuetalk")
        if self.api_key:
            params["api_key"] = self.api_key
        url = self.base + endpoint + "?" + urllib.parse.urlencode(params)
        for attempt in range(self.retries):
            wait = self._last + self.min_interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last = time.monotonic()
            try:
                with urllib.request.urlopen(url, timeout=self.timeout) as r:
                    body = r.read()
                return json.loads(body)
            except json.JSONDecodeError as e:
                raise BackendError(f"NCBI {endpoint}: response is not JSON: {e}") from e
            except OSError as e:  # URLError, HTTPError, timeouts
                if attempt == self.retries - 1:
                    raise BackendError(f"NCBI {endpoint} failed ({self.base}): {e}") from e
                time.sleep(min(2 ** attempt, 5) * self.min_interval)
        raise AssertionError("unreachable")

    def search_symbols(self, symbols: list[str], species: str, batch: int = 100) -> list[str]:
        """Gene ids whose official symbol is one of ``symbols`` in ``species``."""
        tid = tax_id(species)
        ids: list[str] = []
        for i in range(0, len(symbols), batch):
            chunk = symbols[i:i + batch]
            term = "(" + " OR ".join(f"{s}[sym]" for s in chunk) + f") AND txid{tid}[orgn] AND alive[prop]"
            res = self._get("esearch.fcgi", {"db": "gene", "term": term, "retmax": 10 * len(chunk)})
            if "esearchresult" not in res:
                raise BackendError(f"NCBI esearch: unexpected response {str(res)[:200]}")
            ids += res["esearchresult"].get("idlist", [])
        return list(dict.fromkeys(ids))

    def summaries(self, ids: Iterable, species: str | None = None, batch: int = 200) -> list[dict]:
        ids = [str(i) for i in ids]
        out: list[dict] = []
        for i in range(0, len(ids), batch):
            res = self._get("esummary.fcgi", {"db": "gene", "id": ",".join(ids[i:i + batch])})
            out += parse_esummary(res, species, "NCBI esummary")
        return out


def download_symbols(symbols: list[str], species: str, base_url: str = EUTILS_URL,
                     min_interval: float | None = None) -> list[dict]:
    """Records (with RefSeq summaries) for gene symbols via E-utilities esearch + esummary."""
    client = Eutils(base_url, min_interval)
    return client.summaries(client.search_symbols(symbols, species), species)


def download_gene_info(species: str, dest_dir, base_url: str = FTP_URL) -> Path:
    """Fetch ``<Species>.gene_info.gz`` from NCBI's FTP site (over HTTPS) into ``dest_dir``.

    Written to a temporary file first and renamed, so an interrupted download leaves nothing.
    """
    tax_id(species)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / FTP_FILES[species]
    url = base_url.rstrip("/") + "/" + FTP_FILES[species]
    try:
        with atomic_path(dest, ".part") as tmp, urllib.request.urlopen(url, timeout=60) as r, \
                tmp.open("wb") as fh:
            while chunk := r.read(1 << 20):
                fh.write(chunk)
    except OSError as e:
        raise BackendError(f"download of {url} failed: {e}") from e
    return dest
