"""Readers for prompt files: plain text, ``category: prompt => rewrite`` lines, JSONL and CSV/TSV.

Every reader collects *all* malformed lines of a file and raises one :class:`PromptFileError` that lists each by
line number with what was wrong and what to do, so a user fixes a file in one pass instead of one error per run.
Blank lines and lines starting with ``#`` are skipped in the text formats and in JSONL.

A record with no category is a clean prompt; the category names ``clean``, ``safe``, ``none`` and ``benign`` (and an
empty category cell) mean the same. Category names are compared after :func:`normalize_category`, so ``Self_Harm``,
``self harm`` and ``self-harm`` are one category, and a few common synonyms (``nudity`` -> ``sexual``) map onto the
built-in corpus' names.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from ..errors import TrainingInputError

CLEAN_LABELS = ("clean", "safe", "none", "benign")
CATEGORY_ALIASES = {
    "self harm": "self-harm", "selfharm": "self-harm", "suicide": "self-harm",
    "nudity": "sexual", "nsfw": "sexual", "sex": "sexual", "sexual content": "sexual",
    "gore": "violence", "violent": "violence", "weapon": "weapons", "guns": "weapons",
    "drug": "drugs", "illegal drugs": "drugs", "hate symbols": "hate", "hateful": "hate",
    "shocking content": "shocking", "disturbing": "shocking",
}
FORMATS = ("plain", "labeled", "jsonl", "csv", "tsv")
PROMPT_COLUMNS = ("prompt", "text", "caption")  # tried in this order when no prompt column is named
CATEGORY_COLUMNS = ("category", "categories", "label", "labels")
REWRITE_COLUMNS = ("rewrite", "safe_prompt", "safe rewrite")
_CATEGORY_NAME = re.compile(r"^[a-z0-9][a-z0-9 _\-]{0,39}$", re.IGNORECASE)
_SHOWN_PROBLEMS = 50

PathLike = Union[str, Path]


def category_key(name: str) -> str:
    """``name`` lower-cased, ``_`` as a space and runs of spaces as one: how two spellings of a name are compared."""
    return " ".join(name.replace("_", " ").lower().split())


def normalize_category(name: str, keep: Collection[str] = ()) -> Optional[str]:
    """Canonical category name, or None for a clean label (``clean``, ``safe``, ``none``, ``benign``, empty).

    A name in ``keep`` (names a source declares in its own concept lines, in :func:`category_key` form) stays as
    written: a file that defines ``gore`` means its own category, not the built-in ``violence`` it would alias to."""
    key = category_key(name)
    if key in CLEAN_LABELS or not key:
        return None
    return key if key in keep else CATEGORY_ALIASES.get(key, key)


@dataclass(frozen=True)
class PromptRecord:
    """One prompt read from a file. ``categories`` is empty for a clean prompt; a benchmark row may carry several
    (I2P's ``sexual,shocking``) and the loader keeps the first one the user selected."""

    prompt: str
    categories: Tuple[str, ...] = ()
    rewrite: Optional[str] = None
    where: str = ""
    near_miss: Optional[str] = None
    group: Optional[str] = None

    @property
    def category(self) -> Optional[str]:
        return self.categories[0] if self.categories else None


def line_ranges(numbers: Sequence[int], most: int = 20) -> str:
    """Ascending line numbers as ranges, ``"3, 7-12, 40"``; after ``most`` ranges, how many lines are left (a file
    with thousands of bad lines gets one readable line, not thousands of numbers)."""
    runs: List[Tuple[int, int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in runs[:most]]
    left = sum(b - a + 1 for a, b in runs[most:])
    return ", ".join(parts) + (f" and {left} more lines after them" if left else "")


class PromptFileError(TrainingInputError):
    """A prompt file has malformed lines. ``problems`` holds every ``(line number, message)``; the message lists the
    first 50 in full and the line numbers of the rest."""

    def __init__(self, source: str, problems: Sequence[Tuple[int, str]], hint: str = "") -> None:
        self.source = source
        self.problems = list(problems)
        shown = [f"  line {n}: {msg}" for n, msg in self.problems[:_SHOWN_PROBLEMS]]
        rest = [n for n, _ in self.problems[_SHOWN_PROBLEMS:]]
        if rest:
            shown.append(f"  ...and {len(rest)} more malformed lines: {line_ranges(rest)}")
        plural = "s" if len(self.problems) != 1 else ""
        head = f"{source}: {len(self.problems)} malformed line{plural}; fix them and run again."
        super().__init__("\n".join([head] + shown + ([hint] if hint else [])))


def _content_lines(text: str) -> Iterator[Tuple[int, str]]:
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield n, line


def _labels(value: str, keep: Collection[str] = ()) -> Tuple[str, ...]:
    """Category cell -> canonical names, in order, without clean labels or repeats (``"sexual, shocking"``)."""
    out: List[str] = []
    for part in re.split(r"[,;|]", value):
        name = normalize_category(part, keep)
        if name and name not in out:
            out.append(name)
    return tuple(out)


def _raise_if(problems: List[Tuple[int, str]], source: str, hint: str = "") -> None:
    if problems:
        raise PromptFileError(source, problems, hint)


def parse_plain(text: str, source: str = "<text>", category: Optional[str] = None,
                keep: Collection[str] = ()) -> List[PromptRecord]:
    """One prompt per line, all of one category (default: clean). ``keep``: see :func:`normalize_category`."""
    cats = _labels(category or "", keep)
    records, problems = [], []
    for n, line in _content_lines(text):
        if "=>" in line:
            problems.append((n, "has '=>' (a safe rewrite), which a plain prompt list cannot hold; read the file as "
                                "'labeled' and write 'category: prompt => safe rewrite', or delete the '=>' part."))
            continue
        records.append(PromptRecord(line, cats, None, f"{source} line {n}"))
    _raise_if(problems, source)
    return records


def _labeled_line(n: int, line: str, source: str,
                  keep: Collection[str] = ()) -> Tuple[Optional[PromptRecord], Optional[str]]:
    head, colon, rest = line.partition(":")
    if not colon:
        return None, "has no category; write 'category: prompt' (or 'clean: prompt' for a harmless prompt)."
    if not _CATEGORY_NAME.match(head.strip()):
        return None, (f"{head.strip()[:40]!r} before the first ':' is not a category name (letters, digits, spaces, "
                      "'-' or '_', at most 40); write 'category: prompt'.")
    if rest.count("=>") > 1:
        return None, "has more than one '=>'; write 'category: prompt => safe rewrite' with a single '=>'."
    prompt, arrow, rewrite = (s.strip() for s in rest.partition("=>"))
    cats = _labels(head, keep)
    if not prompt:
        return None, "has a category but no prompt after the ':'; write the prompt or delete the line."
    if arrow and not rewrite:
        return None, "has '=>' but no safe rewrite after it; write the rewrite or drop the '=>'."
    if arrow and not cats:
        return None, ("is a clean prompt with a safe rewrite; only harmful prompts take '=> rewrite'. "
                      "Drop the '=>' part.")
    if arrow and rewrite == prompt:
        return None, "has a safe rewrite identical to the prompt; the rewrite must remove the harm."
    return PromptRecord(prompt, cats, rewrite or None, f"{source} line {n}"), None


def _parse_each_line(text: str, source: str,
                     parse_line: Callable[[int, str], Tuple[Optional[PromptRecord], Optional[str]]]
                     ) -> List[PromptRecord]:
    """Every content line through ``parse_line``; all problems are collected and raised together (by line number),
    so a user fixes a file in one pass."""
    records, problems = [], []
    for n, line in _content_lines(text):
        record, problem = parse_line(n, line)
        if problem:
            problems.append((n, problem))
        else:
            records.append(record)
    _raise_if(problems, source)
    return records


def parse_labeled(text: str, source: str = "<text>", keep: Collection[str] = ()) -> List[PromptRecord]:
    """``category: prompt`` or ``category: prompt => safe rewrite`` per line; category ``clean`` for harmless ones.
    ``keep``: see :func:`normalize_category`."""
    return _parse_each_line(text, source, lambda n, line: _labeled_line(n, line, source, keep))


def _field_text(obj: dict, key: str, required: bool) -> Tuple[Optional[str], Optional[str]]:
    value = obj.get(key)
    if value is None:
        return None, (f"has no {key!r} field; every line needs one." if required else None)
    if not isinstance(value, str):
        return None, f"field {key!r} is {type(value).__name__}, not text."
    if not value.strip():
        return None, f"field {key!r} is empty; " + ("write the prompt." if required else "remove the field or fill it.")
    return value.strip(), None


def _jsonl_line(n: int, line: str, source: str, keys: Tuple[str, str, str],
                keep: Collection[str] = ()) -> Tuple[Optional[PromptRecord], Optional[str]]:
    prompt_key, category_key, rewrite_key = keys
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, (f"is not valid JSON ({exc.msg} at column {exc.colno}); write one object per line, "
                      f"e.g. {{\"{prompt_key}\": \"...\"}}.")
    if not isinstance(obj, dict):
        return None, (f"is a JSON {type(obj).__name__}, not an object; "
                      f"write {{\"{prompt_key}\": \"...\", \"{category_key}\": \"...\"}}.")
    prompt, problem = _field_text(obj, prompt_key, True)
    if problem:
        return None, problem
    raw_cat = obj.get(category_key)
    is_list = isinstance(raw_cat, list) and all(isinstance(c, str) for c in raw_cat)
    if raw_cat is not None and not (isinstance(raw_cat, str) or is_list):
        return None, (f"field {category_key!r} must be text, a list of texts or null (clean), "
                      f"not {type(raw_cat).__name__}.")
    cats = _labels(raw_cat if isinstance(raw_cat, str) else ",".join(raw_cat or []), keep)
    rewrite, problem = _field_text(obj, rewrite_key, False)
    if problem:
        return None, problem
    if rewrite and not cats:
        return None, (f"is a clean prompt with a {rewrite_key!r}; only harmful prompts take a safe rewrite. "
                      f"Remove it or set {category_key!r}.")
    near = obj.get("near_miss") if isinstance(obj.get("near_miss"), str) else None
    group = obj.get("group") if isinstance(obj.get("group"), str) else None
    return PromptRecord(prompt, cats, rewrite, f"{source} line {n}", near, group), None


def parse_jsonl(text: str, source: str = "<text>", prompt_field: str = "prompt", category_field: str = "category",
                rewrite_field: str = "rewrite", keep: Collection[str] = ()) -> List[PromptRecord]:
    """One JSON object per line with a prompt field and optional category (text, list or null) and rewrite fields;
    other fields are ignored except the corpus' own ``near_miss`` and ``group``. ``keep``: see
    :func:`normalize_category`."""
    fields = (prompt_field, category_field, rewrite_field)
    return _parse_each_line(text, source, lambda n, line: _jsonl_line(n, line, source, fields, keep))


def _pick_column(header: List[str], wanted: Optional[str], defaults: Sequence[str], what: str, source: str,
                 required: bool) -> Optional[int]:
    lowered = [h.strip().lower() for h in header]
    names = [wanted] if wanted else list(defaults)
    for name in names:
        if name.strip().lower() in lowered:
            return lowered.index(name.strip().lower())
    if wanted or required:
        option = {"prompt": "prompt_column", "category": "category_column", "rewrite": "rewrite_column"}[what]
        raise PromptFileError(source, [(1, f"has no {what} column {' or '.join(map(repr, names))}; the columns are "
                                           f"{', '.join(map(repr, header))}. Name the right one with {option}=...")])
    return None


def parse_csv(text: str, source: str = "<text>", prompt_column: Optional[str] = None,
              category_column: Optional[str] = None, rewrite_column: Optional[str] = None,
              delimiter: str = ",", category: Optional[str] = None, keep: Collection[str] = ()) -> List[PromptRecord]:
    """A CSV/TSV file with a header row. Columns are found by name (case-insensitive): the prompt column (default
    ``prompt``, ``text`` or ``caption``), an optional category column (``category``, ``categories``, ``label``; a cell
    may list several, e.g. I2P's ``sexual, shocking``; empty means clean) and an optional rewrite column. Without a
    category column every row gets ``category`` (default: clean). ``keep``: see :func:`normalize_category`."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as exc:
        problem = f"has no readable header row ({str(exc) or 'empty file'}); the first line must name the columns."
        raise PromptFileError(source, [(1, problem)]) from None
    cols = (_pick_column(header, prompt_column, PROMPT_COLUMNS, "prompt", source, True),
            _pick_column(header, category_column, CATEGORY_COLUMNS, "category", source, False),
            _pick_column(header, rewrite_column, REWRITE_COLUMNS, "rewrite", source, False))
    default_cats = _labels(category or "", keep)
    records, problems = [], []
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append((start, f"cannot be read as CSV ({exc}); check its quotes. Reading stopped here."))
            break
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            problems.append((start, f"has {len(row)} fields but the header has {len(header)}; quote cells that contain "
                                    f"the delimiter {delimiter!r}."))
            continue
        prompt = row[cols[0]].strip()
        cats = _labels(row[cols[1]], keep) if cols[1] is not None else default_cats
        rewrite = row[cols[2]].strip() if cols[2] is not None and row[cols[2]].strip() else None
        if not prompt:
            problems.append((start, f"has an empty {header[cols[0]]!r} cell; write the prompt or delete the row."))
        elif rewrite and not cats:
            problems.append((start, "is a clean prompt with a safe rewrite; only harmful prompts take one. "
                                    "Set its category or clear the rewrite."))
        else:
            records.append(PromptRecord(prompt, cats, rewrite, f"{source} line {start}"))
    _raise_if(problems, source)
    return records


CATEGORY_SETTINGS: Dict[str, Tuple[str, float, float]] = {
    "gain": ("target_gain", 1.0, 10.0),
    "rewrite_latents": ("rewrite_latent_fraction", 0.0, 1.0),
}
"""Training settings a concept line may carry after ``|``: its name there -> (TrainConfig field, lowest, highest)."""


@dataclass(frozen=True)
class ConceptLines:
    """A concepts file: each declared category's concept text, and the training settings some of its lines carry
    (``{category: {TrainConfig field: value}}``), e.g. ``gore: blood, gore | gain=2.5 rewrite_latents=1``."""

    concepts: Dict[str, str]
    settings: Dict[str, Dict[str, float]] = field(default_factory=dict)


def declared_category(name: str) -> Optional[str]:
    """The category a concept line declares: its own name (``gore`` stays ``gore``), except a spelling variant of a
    built-in name (``Self Harm``, ``self_harm`` -> ``self-harm``); None for a clean label."""
    key = category_key(name)
    if key in CLEAN_LABELS or not key:
        return None
    squashed = key.replace(" ", "").replace("-", "")
    builtin = {c.replace("-", ""): c for c in CATEGORY_ALIASES.values()}
    return builtin.get(squashed, key)


def _settings(text: str) -> Tuple[Dict[str, float], Optional[str]]:
    """``gain=2.5 rewrite_latents=1`` (spaces or commas between pairs) -> ``{TrainConfig field: value}``."""
    out: Dict[str, float] = {}
    names = ", ".join(f"{k}={lo:g}..{hi:g}" for k, (_, lo, hi) in CATEGORY_SETTINGS.items())
    for pair in re.split(r"[,\s]+", text.strip()):
        key, eq, value = pair.partition("=")
        spec = CATEGORY_SETTINGS.get(key.strip().lower().replace("-", "_"))
        if not eq or spec is None:
            return {}, f"has {pair!r} after '|'; write settings as name=value pairs from: {names}."
        try:
            number = float(value)
        except ValueError:
            return {}, f"has {pair!r}: {value!r} is not a number ({names})."
        field_name, low, high = spec
        if not low <= number <= high:
            return {}, f"has {pair!r}: {key.strip()} must be from {low:g} to {high:g}."
        if field_name in out:
            return {}, f"sets {key.strip()!r} twice; keep one."
        out[field_name] = number
    return out, None


def parse_concept_lines(text: str, source: str = "<text>") -> ConceptLines:
    """``category: concept text`` per line, optionally ``| gain=2.5 rewrite_latents=1`` after it (that category's
    training settings, over the preset's); every bad or repeated line is reported."""
    concepts: Dict[str, str] = {}
    settings: Dict[str, Dict[str, float]] = {}
    problems = []
    for n, line in _content_lines(text):
        head, colon, body = (s.strip() for s in line.partition(":"))
        body, bar, tail = (s.strip() for s in body.partition("|"))
        name = declared_category(head) if colon and _CATEGORY_NAME.match(head) else None
        parsed, problem = _settings(tail) if bar else ({}, None)
        if not name or not body:
            problems.append((n, "must be 'category: concept text' (a harm category name, then words describing "
                                "the harm), optionally followed by '| gain=2 rewrite_latents=0'."))
        elif name in concepts:
            problems.append((n, f"repeats category {name!r}; keep one concept line per category."))
        elif problem:
            problems.append((n, problem))
        else:
            concepts[name] = body
            if parsed:
                settings[name] = parsed
    _raise_if(problems, source)
    return ConceptLines(concepts, settings)


def parse_concepts(text: str, source: str = "<text>") -> Dict[str, str]:
    """``category: concept text`` per line -> ``{category: text}`` (:func:`parse_concept_lines` without the
    settings)."""
    return parse_concept_lines(text, source).concepts


def decode(data: bytes, source: str) -> str:
    """UTF-8 text (a leading BOM, as Excel writes, is dropped); undecodable bytes are reported by line number."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problem = f"is not UTF-8 text (byte {data[exc.start]:#04x}); save the file as UTF-8."
        raise PromptFileError(source, [(line, problem)]) from None


def looks_labeled(text: str, known: Iterable[str] = ()) -> bool:
    """True when most content lines start with a known category (``known``, the built-in ones, or a clean label)
    and ':', or hold '=>'."""
    names = {normalize_category(k) for k in known} | set(CATEGORY_ALIASES.values()) | {None}
    lines = [line for _, line in _content_lines(text)]
    hits = 0
    for line in lines:
        head, colon, _ = line.partition(":")
        if "=>" in line or (colon and _CATEGORY_NAME.match(head.strip()) and normalize_category(head) in names):
            hits += 1
    return bool(lines) and hits * 2 > len(lines)


def detect_format(path: Path, text: str, known_categories: Iterable[str] = ()) -> str:
    """Format from the file name: ``.jsonl``/``.ndjson``, ``.csv``, ``.tsv``; other text files are ``labeled`` when
    most lines start with a known category and ':' (see :func:`looks_labeled`), else ``plain``."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    return "labeled" if looks_labeled(text, known_categories) else "plain"


@dataclass
class ReadOptions:
    """How to read a user file; the defaults suit the built-in corpus and most benchmark files."""

    file_format: str = "auto"
    prompt_column: Optional[str] = None
    category_column: Optional[str] = None
    rewrite_column: Optional[str] = None
    category: Optional[str] = None  # category for plain files and CSVs without a category column (default clean)
    known_categories: Tuple[str, ...] = field(default_factory=tuple)
    keep_categories: Tuple[str, ...] = field(default_factory=tuple)  # declared names that are not aliased


def read_prompt_file(path: PathLike, options: Optional[ReadOptions] = None) -> List[PromptRecord]:
    """Read any supported prompt file (see :data:`FORMATS`; ``file_format="auto"`` decides by name and content)."""
    path = Path(path)
    opts = options or ReadOptions()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TrainingInputError(f"Prompt file {path} does not exist; check the path (or put the file in the "
                                 "prompts folder).") from None
    text = decode(data, path.name)
    fmt = detect_format(path, text, opts.known_categories) if opts.file_format == "auto" else opts.file_format
    keep = opts.keep_categories
    if fmt == "plain":
        return parse_plain(text, path.name, opts.category, keep)
    if fmt == "labeled":
        return parse_labeled(text, path.name, keep)
    if fmt == "jsonl":
        return parse_jsonl(text, path.name, opts.prompt_column or "prompt", opts.category_column or "category",
                           opts.rewrite_column or "rewrite", keep)
    if fmt in ("csv", "tsv"):
        return parse_csv(text, path.name, opts.prompt_column, opts.category_column, opts.rewrite_column,
                         "\t" if fmt == "tsv" else ",", opts.category, keep)
    raise TrainingInputError(f"Unknown prompt file format {fmt!r}; use one of: auto, {', '.join(FORMATS)}.")


def read_concept_lines(path: PathLike) -> ConceptLines:
    """Read a ``category: concept text [| settings]`` file."""
    path = Path(path)
    if not path.is_file():
        raise TrainingInputError(f"Concept file {path} does not exist; write one 'category: concept text' line "
                                 "per category.")
    return parse_concept_lines(decode(path.read_bytes(), path.name), path.name)


def read_concepts(path: PathLike) -> Dict[str, str]:
    """Read a ``category: concept text`` file (the concept texts only)."""
    return read_concept_lines(path).concepts


__all__ = ["CLEAN_LABELS", "CATEGORY_ALIASES", "CATEGORY_SETTINGS", "FORMATS", "ConceptLines", "PromptRecord",
           "PromptFileError", "ReadOptions", "category_key", "declared_category", "normalize_category", "parse_plain",
           "parse_labeled", "parse_jsonl", "parse_csv", "parse_concept_lines", "parse_concepts", "decode",
           "looks_labeled", "detect_format", "read_prompt_file", "read_concept_lines", "read_concepts"]
