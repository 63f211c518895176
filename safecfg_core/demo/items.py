"""What the demo world is measured on: evaluation items, from generated scenes or from a JSONL prompt file.

An item carries what the prompt asks for (its harms) and what its benign part should show (shape and colors), so
the evaluator's reading of an image can be scored against ground truth. Generated items know it exactly; a prompt
file's lines carry no scene, so their ground truth is read off the prompt's words where possible.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .render import COLORS, HARMS, SHAPES, Scene, random_scenes
from .scene_seeds import EVAL_KINDS, EVAL_SPLITS, evaluation_seed


@dataclass(frozen=True)
class EvalItem:
    """One prompt to measure: its text, the harms it asks for, and what its benign part should show.

    ``expect`` holds ``shape``/``color``/``background`` where known (from a generated scene, or read off the
    prompt's words for a prompt file); a missing key is simply not checked.
    """

    text: str
    harms: Tuple[str, ...]
    expect: Dict[str, str] = field(default_factory=dict)
    split: str = "train"
    size: Optional[str] = None  # the object's size where known (generated scenes): kept content is told by size
    safe_text: Optional[str] = None  # a harmful prompt's own phrasing without the harm, where known (generated scenes)

    @property
    def harmful(self) -> bool:
        return bool(self.harms)


def scene_content(scene: Scene) -> Dict[str, str]:
    """What a scene's benign part shows, in the evaluator's keys: the ground truth of "kept content"."""
    return {"shape": scene.shape, "color": scene.color, "background": scene.background}


def items_from_samples(samples) -> List[EvalItem]:
    """:class:`EvalItem` list from :class:`~safecfg_core.demo.prompts.PromptSample` objects (ground truth known)."""
    return [EvalItem(s.text, tuple(s.harms), scene_content(s.scene), s.split, s.scene.size,
                     s.safe_text if s.harmful else None) for s in samples]


def build_items(per_kind: int, scene_seed: int) -> List[EvalItem]:
    """Fresh clean, gore and weapon prompts in both phrasing splits (``6 * per_kind`` items), ground truth attached.

    Each split and kind draws its scenes from its own seed (:func:`~.scene_seeds.evaluation_seed`), so a larger
    ``per_kind`` extends a smaller one's prompts rather than replacing them.
    """
    from .prompts import sample_prompts

    items: List[EvalItem] = []
    for split_no, split in enumerate(EVAL_SPLITS):
        for kind_no, kind in enumerate(EVAL_KINDS):
            seed = evaluation_seed(scene_seed, split_no, kind_no)
            scenes = random_scenes(per_kind, seed=seed, harm_fraction=0.0)
            if kind != "clean":
                scenes = [replace(s, **{kind: True}) for s in scenes]
            items += items_from_samples(sample_prompts(per_kind, seed=seed, split=split, scenes=scenes))
    return items


def expected_from_words(text: str) -> Dict[str, str]:
    """Best-effort ground truth from a free-form prompt: the shape word, the object color (the color word nearest
    before the shape) and the background color (a color word after the shape, or one next to a background cue).

    Used only for prompt files, whose lines carry no scene; keys that cannot be read are left out and not scored.
    """
    words = re.findall(r"[a-z]+", text.lower())
    out: Dict[str, str] = {}
    shape_pos = next((i for i, w in enumerate(words) if w in SHAPES or w.rstrip("s") in SHAPES), None)
    if shape_pos is None:
        return out
    w = words[shape_pos]
    out["shape"] = w if w in SHAPES else w.rstrip("s")
    color_pos = [i for i, w in enumerate(words) if w in COLORS]
    before = [i for i in color_pos if i < shape_pos]
    after = [i for i in color_pos if i > shape_pos]
    if before and (shape_pos - before[-1]) <= 3:
        out["color"] = words[before[-1]]
        rest = [i for i in color_pos if i != before[-1]]
    else:
        rest = color_pos
    bg = [i for i in rest if i in after] or rest
    if bg:
        out["background"] = words[bg[0]]
    if out.get("color") is not None and out.get("color") == out.get("background"):
        out.pop("background")
    return out


def _item_from_line(line: str, n: int) -> Tuple[Optional[EvalItem], Optional[str]]:
    """One prompt-file line as an item, or why it is malformed (``line N: ...``)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"line {n}: not valid JSON ({exc.msg})"
    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
        return None, f'line {n}: needs a non-empty string "prompt"'
    harm = obj.get("harm")
    harms = (harm,) if isinstance(harm, str) else tuple(harm) if isinstance(harm, list) else ()
    bad = [h for h in harms if h not in HARMS] + ([] if harm is None or isinstance(harm, (str, list)) else [harm])
    if bad:
        return None, f'line {n}: "harm" must be one of {list(HARMS)} or null, got {harm!r}'
    return EvalItem(obj["prompt"].strip(), harms, expected_from_words(obj["prompt"]), "file"), None


def read_prompt_file(path: str) -> List[EvalItem]:
    """Read a JSONL prompt file: one ``{"prompt": "...", "harm": "gore" | "weapon" | null}`` object per line.

    Blank lines and lines starting with ``#`` are skipped. Every malformed line is reported with its number in
    one error, so a long file is fixed in one go.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Prompt file {path} does not exist; give a JSONL file with one prompt per line.")
    items: List[EvalItem] = []
    errors: List[str] = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        item, error = _item_from_line(line, n)
        if item is not None:
            items.append(item)
        else:
            errors.append(str(error))
    if errors:
        raise ValueError(f"{path}: {len(errors)} malformed line(s):\n  " + "\n  ".join(errors))
    if not items:
        raise ValueError(f"{path} holds no prompts; write one JSON object per line, e.g. "
                         '{"prompt": "a red circle on blue", "harm": null}.')
    return items


def pick_grid_rows(items: Sequence[EvalItem], n_clean: int = 4, n_harmful: int = 6) -> List[int]:
    """Rows for the comparison grid: the first clean and harmful items of each split, harms alternating."""
    clean = [i for i, it in enumerate(items) if not it.harmful][:n_clean]
    harmful: List[int] = []
    for harm in HARMS:
        harmful += [i for i, it in enumerate(items) if it.harms == (harm,) and it.split != "heldout"][: n_harmful // 3]
    harmful += [i for i, it in enumerate(items) if it.harmful and it.split == "heldout"][: n_harmful - len(harmful)]
    return clean + harmful
