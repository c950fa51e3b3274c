"""The offline planner: a deterministic map from a request to tool calls, built from the
`intents` each registered tool declares (so a newly registered tool is planned automatically)
and the entities of the request (genes, obs categories, numbers, Literal choices, paths)."""
from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field

from agent.entities import Entities, extract
from agent.toolset import path_fields
from tools.errors import suggest

PATH_RE = re.compile(r"(?:[\w~./-]*/)?[\w.-]+\.(?:h5ad|gmt|csv|tsv|txt)(?:\.gz)?\b")
COLUMN_HINTS = ("groupby", "group_key", "groups_key", "label_key", "obs_key", "cluster_key",
                "key", "column", "annotation", "label", "cell_type_key", "domain_key")
VALUE_HINTS = ("group", "groups", "cell_type", "cell_types", "celltype", "target", "value",
               "domain", "region", "category", "reference", "source", "receiver", "sender", "center",
               "centre", "target_type", "perturb_type", "type")
PHRASE_STOP = {"a", "an", "the"}
FREE_TEXT = ("query", "text", "question", "prompt", "topic")
UNITS = ("µm", "um", "micron", "microns", "micrometer", "micrometers")
CELL_FIELDS = ("cell", "cells", "cell_id", "obs_name")
# fields holding the cell type a question is centred on ("around X", "near X", "in X cells")
ANCHOR_FIELDS = ("cell_type", "target_type", "target", "center", "centre")
# words before a label that make it the anchor: strong ones win over "in" / "of" / "to"
ANCHOR_STRONG = re.compile(r"(?:\bnear|\bnext to|\baround|\bclose to|\bcloser to|\bnearer to|"
                           r"\bnearest to|\bbeside|\bsurrounding|\badjacent to|\bborders?|"
                           r"\bbordering|\bneighbou?rs? of|\bneighbou?rhood of|\bwithin [\d.]+\s*"
                           r"(?:µm|um|microns?)? of)\s+(?:the\s+|other\s+)?$", re.I)
ANCHOR_WEAK = re.compile(r"\b(?:in|of|to|for)\s+(?:the\s+|other\s+|all\s+)?$", re.I)
# words for the kind of groups an annotation holds: "which layer ...", "one cell class"
GROUP_WORDS = re.compile(r"\b(?:layers?|regions?|domains?|cell types?|cell class(?:es)?|class(?:es)?|"
                         r"clusters?|annotations?|annotated|groups?|zones?|areas?)\b")
# obs columns that usually hold cell types, for a "count cell types" field next to a region
TYPE_COLUMN_WORDS = ("cell_type", "celltype", "cell_class", "cell type", "class", "type", "label")


@dataclass
class Plan:
    steps: list[dict] = field(default_factory=list)  # {"name", "args", "why"}
    problems: list[str] = field(default_factory=list)  # why nothing (more) can be planned
    notes: list[str] = field(default_factory=list)


def _stem(w: str) -> str:
    w = w.lower()
    for suf in ("ies", "es", "s", "ing", "ed"):
        if len(w) > 4 and w.endswith(suf):
            return w[: -len(suf)]
    return w


def _phrase_match(phrase: str, words: list[str], text: str, max_gap: int = 2) -> bool:
    """True if the phrase's words occur in order in `words` (stemmed), at most `max_gap`
    other words apart ("genes involved in" matches "genes are involved in")."""
    ph = phrase.lower().strip()
    if not ph:
        return False
    if " " + ph + " " in " " + text + " ":
        return True
    pw = [_stem(w) for w in re.findall(r"[\w-]+", ph) if w not in PHRASE_STOP]
    if not pw:
        return False

    def from_pos(k: int, start: int) -> bool:
        if k == len(pw):
            return True
        stop = len(words) if k == 0 else min(len(words), start + max_gap + 1)
        return any(words[j] == pw[k] and from_pos(k + 1, j + 1) for j in range(start, stop))

    return from_pos(0, 0)


def match_tools(text: str, specs: dict) -> list[tuple[str, str]]:
    """(tool name, matched intent) for every tool with an intent phrase in `text`, in registry order."""
    low = " ".join(re.findall(r"[\w-]+", text.lower()))
    words = [_stem(w) for w in low.split() if w not in PHRASE_STOP]
    out = []
    for name, spec in specs.items():
        best = max((p for p in spec.intents if _phrase_match(p, words, low)),
                   key=lambda p: len(p.split()), default=None)
        if best:
            out.append((name, best))
    return out


# a tool dropped when the other one is also asked for: the composition "in X" of a region is not
# the one "around X cells"
YIELDS_TO = {"region_composition": ("neighbourhood_composition",)}


def _words(phrase: str) -> list[str]:
    return [_stem(w) for w in re.findall(r"[\w-]+", phrase.lower()) if w not in PHRASE_STOP]


def select_tools(matched: list[tuple[str, str]], specs: dict, text: str, ent: Entities) -> list:
    """Drop matches another match makes redundant:
    - a tool whose phrase is part of another's longer phrase ('cell sentence' in 'complete its
      cell sentence');
    - a search of gene descriptions ('which genes ...') when the request is about the data's own
      groups or cells ('which genes mark Layer1') and a data tool matched;
    - tools that make new labels when the request asks what is annotated ('how many layers are
      annotated');
    - the tools in YIELDS_TO when the tool they yield to matched."""
    if len(matched) < 2:
        return matched
    names = {n for n, _ in matched}
    low = " ".join(re.findall(r"[\w-]+", text.lower()))
    words = [_stem(w) for w in low.split() if w not in PHRASE_STOP]
    phrases = {n: [p for p in specs[n].intents if _phrase_match(p, words, low)] for n in names}
    out = []
    for name, phrase in matched:
        pw = " ".join(_words(phrase))
        if any(o != name and len(op.split()) > len(phrase.split()) and f" {pw} " in f" {' '.join(_words(op))} "
               for o in names for op in phrases[o]):
            continue
        spec = specs[name]
        if not spec.needs_data and (ent.categories or ent.cells) and any(
                specs[o].needs_data for o in names if o != name) and any(
                f in FREE_TEXT for f in spec.params.model_fields):
            continue
        counting = re.search(r"\bhow many\b|\bnumber of\b", text.lower())
        if counting and re.search(r"\bannotat", text.lower()) and "describe_dataset" in names \
                and name != "describe_dataset" and any(slot == "obs" for slot, _ in writes(spec)):
            continue
        if name == "describe_dataset" and not counting and "annotat" in phrase:
            continue  # "compare with the annotated layers": the annotation is an input
        if any(o in names for o in YIELDS_TO.get(name, ())):
            continue
        out.append((name, phrase))
    return out


def _literal_choices(ann) -> tuple:
    if typing.get_origin(ann) is typing.Literal:
        return typing.get_args(ann)
    for a in typing.get_args(ann):
        c = _literal_choices(a)
        if c:
            return c
    return ()


def _base_type(ann):
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if typing.get_origin(ann) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        return _base_type(args[0])
    return typing.get_origin(ann) or ann


def fill_args(spec, text: str, ent: Entities, dataset: str | None,
              intent: str = "", fallback: bool = False) -> tuple[dict, list[str]]:
    """Arguments for `spec` from the request; returns (args, missing required field names).
    With `fallback`, a required obs column the request does not name is the dataset's main
    annotation (main_annotation)."""
    args: dict = {}
    missing = []
    low = text.lower()
    cat_cols = list(dict.fromkeys(c for c, _ in ent.categories))
    cols = cat_cols + [c for c in ent.columns if c not in cat_cols]
    values = [v for c, v in ent.categories if c == cat_cols[0]] if cat_cols else []
    fields_all = spec.params.model_fields
    if values and any(f.lower() in ANCHOR_FIELDS for f in fields_all):
        a = anchor(text, ent, values)
        if a is not None:
            values.insert(0, values.pop(a))
    numbers = assign_numbers(spec.params, ent)
    pfields = path_fields(spec.params)
    col_fields = [f for f, fi in fields_all.items() if _is_column_field(f, fi)]
    # a column field paired with a value field ('region_key' with 'region') takes the value's
    # column; the other column fields get another column (region vs the cell types counted)
    paired = {f: f[: -len("_key")] for f in col_fields if f.endswith("_key") and f[: -len("_key")] in fields_all}
    for fname, finfo in spec.params.model_fields.items():
        desc = (finfo.description or "").lower()
        fl = fname.lower()
        ann = finfo.annotation
        base = _base_type(ann)
        choices = _literal_choices(ann)
        is_list = base in (list, tuple, set)
        if fl == "key_added" or "to write" in desc:
            pass  # where a tool writes is never taken from the request (it could overwrite annotations)
        elif fl == "dataset" and dataset:
            args[fname] = dataset
        elif fname in pfields:
            paths = [m.group(0) for m in PATH_RE.finditer(text)]
            fit = [x for x in paths if x.lower().removesuffix(".gz").rsplit(".", 1)[-1] in desc]
            if fit:
                args[fname] = fit[0]
        elif choices:
            hit = [c for c in choices if isinstance(c, str) and re.search(
                rf"\b{re.escape(c.lower())}(?:s|d|ed|ing|al)?\b", low)]
            if hit:
                args[fname] = hit[0]
        elif fl in CELL_FIELDS and base is str and ent.cells:
            args[fname] = ent.cells[0]
        elif fname in numbers:
            args[fname] = numbers[fname]
        elif _is_gene_field(fname):
            if ent.genes:
                args[fname] = list(ent.genes) if is_list else ent.genes[0]
        elif fl in COLUMN_HINTS or fl.endswith("_key") or "obs column" in desc:
            other = any(w in fl for w in ("section", "split", "batch", "sample", "mask", "condition", "spatial"))
            if paired and fname not in paired and cat_cols:
                same = [c for c, v in ent.annotations.items()
                        if sorted(v) == sorted(ent.annotations.get(cat_cols[0], []))]
                rest = [c for c in ent.columns if c not in same] or _type_columns(ent.annotations, cat_cols[0])
                if rest:
                    args[fname] = rest[0]
            elif cols and not other and (cat_cols or finfo.is_required() or fl in ("label_key", "groupby")):
                args[fname] = cols[0]
            elif fallback and finfo.is_required() and not other and ent.annotations \
                    and GROUP_WORDS.search(low):
                args[fname] = main_annotation(ent.annotations, text)
        elif values and (fl in VALUE_HINTS or fl.rstrip("s") in VALUE_HINTS):
            args[fname] = list(values) if is_list else values.pop(0)  # "A vs B": group A, reference B
        elif fl in FREE_TEXT and finfo.is_required():
            rest = low.split(intent.lower(), 1)[-1] if intent and intent.lower() in low else low
            rest = re.sub(r"^[\s,:;?!.]*(?:of|in|to|for|about|with)?\s+", "", rest).strip(" ?!.")
            if rest:
                args[fname] = rest
        if fname not in args and finfo.is_required():
            missing.append(fname)
    return args, missing


def _is_gene_field(fname: str) -> bool:
    fl = fname.lower()
    return fl in ("gene", "genes") or (fl.endswith(("_gene", "_genes")) and not any(
        x in fl for x in ("drop", "prefix", "exclude", "n_")))


def _is_column_field(fname: str, finfo) -> bool:
    fl, desc = fname.lower(), (finfo.description or "").lower()
    return fl != "key_added" and "to write" not in desc and (
        fl in COLUMN_HINTS or fl.endswith("_key") or "obs column" in desc)


def anchor(text: str, ent: Entities, values: list[str]) -> int | None:
    """Index in `values` of the label the request is centred on: the one after 'near', 'next to',
    'around', 'closer to', 'within 30 µm of' ... (else after 'in' / 'of' / 'to'); None if no
    label is marked so. 'Remove Microglia near Astrocytes' -> Astrocytes."""
    best = None
    for (col, v), pos in zip(ent.categories, ent.positions):
        if v not in values:
            continue
        before = text[max(0, pos - 40): pos]
        score = 2 if ANCHOR_STRONG.search(before) else 1 if ANCHOR_WEAK.search(before) else 0
        if score and (best is None or score > best[0]):
            best = (score, values.index(v))
    return best[1] if best else None


def _type_columns(annotations: dict, exclude: str) -> list[str]:
    """Columns that look like cell-type annotations (by name), other than `exclude`."""
    cols = [c for c in annotations if c != exclude]
    return sorted(cols, key=lambda c: next((i for i, w in enumerate(TYPE_COLUMN_WORDS)
                                            if w in c.lower().replace("_", " ") or w in c.lower()), 99))[:1]


def main_annotation(annotations: dict, text: str = "") -> str:
    """The dataset's main annotation when the request names none: 'ground_truth' / a label or
    cell-type column, else the categorical column with the most categories (up to 50)."""
    def score(c):
        lc = c.lower()
        named = 0 if any(w in lc for w in ("ground_truth", "truth", "annotation")) else \
            1 if any(w in lc for w in ("cell_type", "celltype", "cell_class", "label", "layer",
                                       "region", "domain", "cluster")) else 2
        n = len(annotations[c])
        return (named, 0 if 2 <= n <= 50 else 1, -n)
    return min(annotations, key=score)


def assign_numbers(params, ent: Entities) -> dict:
    """{field: number} pairing each number of the request with the field its neighbouring words
    name best ("7 domains" -> n_domains, "cell 5" -> cell, "30 µm" -> a radius in µm)."""
    cands = []
    for fname, f in params.model_fields.items():
        base = _base_type(f.annotation)
        if base not in (int, float, str) or _literal_choices(f.annotation) or fname == "dataset":
            continue
        tokens = [_stem(t) for t in re.findall(r"[a-z]+", fname.lower()) if len(t) > 2]
        desc = (f.description or "").lower()
        unit_field = any(u in desc or u in fname.lower().split("_") for u in UNITS) or any(
            w in fname.lower() for w in ("radius", "distance"))
        for i, (val, word) in enumerate(ent.numbers):
            words = [w for w in (ent.after[i] if i < len(ent.after) else [word]) if w not in UNITS]
            words.append(ent.before[i] if i < len(ent.before) else "")
            score = 0.0
            if word in UNITS:
                score = 3.0 if unit_field and base is not str else 0.0
            for w in words:
                w = _stem(w)
                for t in tokens:
                    if w == t:
                        score = max(score, 3.0 if len(tokens) == 1 else 2.0)
                    elif len(w) > 2 and (w.startswith(t) or t.startswith(w)):
                        score = max(score, 1.0)
            if base is str and not (score >= 3 and len(tokens) == 1):
                continue
            if score > 0:
                cands.append((score - 0.1 * len(tokens), fname, i, val, base))
    out, used = {}, set()
    for score, fname, i, val, base in sorted(cands, key=lambda c: -c[0]):
        if fname in out or i in used:
            continue
        used.add(i)
        if base is str:
            out[fname] = str(int(val)) if float(val).is_integer() else str(val)
        else:
            out[fname] = int(val) if base is int and float(val).is_integer() else val
    return out


def make_plan(text: str, specs: dict, session) -> Plan:
    """The tool calls that answer `text`, or the problems that stop it."""
    plan = Plan()
    if not text.strip():
        plan.problems.append("empty")
        return plan
    datasets = session.dataset_ids
    dataset = datasets[0] if datasets else None
    for d in datasets:  # a dataset named in the request wins
        if re.search(rf"\b{re.escape(d)}\b", text) and d != "data":
            dataset = d
    adata = session.get(dataset) if dataset else None
    ent = extract(text, adata)
    literal = {str(c).lower() for s in specs.values() for f in s.params.model_fields.values()
               for c in _literal_choices(f.annotation)}
    ent.unknown_genes = [g for g in ent.unknown_genes if g.lower() not in literal]
    matched = match_tools(text, specs)
    if not PATH_RE.search(text):  # loaders only when the request names a file
        matched = [m for m in matched if "path" not in specs[m[0]].params.model_fields]
    matched = select_tools(matched, specs, text, ent)
    if not matched:
        plan.problems.append("not_understood")
        if ent.unknown_genes:
            plan.notes.append(_unknown_genes(ent, adata))
        return plan
    for name, intent in matched:
        spec = specs[name]
        loading = any("path" in specs[s["name"]].params.model_fields for s in plan.steps)
        if spec.needs_data and not dataset and not loading:
            plan.problems.append("no_data")
            return plan
        args, missing = fill_args(spec, text, ent, dataset, intent)
        fields = spec.params.model_fields
        wants_gene = any(_is_gene_field(f) for f in fields)
        if wants_gene and ent.unknown_genes and not ent.genes:
            plan.problems.append(_unknown_genes(ent, adata))
            continue
        wants_group = any(f.lower() in VALUE_HINTS or f.lower().rstrip("s") in VALUE_HINTS for f in fields)
        if wants_group and ent.unknown_types and not ent.categories:
            plan.problems.append(_unknown_types(ent, adata))
            continue
        if missing and set(missing) <= set(path_fields(spec.params)) and len(matched) > 1:
            continue  # e.g. "load" said about a gene-set file another tool reads
        if missing and not plan.steps:
            args, missing = fill_args(spec, text, ent, dataset, intent, fallback=True)
        if missing and plan.steps and spec.needs_data:
            # an earlier step may make what is missing (e.g. obs['domain'] for "each domain"):
            # fill the arguments again when it is this step's turn
            plan.steps.append({"name": name, "args": args, "why": f"asked to '{intent}'", "defer": True})
            continue
        if missing:
            plan.problems.append(f"{name} needs {', '.join(missing)}, which I could not find in "
                                 "the request" + _hint(missing, adata))
            continue
        plan.steps.append({"name": name, "args": args, "why": f"asked to '{intent}'"})
    if ent.unknown_genes and ent.genes:
        plan.notes.append(_unknown_genes(ent, adata))
    plan.notes += ent.mapped
    return plan


def refill(step: dict, text: str, specs: dict, session) -> tuple[dict | None, str | None]:
    """Arguments of a deferred step from the data as it is now; (args, None) or (None, problem)."""
    spec = specs[step["name"]]
    dataset = step["args"].get("dataset") or (session.dataset_ids or [None])[0]
    adata = session.get(dataset) if dataset else None
    args, missing = fill_args(spec, text, extract(text, adata), dataset, fallback=True)
    if missing:
        return None, (f"{step['name']} needs {', '.join(missing)}, which I could not find in the request"
                      + _hint(missing, adata))
    return args, None


def _unknown_genes(ent: Entities, adata) -> str:
    names = list(adata.var_names) if adata is not None else []
    parts = [f"'{g}'{suggest(g, names)}" for g in ent.unknown_genes[:5]]
    return "gene " + ", ".join(parts) + " is not among the dataset's genes"


def _unknown_types(ent: Entities, adata) -> str:
    from agent.entities import categorical_columns

    cats = categorical_columns(adata) if adata is not None else {}
    allv = [v for vs in cats.values() for v in vs]
    parts = [f"'{t}'{suggest(t, allv)}" for t in ent.unknown_types[:5]]
    where = ", ".join(f"{c} ({', '.join(map(str, v[:6]))}{', ...' if len(v) > 6 else ''})"
                      for c, v in list(cats.items())[:4]) or "none"
    return f"cell type / group {', '.join(parts)} is not in the dataset's annotations: {where}"


def _hint(missing, adata) -> str:
    if adata is None:
        return ""
    if any("gene" in m for m in missing):
        return f" (name a gene of the dataset, e.g. {', '.join(map(str, adata.var_names[:3]))})"
    return ""


KEY_RE = re.compile(r"\b(obsm|obsp|obs|uns|layers|varm|var)\[(['\"]?)([\w.-]+)\2\]")
MISSING_RE = re.compile(r"\b(obsm|obsp|obs|uns|layers|varm|var)\b[^']{0,20}'([^']+)'")
READS = ("need", "require", "use", "read", "from", "given", "expects", "takes")


def writes(spec) -> set[tuple[str, str]]:
    """(slot, key) pairs the tool's docstring says it writes: `obsm['X_pca']`, or `obs[key_added]`
    (a parameter: its default). Mentions after 'needs' / 'uses' / 'reads' ... are inputs."""
    doc = spec.func.__doc__ or ""
    out = set()
    for m in KEY_RE.finditer(doc):
        before = doc[max(0, m.start() - 40): m.start()].lower()
        sentence = re.split(r"[.;(]\s", before)[-1]
        if any(w in sentence for w in READS):
            continue
        slot, quoted, key = m.group(1), m.group(2), m.group(3)
        if not quoted:
            f = spec.params.model_fields.get(key)
            if f is None or not isinstance(f.default, str):
                continue
            key = f.default
        out.add((slot, key))
    return out


def prerequisite(error: str, specs: dict, tried: set, text: str, session, dataset,
                 failed: str = "") -> dict | None:
    """The tool that provides what a failed call missed: one whose docstring says it writes the
    key the error names (obs/obsm/obsp/uns/layers), or one the error names ('run X first')."""
    adata = session.get(dataset) if dataset else None
    ent = extract(text, adata)
    cands = []
    m = MISSING_RE.search(error or "")
    if m:
        slot, key = m.groups()
        cands += [name for name, spec in specs.items() if (slot, key) in writes(spec)]
    cands += [n for n in specs if n != failed and re.search(rf"\b{re.escape(n)}\b", error or "")]
    for name in dict.fromkeys(cands):
        if name in tried or name == failed:
            continue
        args, missing = fill_args(specs[name], text, ent, dataset)
        if not missing:
            return {"name": name, "args": args, "why": f"needed by {failed or 'the next step'}"}
    return None
