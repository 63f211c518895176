"""Model-level alignment (docs/METHOD.md, "Model-level alignment (LoRA)"): bake SafeCFG into the denoiser as a LoRA
that ComfyUI's stock LoRA loaders apply, judged by the HGR alone, from prompts without labels.

Layout: :mod:`.prompts` (the unlabelled prompt list), :mod:`.lora` (adapter, install, ComfyUI file format),
:mod:`.targets` (judge, sample, targets), :mod:`.fit` (loss, loop, checkpoints), :mod:`.run` (one job),
:mod:`.setups` (the models the command knows). ``from safecfg_core.align import ...`` is the public way in.
"""
from .fit import FitConfig, FitProgress, FitResult, fit_lora
from .lora import COMFY_PREFIX, LoRA, adaptable_layers, applied, comfy_state_dict, load_lora, network_of, save_lora
from .prompts import LabelledPromptError, parse_prompt_lines, read_prompts
from .run import AlignConfig, AlignResult, align_model, sample_prompts_with
from .targets import AlignTargets, Teacher, Verdict, collect_targets

__all__ = ["AlignConfig", "AlignResult", "AlignTargets", "COMFY_PREFIX", "FitConfig", "FitProgress", "FitResult",
           "LabelledPromptError", "LoRA", "Teacher", "Verdict", "adaptable_layers", "align_model", "applied",
           "collect_targets", "comfy_state_dict", "fit_lora", "load_lora", "network_of", "parse_prompt_lines",
           "read_prompts", "sample_prompts_with", "save_lora"]
