"""The inputs a family's ComfyUI model takes in ``BaseModel.apply_model`` besides its tokens and pooled vector.

ComfyUI's own samplers build them from the conditioning (each model class's ``extra_conds`` in
``comfy/model_base.py``). Code that calls ``apply_model`` itself (the nodes' denoiser adapter, which Train HGR, the
detector and the Align node drive, and the benchmark) must pass them too, or the family's transformer fails for a
missing argument. They are named here once, by family name (:mod:`.families`); this module imports no ComfyUI.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from .conditioning import Cond


def apply_model_extras(family: Optional[str], cond: Cond, batch: int, device: torch.device) -> Dict[str, Any]:
    """Keyword inputs for ``apply_model`` that ``family``'s model needs (none for the other families).

    * ``chroma``: ``guidance``, an argument Chroma's forward requires (its modulation embeds it), which ComfyUI's
      Chroma class sets to 0 for every row: Chroma samples with real CFG, not with Flux's distilled guidance.
    * ``lumina2``: ``num_tokens``, the caption length Lumina 2's NextDiT embeds. ComfyUI takes it from the text
      encoder's attention mask, which for Gemma's unpadded prompts covers every token; rows of different lengths
      batched together are repeated to one common length (:mod:`.padding`, as ComfyUI batches them), so that
      length is the one every row has.
    """
    if family == "chroma":
        return {"guidance": torch.zeros(batch, device=device)}
    if family == "lumina2":
        return {"num_tokens": int(cond.tokens.shape[1])}
    return {}


__all__ = ["apply_model_extras"]
