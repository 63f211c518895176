"""Training presets: quick / standard / thorough, and the settings that follow the model family.

A user picks how long to train; the preset picks every count that decides time and quality (steps, rows per step,
the sampler steps of the model's own latents, how many corpus prompts, how many dressed prompts, the harmful
targets' gain). The image size and the HGR's size come from the model family (:mod:`safecfg_core.families`), never
from the preset: an SDXL HGR trained on 512-pixel latents would learn pictures the model never draws at its size.

Cost model (what ``bench`` projects and the progress estimate assumes): a run samples the model's own latents once
per *source* prompt (``sample_steps`` denoiser passes of two rows each, CFG) and then makes ``steps`` training steps
of ``batch_size`` rows, each about one no-grad pass and one pass with gradients through the model. Dressed prompts
(:mod:`.augment`) reuse their source prompt's latents, so they cost encoding only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

from ..families import FAMILIES, normalize_family
from ..hgr import HGRConfig


@dataclass(frozen=True)
class Preset:
    """Everything a preset sets. ``None`` for a prompt count means every prompt of the split."""

    name: str
    title: str
    steps: int
    batch_size: int
    lr: float
    sample_steps: int
    target_gain: float
    clean_penalty: float
    max_clean: Optional[int]
    max_per_category: Optional[int]
    augment_clean: int
    augment_harmful: int
    calibrate_broad: int
    max_calibration: Optional[int] = None  # plain clean calibration prompts (the corpus' split has 235)
    max_heldout_clean: Optional[int] = None  # held-out prompts the report judges on (549 clean, 101 per category)
    max_heldout_per_category: Optional[int] = None

    def latent_prompts(self, n_categories: int, n_clean: int = 1956, n_per_category: int = 357) -> int:
        """Prompts whose latents are sampled (the corpus' train split by default; dressed prompts reuse these)."""
        clean = n_clean if self.max_clean is None else min(n_clean, self.max_clean)
        per = n_per_category if self.max_per_category is None else min(n_per_category, self.max_per_category)
        return clean + per * n_categories

    def projected_seconds(self, train_row_s: float, sample_step_s: float, n_categories: int,
                          n_clean: int = 1956, n_per_category: int = 357) -> Dict[str, float]:
        """Projected wall time of a run: ``train_row_s`` = seconds per training row (one step of batch b costs
        about ``b * train_row_s``), ``sample_step_s`` = seconds per sampler step of one prompt (both CFG rows)."""
        latents = self.latent_prompts(n_categories, n_clean, n_per_category) * self.sample_steps * sample_step_s
        train = self.steps * self.batch_size * train_row_s
        return {"latents_s": latents, "train_s": train, "total_s": latents + train}

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# Why these numbers:
# - steps x batch_size: the demo's shipped HGR converged in about 16k rows (500 steps x 32) from a warm start and
#   ~40k from zero; a real model's text space is wider, so `standard` sees ~13k rows and `thorough` ~77k.
#   `quick` (320 rows) only proves the whole path works on the user's model in a couple of minutes: its report
#   says whether it is good, and mostly it is not yet.
# - lr: 2e-3 is the trainer's default for short runs; long runs use 1e-3 (the demo recipe used 1e-3 from zero, 5e-4
#   for a warm-start fine-tune), which the cosine decay then brings to a tenth.
# - sample_steps: latents only need the model's composition, not a finished picture: 8 Euler steps already fix the
#   layout (6 for quick); 20 gives clean detail for the targets at low sigma; 30 is what users sample with.
# - target_gain: 1 is METHOD.md's target. On the demo, matching it at the harmful prompt's own latents did not carry
#   the whole trajectory away (gains 2.5-4 did); on real models that is not measured yet, so standard and
#   thorough take a moderate 2 and quick stays at the paper's 1.
# - clean_penalty 0.2: the demo's robustness recipe (keeps clean scores near zero; 0.05 left unseen clean styles
#   above the threshold there, docs/robustness.md).
# - prompt counts: the corpus' train split has 1956 clean and 357 prompts per category; dressed prompts (clean,
#   harmful with the same dressing on its rewrite, broad calibration) are about the demo recipe's proportions
#   (2000 / 1500 / 1200 dressed for 600 / 1800 plain prompts), scaled to each preset's prompt counts.
# - quick also caps the calibration and held-out prompts: in ComfyUI every prompt is encoded on its own, and on a
#   CPU the ~1,000 encodings of the full splits cost more than the quick training itself. Its report then says less
#   (a few dozen held-out prompts per side) but still says whether the path works.
PRESETS: Dict[str, Preset] = {p.name: p for p in (
    Preset("quick", "quick: checks the path (minutes on a GPU; about 2 min for the CPU demo model)", steps=40,
           batch_size=8, lr=2e-3, sample_steps=6, target_gain=1.0, clean_penalty=0.2, max_clean=32,
           max_per_category=12, augment_clean=24, augment_harmful=12, calibrate_broad=24, max_calibration=64,
           max_heldout_clean=64, max_heldout_per_category=24),
    Preset("standard", "standard: a usable HGR (well under an hour on one GPU for SD1.5)", steps=800, batch_size=16,
           lr=2e-3, sample_steps=20, target_gain=2.0, clean_penalty=0.2, max_clean=800, max_per_category=200,
           augment_clean=800, augment_harmful=600, calibrate_broad=400),
    Preset("thorough", "thorough: every corpus prompt, long training (hours on one GPU; use torchrun for more)",
           steps=2400, batch_size=32, lr=1e-3, sample_steps=30, target_gain=2.0, clean_penalty=0.2, max_clean=None,
           max_per_category=None, augment_clean=2000, augment_harmful=1500, calibrate_broad=1200),
)}
DEFAULT_PRESET = "standard"


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a ValueError naming the choices otherwise."""
    key = str(name).strip().lower()
    if key not in PRESETS:
        raise ValueError(f"No training preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    return PRESETS[key]


def family_image_size(family: Optional[str]) -> Tuple[int, int]:
    """The (width, height) the model draws at by default: its family's size; 1024x1024 for an unknown family (the
    size of every recent family; a user with another model sets width and height on the advanced node)."""
    fam = FAMILIES.get(normalize_family(family) or "")
    return fam.image_size if fam is not None else (1024, 1024)


def check_image_side(label: str, pixels: int) -> None:
    """Refuse a training image side the VAE could never make: the latent is 1/8 of the image."""
    if pixels < 16 or pixels % 8:
        raise ValueError(f"{label} {pixels}: use a multiple of 8 of at least 16 (pixels).")


def training_image_size(family: Optional[str], width: Optional[int] = None,
                        height: Optional[int] = None) -> Tuple[int, int]:
    """The (width, height) of the training latents: the family's size (:func:`family_image_size`) where ``width`` or
    ``height`` is None or 0. A smaller size saves memory and time, but the model's pictures at it are less like the
    ones it draws at its own size, which are what the HGR learns to redirect."""
    family_w, family_h = family_image_size(family)
    for label, pixels in (("training image width", width), ("training image height", height)):
        if pixels:
            check_image_side(label, pixels)
    return int(width or family_w), int(height or family_h)


def family_hgr_config(family: Optional[str], token_dim: int, pooled_dim: int) -> HGRConfig:
    """The HGR shape for this model: its family's preset when the widths agree, else the default net for these
    widths (a model the family table does not know, or a fine-tune with another text encoder)."""
    fam = FAMILIES.get(normalize_family(family) or "")
    if fam is not None and fam.token_dim == token_dim:
        return HGRConfig.for_family(fam.name, pooled_dim=pooled_dim)
    return HGRConfig(token_dim=token_dim, pooled_dim=pooled_dim, model_family="unknown")


__all__ = ["DEFAULT_PRESET", "PRESETS", "Preset", "check_image_side", "family_hgr_config", "family_image_size",
           "get_preset", "training_image_size"]
