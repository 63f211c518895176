"""The alignment's only input about content: a list of prompts, with no label of any kind.

Alignment must learn harm from the HGR's judgement alone, so a prompt file that carries labels is refused rather
than parsed: the reader never splits a label off a line, so no label can reach the code by accident. A file is
plain text, one prompt per line; blank lines and lines starting with ``#`` are skipped; exact duplicates are kept
once. Refused, with the line number: a ``word: prompt`` prefix (``gore: a bloody star``, ``clean: a circle``),
tab-separated columns, and JSON/JSONL lines (``{"prompt": ..., "label": ...}``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, List, Union

from ..errors import TrainingInputError

_LABEL_PREFIX = re.compile(r"^\s*[A-Za-z_][\w\- ]{0,30}?\s*:\s*\S")
"""One to a few words before a colon at the start of a line: how labelled prompt lists are written."""


class LabelledPromptError(TrainingInputError):
    """A prompt list carried labels; alignment reads prompts only (see the module docstring)."""


def _refusal(where: str, what: str) -> LabelledPromptError:
    return LabelledPromptError(
        f"{where} looks labelled ({what}). Alignment takes prompts only: the HGR decides which are harmful, and no "
        "label may reach it. Write one plain prompt per line, without any 'label:' prefix, extra column or JSON; "
        "if a prompt really starts with a word and a colon, rephrase it.")


def parse_prompt_lines(lines: Iterable[str], source: str = "prompt list") -> List[str]:
    """Prompts from text lines (see the module docstring); :class:`LabelledPromptError` on any labelled line."""
    prompts: List[str] = []
    seen = set()
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}, line {number}"
        if line.startswith(("{", "[")):
            raise _refusal(where, "a JSON record")
        if "\t" in line:
            raise _refusal(where, "tab-separated columns")
        if _LABEL_PREFIX.match(line):
            raise _refusal(where, f"'{line.split(':', 1)[0].strip()}:' before the prompt")
        if line not in seen:
            seen.add(line)
            prompts.append(line)
    if not prompts:
        raise TrainingInputError(f"{source} holds no prompts; give one prompt per line.")
    return prompts


def read_prompts(path: Union[str, Path]) -> List[str]:
    """Read an unlabelled prompt file (UTF-8 text, one prompt per line)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrainingInputError(f"Prompt file {p} does not exist; give a text file, one prompt per line.") from None
    except UnicodeDecodeError:
        raise TrainingInputError(f"Prompt file {p} is not UTF-8 text; save it as UTF-8, one prompt per line.") from None
    return parse_prompt_lines(text.splitlines(), str(p))


__all__ = ["LabelledPromptError", "parse_prompt_lines", "read_prompts"]
