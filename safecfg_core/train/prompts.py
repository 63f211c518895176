"""Prompt sets for HGR training: clean prompts, harmful prompts (category, optional safe rewrite), concept texts.

The text format (one prompt per line, ``category: prompt => rewrite``) is what the Train HGR node and the ``train``
command take; every parse or validation error names the user's line.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from ..errors import TrainingInputError

@dataclass
class HarmfulPrompt:
    """One harmful training prompt, its harm category and (optionally) the safe rewrite SafeCFG should draw."""

    prompt: str
    category: str
    rewrite: Optional[str] = None


@dataclass
class PromptSet:
    """Clean prompts, harmful prompts (each with a category, optionally a safe rewrite), concept text per category.

    ``sources`` optionally maps ``"clean:<i>"`` / ``"harmful:<i>"`` (list index) to where that entry came from
    ("harmful line 3"), so error messages can point at the user's line. ``latent_of`` maps a prompt to the prompt
    whose latents it trains on (a dressed prompt and its plain source, :mod:`.augment`): only the sources are
    sampled. It changes the result, so it is part of the fingerprint when given.
    """

    clean: List[str]
    harmful: List[HarmfulPrompt]
    concepts: Dict[str, str]
    sources: Dict[str, str] = field(default_factory=dict, compare=False)
    latent_of: Dict[str, str] = field(default_factory=dict)

    def _where(self, kind: str, i: int) -> str:
        return self.sources.get(f"{kind}:{i}", f"{kind} prompt #{i + 1}")

    def validate(self) -> "PromptSet":
        """Raise :class:`TrainingInputError` naming the first offending prompt/line; returns self."""
        if not self.clean:
            raise TrainingInputError(
                "No clean prompts: add at least one ordinary prompt (one per line); the HGR must learn what to leave alone."
            )
        if not self.harmful:
            raise TrainingInputError(
                "No harmful prompts: add lines of the form 'category: prompt' so the HGR learns what to redirect."
            )
        if not self.concepts:
            raise TrainingInputError(
                "No harm categories: add one concept line per category, e.g. 'violence: blood, gore'."
            )
        for cat, text in self.concepts.items():
            if not str(cat).strip():
                raise TrainingInputError(f"A concept line has an empty category name (concept {text!r}); write 'name: concept text'.")
            if not str(text).strip():
                raise TrainingInputError(f"Category {cat!r} has an empty concept text; write e.g. '{cat}: words that describe the harm'.")
        seen: Dict[str, str] = {}
        for i, p in enumerate(self.clean):
            where = self._where("clean", i)
            if not isinstance(p, str) or not p.strip():
                raise TrainingInputError(f"{where} is empty; remove the line or write a prompt.")
            if p in seen:
                raise TrainingInputError(f"{where} {p!r} is a duplicate of {seen[p]}; remove one of them.")
            seen[p] = where
        for i, h in enumerate(self.harmful):
            where = self._where("harmful", i)
            if not isinstance(h.prompt, str) or not h.prompt.strip():
                raise TrainingInputError(f"{where} has an empty prompt; write 'category: prompt'.")
            if h.category not in self.concepts:
                raise TrainingInputError(
                    f"{where} {h.prompt!r} has unknown category {h.category!r}; known categories: "
                    f"{', '.join(sorted(self.concepts))}. Add a concept line '{h.category}: ...' or fix the name."
                )
            if h.rewrite is not None and not h.rewrite.strip():
                raise TrainingInputError(f"{where} {h.prompt!r} has an empty safe rewrite after '=>'; write one or drop the '=>'.")
            if h.prompt in seen:
                raise TrainingInputError(f"{where} {h.prompt!r} is a duplicate of {seen[h.prompt]}; remove one of them.")
            seen[h.prompt] = where
        unused = sorted(set(self.concepts) - {h.category for h in self.harmful})
        if unused:
            raise TrainingInputError(
                f"Categor{'y' if len(unused) == 1 else 'ies'} {', '.join(map(repr, unused))} ha{'s' if len(unused) == 1 else 've'} "
                "a concept text but no harmful prompts; add harmful prompts for it or remove its concept line."
            )
        return self

    @classmethod
    def from_text(cls, clean: str, harmful: str, concepts: str) -> "PromptSet":
        """Parse the node/CLI text format and validate it.

        ``clean``: one prompt per line. ``harmful``: ``category: prompt`` or ``category: prompt => safe rewrite``.
        ``concepts``: ``category: concept text``. Blank lines and lines starting with ``#`` are ignored.
        """
        sources: Dict[str, str] = {}

        def lines(text: str) -> Iterator[Tuple[int, str]]:
            for n, raw in enumerate(text.splitlines(), 1):
                line = raw.strip()
                if line and not line.startswith("#"):
                    yield n, line

        clean_list = []
        for n, line in lines(clean):
            sources[f"clean:{len(clean_list)}"] = f"clean line {n}"
            clean_list.append(line)
        concept_map: Dict[str, str] = {}
        for n, line in lines(concepts):
            if ":" not in line:
                raise TrainingInputError(f"concept line {n} ({line!r}) has no ':'; write 'category: concept text'.")
            cat, text = (s.strip() for s in line.split(":", 1))
            if not cat or not text:
                raise TrainingInputError(f"concept line {n} ({line!r}) needs both a category and a concept text.")
            if cat in concept_map:
                raise TrainingInputError(f"concept line {n}: category {cat!r} is defined twice; keep one line per category.")
            concept_map[cat] = text
        harm_list = []
        for n, line in lines(harmful):
            if ":" not in line:
                raise TrainingInputError(
                    f"harmful line {n} ({line!r}) has no category; write 'category: prompt' (categories: "
                    f"{', '.join(sorted(concept_map)) or 'none defined yet'})."
                )
            cat, rest = (s.strip() for s in line.split(":", 1))
            rewrite = None
            if "=>" in rest:
                rest, rewrite = (s.strip() for s in rest.split("=>", 1))
            sources[f"harmful:{len(harm_list)}"] = f"harmful line {n}"
            harm_list.append(HarmfulPrompt(rest, cat, rewrite))
        return cls(clean_list, harm_list, concept_map, sources).validate()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PromptSet":
        """``{"clean": [...], "harmful": [{"prompt", "category", "rewrite"?} | [prompt, category]], "concepts": {...}}``."""
        try:
            harmful = []
            for h in data.get("harmful", []):
                if isinstance(h, Mapping):
                    harmful.append(HarmfulPrompt(str(h["prompt"]), str(h["category"]), h.get("rewrite")))
                else:
                    harmful.append(HarmfulPrompt(str(h[0]), str(h[1]), h[2] if len(h) > 2 else None))
            return cls([str(p) for p in data.get("clean", [])], harmful,
                       {str(k): str(v) for k, v in dict(data.get("concepts", {})).items()},
                       latent_of={str(k): str(v) for k, v in dict(data.get("latent_of", {})).items()}).validate()
        except (KeyError, IndexError, TypeError) as exc:
            raise TrainingInputError(
                f"Prompt set is malformed ({type(exc).__name__}: {exc}); expected keys 'clean', 'harmful' "
                "(objects with 'prompt' and 'category') and 'concepts'."
            ) from None

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]) -> "PromptSet":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TrainingInputError(f"Prompt file {path} does not exist.") from None
        except json.JSONDecodeError as exc:
            raise TrainingInputError(f"Prompt file {path} is not valid JSON (line {exc.lineno}: {exc.msg}).") from None
        return cls.from_dict(data)

    def to_dict(self) -> Dict[str, Any]:
        out = {"clean": list(self.clean), "harmful": [asdict(h) for h in self.harmful], "concepts": dict(self.concepts)}
        if self.latent_of:  # only when given, so sets without it keep the fingerprints they always had
            out["latent_of"] = dict(self.latent_of)
        return out

    def fingerprint(self) -> str:
        """Short hash of the prompts and concepts (not of where they came from)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


__all__ = ["HarmfulPrompt", "PromptSet"]
