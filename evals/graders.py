"""Deterministic graders for the tissue-question suite.

What is graded
--------------
An agent's answer is its final text **and** the results of the tools it called (the same
``steps`` the narrator and the report are built from). A question's ``grade`` names a grader
(``kind``) and, optionally, an ``evidence`` extractor saying where in the tool results the claim
lives (e.g. "the marker list of WM in marker_genes", "n_obs of describe_dataset"):

1. If the evidence extractor finds the claim in the agent's tool results, that claim is graded
   (the narrator may only cite numbers the tools produced, so this is what the answer asserts,
   without depending on how a model words it). For label claims read from evidence, the final
   text must also mention the claimed label.
2. Otherwise the claim is parsed from the answer text by answer type (first number; earliest
   option mentioned; genes in order of mention; yes / no; up / down).
3. A claim of the wrong type (no number where a number is expected, a list where a label is,
   ...) is an ``error`` with the reason, not a crash; so is a malformed grade spec.

``must_mention`` and ``ari`` are exceptions: the first reads the text only, the second reads the
agent's domain labels from the session dataset (``Response.obs``) and scores them itself against
the annotation with scikit-learn, ignoring the ARI the tool reported.

Every grader returns a :class:`Grade` (status ``pass`` / ``fail`` / ``error``, a reason, the
claim, where it came from, and a score where one applies).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

PASS, FAIL, ERROR = "pass", "fail", "error"
NUMBER_RE = re.compile(r"(?<![\w.])[-+]?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")
LIST_MARK_RE = re.compile(r"^\s*\d+[.)]\s", re.M)


class GradeError(Exception):
    """The answer cannot be graded (wrong type, bad spec); reported as status 'error'."""


@dataclass
class Response:
    """What the agent produced for one question."""
    text: str = ""
    steps: list[dict] = field(default_factory=list)  # {"name", "args", "ok", "result", "error"}
    numbers: dict = field(default_factory=dict)
    obs: Any = None  # pandas.DataFrame of the session dataset after the turn (for `ari`)
    vocabulary: set | None = None  # gene names of the dataset (text extraction of gene lists)


@dataclass
class Grade:
    status: str
    reason: str = ""
    claimed: Any = None
    source: str | None = None  # "evidence" | "text" | "obs"
    score: float | None = None

    def as_dict(self) -> dict:
        return {"status": self.status, "reason": self.reason, "claimed": _jsonable(self.claimed),
                "source": self.source, "score": self.score}


def _jsonable(v):
    if isinstance(v, (list, tuple, set)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


# ------------------------------------------------------------------------------- helpers
def norm(s) -> str:
    """Label normal form: lower case, no spaces / underscores / hyphens ('Layer 4' == 'layer4')."""
    return re.sub(r"[\s_\-]+", "", str(s).lower())


def norm_term(s) -> str:
    """Gene-set term normal form: 'HALLMARK_OXIDATIVE_PHOSPHORYLATION' == 'oxidative phosphorylation'."""
    s = re.sub(r"\(GO:\d+\)", "", str(s))
    s = re.sub(r"^(hallmark|reactome|wp|gobp|go)[_ ]", "", s.strip().lower())
    return norm(s)


def ok_results(resp: Response, tool: str) -> list:
    return [s.get("result") for s in resp.steps if s.get("ok") and s.get("name") == tool
            and s.get("result") is not None]


def _get(obj, key):
    """obj[key] for dicts (exact, then normalised key) and lists (int index); KeyError if absent."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        nk = norm(key)
        for k, v in obj.items():
            if norm(k) == nk:
                return v
        raise KeyError(key)
    if isinstance(obj, (list, tuple)):
        return obj[int(key)]
    raise KeyError(key)


def dig(obj, path: list):
    for k in path:
        obj = _get(obj, k)
    return obj


def text_numbers(text: str) -> list[float]:
    text = LIST_MARK_RE.sub("", text or "")
    return [float(t.replace(",", "")) for t in NUMBER_RE.findall(text)]


def mentions(text: str, option: str) -> int | None:
    """Position of `option` in `text` (word-bounded; spaces, '_' and '-' interchangeable), or None.
    A numbered label ('1: Granular Cell Layer') also matches without its number."""
    short = re.sub(r"^\d+\s*:\s*", "", str(option))
    if short != str(option):
        hits = [p for p in (mentions(text, short), _mentions(text, option)) if p is not None]
        return min(hits) if hits else None
    return _mentions(text, option)


def _mentions(text: str, option: str) -> int | None:
    words = [re.escape(w) for w in re.split(r"[\s_\-]+", str(option).strip()) if w]
    if not words:
        return None
    pat = r"(?<![\w])" + r"[\s_\-]*".join(words) + r"s?(?![\w])"
    m = re.search(pat, text or "", re.I)
    return m.start() if m else None


def first_option(text: str, options: list[str]) -> str | None:
    """The option mentioned first in `text`; a longer option wins at the same place
    ('Layer 2-3 medial' over 'Layer 2-3')."""
    hits = []
    for o in options:
        pos = mentions(text, o)
        if pos is not None:
            hits.append((pos, -len(str(o)), o))
    return min(hits)[2] if hits else None


GENE_TOKEN_RE = re.compile(r"\b[A-Za-z][A-Za-z0-9]*(?:[-.][A-Za-z0-9]+)*\b")


def text_genes(text: str, vocabulary) -> list[str]:
    """Genes of `vocabulary` in order of first mention (case-insensitive)."""
    if not vocabulary:
        return []
    vocab = {str(g).upper(): str(g) for g in vocabulary}
    out = []
    for tok in GENE_TOKEN_RE.findall(text or ""):
        g = vocab.get(tok.upper())
        if g and g not in out and len(tok) > 1:
            out.append(g)
    return out


YES_RE = re.compile(r"(?:^|[.!?]\s+|\n|\*\*)\s*(yes)\b|\bis (?:significantly )?enriched\b", re.I)
NO_RE = re.compile(r"(?:^|[.!?]\s+|\n|\*\*)\s*(no)\b|\b(?:is )?not (?:significantly )?enriched\b|"
                   r"\bno (?:significant )?enrichment\b", re.I)
UP_WORDS = ("up", "upregulated", "up-regulated", "increase", "increases", "increased", "higher",
            "goes up", "go up", "rise", "rises")
DOWN_WORDS = ("down", "downregulated", "down-regulated", "decrease", "decreases", "decreased",
              "lower", "goes down", "go down", "fall", "falls", "reduced")


def _binary(text: str, hits: dict[str, bool]) -> str | None:
    on = [k for k, v in hits.items() if v]
    if len(on) > 1:
        raise GradeError(f"the answer is ambiguous: it says both {' and '.join(on)}")
    return on[0] if on else None


def text_choice(text: str, options: list[str]) -> str | None:
    """A choice from the text. yes/no: a sentence starting with yes / no, or '(not) enriched';
    up/down: a few synonyms; both sides present is ambiguous (an error). Other options: the
    one mentioned first."""
    low = {norm(o) for o in options}
    text = text or ""
    if low == {"yes", "no"}:
        return _binary(text, {"yes": bool(YES_RE.search(text)), "no": bool(NO_RE.search(text))})
    if low == {"up", "down"}:
        return _binary(text, {lab: any(re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text, re.I)
                                       for w in words)
                              for lab, words in (("up", UP_WORDS), ("down", DOWN_WORDS))})
    return first_option(text, options)


def text_options(text: str, options: list[str]) -> list[str]:
    """Options in order of first mention."""
    hits = sorted((p, -len(str(o)), o) for o in options if (p := mentions(text, o)) is not None)
    return [o for _, _, o in hits]


# ------------------------------------------------------------------------------- evidence
def _ev_path(resp, tool, path, **_):
    """Value at a key path of the last successful result of `tool`."""
    for res in reversed(ok_results(resp, tool)):
        try:
            return dig(res, list(path))
        except (KeyError, IndexError, ValueError, TypeError):
            continue
    return None


def _ev_count_keys(resp, tool, path, exclude=(), **_):
    """Number of keys of the dict at `path` (an annotation's categories), minus `exclude`."""
    v = _ev_path(resp, tool, path)
    if not isinstance(v, dict):
        return None
    ex = {norm(e) for e in exclude}
    return sum(1 for k in v if norm(k) not in ex)


def _ev_argmax_key(resp, tool, path, exclude=(), **_):
    v = _ev_path(resp, tool, path)
    if not isinstance(v, dict) or not v:
        return None
    ex = {norm(e) for e in exclude}
    items = [(k, x) for k, x in v.items() if norm(k) not in ex and isinstance(x, (int, float))]
    return max(items, key=lambda kv: kv[1])[0] if items else None


def _marker_lists(resp) -> list[tuple[str, list[dict], str]]:
    """(group, rows {gene, logfc, padj} in rank order, tool) from marker_genes and one-vs-rest
    DE results."""
    def rows(xs):
        return [r if isinstance(r, dict) else {"gene": r} for r in xs or []]

    out = []
    for res in ok_results(resp, "marker_genes"):
        for g, xs in (res.get("markers") or {}).items():
            out.append((str(g), rows(xs), "marker_genes"))
    for res in ok_results(resp, "differential_expression"):
        if str(res.get("reference", "rest")) == "rest":
            out.append((str(res.get("group")), rows(res.get("top_up")), "differential_expression"))
    return out


def _ev_group_markers(resp, group, **_):
    """Marker genes of `group` (its list in marker_genes, else top_up of its DE vs rest)."""
    for g, rows, _tool in _marker_lists(resp):
        if norm(g) == norm(group) and rows:
            return [str(r["gene"]) for r in rows]
    return None


def _ev_de_genes(resp, group, reference="rest", direction="up", **_):
    """Top up (or down) genes of a DE of `group` vs `reference`; marker_genes lists count for
    reference 'rest'."""
    for res in reversed(ok_results(resp, "differential_expression")):
        if norm(res.get("group")) == norm(group) and norm(res.get("reference", "rest")) == norm(reference):
            return [str(r["gene"]) for r in res.get("top_up" if direction == "up" else "top_down") or []]
        if (norm(res.get("group")) == norm(reference) and norm(res.get("reference")) == norm(group)
                and reference != "rest"):
            return [str(r["gene"]) for r in res.get("top_down" if direction == "up" else "top_up") or []]
    return _ev_group_markers(resp, group) if norm(reference) == "rest" else None


def _ev_marker_group(resp, gene, **_):
    """The group whose marker list ranks `gene` highest (ties: larger log fold change, then
    smaller adjusted p)."""
    best = None
    for g, rows, _tool in _marker_lists(resp):
        for rank, r in enumerate(rows):
            if str(r.get("gene", "")).upper() == gene.upper():
                key = (rank, -(r.get("logfc") or 0.0), r.get("padj") if r.get("padj") is not None else 1.0)
                if best is None or key < best[0]:
                    best = (key, g)
                break
    return best[1] if best else None


def _rows_for(resp, tool, prefix, value):
    for res in reversed(ok_results(resp, tool)):
        key = str(res.get("key", ""))
        if norm(key.split("=", 1)[-1]) == norm(value) and key.split("/")[-1].startswith(prefix):
            return res
    return None


def _ev_region_ranking(resp, region, options=None, **_):
    """Labels of the region's composition, most cells first (restricted to `options`)."""
    res = _rows_for(resp, "region_composition", "region:", region)
    if res is None:
        return None
    rows = sorted(res.get("rows") or [], key=lambda r: -r.get("count", 0))
    ok = {norm(o) for o in options} if options else None
    return [r["label"] for r in rows if r.get("count", 0) > 0 and (ok is None or norm(r["label"]) in ok)]


def _ev_neighbour_ranking(resp, center, by="count", options=None, exclude_center=True, **_):
    """Neighbour labels around `center` ordered by `by` (count, fraction, ratio, zscore)."""
    res = _rows_for(resp, "neighbourhood_composition", "nhood:", center)
    if res is None:
        return None
    ok = {norm(o) for o in options} if options else None
    rows = [r for r in res.get("rows") or [] if (ok is None or norm(r["label"]) in ok)
            and not (exclude_center and norm(r["label"]) == norm(center))]
    rows.sort(key=lambda r: -(r.get(by) if r.get(by) is not None else -math.inf))
    return [r["label"] for r in rows]


def _ev_closer_of(resp, center, options, **_):
    """Of two labels, the one making up the larger fraction of `center`'s neighbourhood."""
    res = _rows_for(resp, "neighbourhood_composition", "nhood:", center)
    if res is None:
        return None
    frac = {norm(r["label"]): r.get("fraction") for r in res.get("rows") or []}
    vals = [(frac.get(norm(o)), o) for o in options]
    if any(v is None for v, _ in vals) or vals[0][0] == vals[1][0]:
        return None
    return max(vals)[1]


def _ev_perturb_direction(resp, gene, tool="perturb_neighbourhood", **_):
    """'up' / 'down' if `gene` is among the predicted top changes of the perturbation."""
    for res in reversed(ok_results(resp, tool)):
        for label, key in (("up", "top_up"), ("down", "top_down")):
            if any(str(r.get("gene", "")).upper() == gene.upper() for r in res.get(key) or []):
                return label
    return None


def _ev_generated_genes(resp, **_):
    for res in reversed(ok_results(resp, "generate_cell")):
        return res.get("genes")
    return None


def _ev_gsea_term(resp, term, fdr=0.25, **_):
    """'yes' if `term` is listed with NES > 0 and FDR < fdr; 'no' if listed otherwise, or absent
    while every term under the FDR cut-off was listed."""
    for res in reversed(ok_results(resp, "gsea_prerank")):
        terms = res.get("top_terms") or []
        for t in terms:
            if norm_term(t.get("term")) == norm_term(term):
                return "yes" if (t.get("nes", 0) > 0 and t.get("fdr", 1) < fdr) else "no"
        if res.get("n_fdr_below_0_25", math.inf) <= len(terms):
            return "no"
    return None


def _ev_ora_terms(resp, **_):
    for res in reversed(ok_results(resp, "overrepresentation")):
        return [str(t.get("term")) for t in res.get("top_terms") or []]
    return None


def _ev_search_genes(resp, **_):
    for res in reversed(ok_results(resp, "gene_search")):
        return res.get("genes")
    return None


EXTRACTORS: dict[str, Callable] = {
    "path": _ev_path, "count_keys": _ev_count_keys, "argmax_key": _ev_argmax_key,
    "group_markers": _ev_group_markers, "de_genes": _ev_de_genes, "marker_group": _ev_marker_group,
    "region_ranking": _ev_region_ranking, "neighbour_ranking": _ev_neighbour_ranking,
    "closer_of": _ev_closer_of, "perturb_direction": _ev_perturb_direction,
    "generated_genes": _ev_generated_genes, "gsea_term": _ev_gsea_term,
    "ora_terms": _ev_ora_terms, "search_genes": _ev_search_genes,
}


def evidence(resp: Response, spec: dict | None):
    """The claim found by the extractor `spec` ({"from": name, ...params}), or None."""
    if not spec:
        return None
    name = spec.get("from")
    if name not in EXTRACTORS:
        raise GradeError(f"unknown evidence extractor '{name}' (known: {', '.join(EXTRACTORS)})")
    params = {k: v for k, v in spec.items() if k != "from"}
    try:
        return EXTRACTORS[name](resp, **params)
    except TypeError as e:
        raise GradeError(f"evidence '{name}': {e}") from None


# ------------------------------------------------------------------------------- graders
def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _claim(resp, spec, text_fn):
    """(claim, source): evidence first, then the text."""
    v = evidence(resp, spec.get("evidence"))
    if v is not None:
        return v, "evidence"
    return text_fn(resp.text or ""), "text"


def grade_numeric(resp: Response, answer, spec: dict) -> Grade:
    """Pass if |claim - answer| <= max(tol, rel_tol * |answer|)."""
    if not _is_number(answer):
        raise GradeError(f"numeric question has a non-numeric answer {answer!r}")
    claim, src = _claim(resp, spec, lambda t: (text_numbers(t) or [None])[0])
    if claim is None:
        raise GradeError("expected a number, the answer has none")
    if isinstance(claim, str):
        try:
            claim = float(claim.replace(",", ""))
        except ValueError:
            raise GradeError(f"expected a number, got {claim!r}") from None
    if not _is_number(claim):
        raise GradeError(f"expected a number, got {type(claim).__name__} {claim!r}")
    tol = max(float(spec.get("tol", 0)), float(spec.get("rel_tol", 0)) * abs(answer))
    ok = abs(claim - answer) <= tol + 1e-9
    return Grade(PASS if ok else FAIL, f"{claim:g} vs {answer:g} (tolerance {tol:g})", claim, src)


def grade_choice(resp: Response, answer, spec: dict) -> Grade:
    """Multiple choice / exact label: the claim must equal `answer` (normalised)."""
    options = spec.get("options") or []
    if not isinstance(answer, str):
        raise GradeError(f"label question has a non-label answer {answer!r}")
    claim, src = _claim(resp, spec, lambda t: text_choice(t, options or [answer]))
    if claim is None:
        raise GradeError("expected one of " + (", ".join(map(str, options)) or repr(answer))
                         + "; the answer names none")
    if isinstance(claim, (list, tuple)):
        if not claim:
            raise GradeError("expected a label, got an empty list")
        claim = claim[0]  # a ranking: its first element is the answer
    if not isinstance(claim, str):
        raise GradeError(f"expected a label, got {type(claim).__name__} {claim!r}")
    if options and norm(claim) not in {norm(o) for o in options}:
        return Grade(FAIL, f"'{claim}' is not one of the options", claim, src)
    if src == "evidence" and not spec.get("text_optional") and norm(claim) not in {"yes", "no", "up", "down"} \
            and mentions(resp.text, claim) is None:
        return Grade(FAIL, f"the tools found '{claim}' but the answer text does not say it", claim, src)
    ok = norm(claim) == norm(answer)
    return Grade(PASS if ok else FAIL, f"'{claim}' vs '{answer}'", claim, src)


def _as_list(claim) -> list[str]:
    if isinstance(claim, str):
        raise GradeError(f"expected a list of names, got the single string {claim!r}")
    if not isinstance(claim, (list, tuple)):
        raise GradeError(f"expected a list of names, got {type(claim).__name__} {claim!r}")
    return [str(x) for x in claim]


def grade_set(resp: Response, answer, spec: dict) -> Grade:
    """Set overlap: kind precision_at_k (|top-k of claim ∩ answer| / k), recall_at_k
    (|claim[:k] ∩ answer| / |answer|), jaccard; pass if the score >= min."""
    kind = spec["kind"]
    if not isinstance(answer, list) or not answer:
        raise GradeError(f"set question needs a non-empty list answer, got {answer!r}")
    key = norm_term if spec.get("terms") else (lambda s: str(s).upper())
    vocab = resp.vocabulary

    def from_text(t):
        if spec.get("options"):
            return text_options(t, spec["options"]) or None
        if spec.get("terms"):
            return None
        return text_genes(t, vocab) or None

    claim, src = _claim(resp, spec, from_text)
    if claim is None:
        raise GradeError("expected a list of names; the answer has none")
    claim = _as_list(claim)
    truth = {key(a) for a in answer}
    k = int(spec.get("k", len(claim) or 1))
    got = [key(c) for c in claim]
    if kind == "precision_at_k":
        top = list(dict.fromkeys(got))[:k]
        score = sum(1 for c in top if c in truth) / k
    elif kind == "recall_at_k":
        top = set(list(dict.fromkeys(got))[:k])
        score = len(top & truth) / len(truth)
    else:  # jaccard
        s = set(got[:k]) if "k" in spec else set(got)
        score = len(s & truth) / len(s | truth)
    need = float(spec.get("min", 0.5))
    ok = score >= need - 1e-9
    return Grade(PASS if ok else FAIL, f"{kind} = {score:.2f} (need {need:g}); claimed "
                 f"{claim[:k]}", claim[:k], src, round(score, 4))


def grade_must_mention(resp: Response, answer, spec: dict) -> Grade:
    """The answer text must mention at least `min` of the terms (default all)."""
    if isinstance(answer, str):
        answer = [answer]
    if not isinstance(answer, list) or not answer:
        raise GradeError(f"must_mention needs a list of terms, got {answer!r}")
    text = re.sub(r"[\s\-_,]+", " ", (resp.text or "").lower())
    hit = [t for t in answer if re.sub(r"[\s\-_,]+", " ", str(t).lower()).strip() in text]
    need = int(spec.get("min", len(answer)))
    missing = [t for t in answer if t not in hit]
    ok = len(hit) >= need
    return Grade(PASS if ok else FAIL, f"mentions {len(hit)}/{len(answer)} (need {need})"
                 + (f"; missing {missing}" if missing and not ok else ""), hit, "text",
                 len(hit) / len(answer))


def grade_ari(resp: Response, answer, spec: dict) -> Grade:
    """The agent's domains (obs column written by find_domains) against the annotation `label_key`:
    adjusted Rand index computed here, on annotated observations; pass if >= min."""
    from sklearn.metrics import adjusted_rand_score

    label_key = spec.get("label_key", "ground_truth")
    keys = [r.get("key") for r in ok_results(resp, "find_domains") if r.get("key")]
    if resp.obs is None:
        raise GradeError("no session data to read the agent's domains from")
    key = keys[-1] if keys else None
    if key is None or key not in resp.obs:
        raise GradeError("the agent found no spatial domains (no find_domains result)")
    obs = resp.obs
    if label_key not in obs:
        raise GradeError(f"annotation '{label_key}' is missing from the session data")
    exclude = {norm(e) for e in spec.get("exclude", [])}
    lab, dom = obs[label_key], obs[key]
    m = lab.notna() & dom.notna() & ~lab.astype(str).map(norm).isin(exclude)
    if "mask" in spec and spec["mask"] in obs:
        m &= obs[spec["mask"]].astype(bool)
    if m.sum() < 2:
        raise GradeError("fewer than 2 annotated observations to score")
    ari = float(adjusted_rand_score(lab[m].astype(str), dom[m].astype(str)))
    n_dom = int(dom[m].nunique())
    need = float(spec.get("min", 0.3))
    if "n_domains" in spec and n_dom != int(spec["n_domains"]):
        return Grade(FAIL, f"{n_dom} domains found, {spec['n_domains']} asked for (ARI {ari:.3f})",
                     n_dom, "obs", round(ari, 4))
    return Grade(PASS if ari >= need else FAIL, f"ARI = {ari:.3f} vs annotation (need {need:g})",
                 round(ari, 4), "obs", round(ari, 4))


def grade_all_of(resp: Response, answer, spec: dict) -> Grade:
    """Every part must pass; parts are full grade specs with their own `answer`."""
    parts = spec.get("parts") or []
    if not parts:
        raise GradeError("all_of has no parts")
    grades = [grade(resp, p.get("answer"), p) for p in parts]
    reasons = "; ".join(f"[{g.status}] {g.reason}" for g in grades)
    if any(g.status == ERROR for g in grades) and not any(g.status == FAIL for g in grades):
        status = ERROR
    else:
        status = PASS if all(g.status == PASS for g in grades) else FAIL
    return Grade(status, reasons, [g.claimed for g in grades], "parts",
                 sum(g.status == PASS for g in grades) / len(grades))


GRADERS: dict[str, Callable] = {
    "numeric": grade_numeric, "choice": grade_choice, "exact_label": grade_choice,
    "precision_at_k": grade_set, "recall_at_k": grade_set, "jaccard": grade_set,
    "must_mention": grade_must_mention, "ari": grade_ari, "all_of": grade_all_of,
}


def grade(resp: Response, answer, spec: dict) -> Grade:
    """Grade one response; never raises (bad specs and wrong-type answers become 'error')."""
    kind = (spec or {}).get("kind")
    if kind not in GRADERS:
        return Grade(ERROR, f"unknown grader kind {kind!r} (known: {', '.join(GRADERS)})")
    try:
        return GRADERS[kind](resp, answer, spec)
    except GradeError as e:
        return Grade(ERROR, str(e))
    except Exception as e:  # a grader bug must not stop the run
        return Grade(ERROR, f"grader {kind} failed: {type(e).__name__}: {e}")
