"""``python -m safecfg_core bench``: what SafeCFG costs next to plain CFG and the two baselines.

In ONE process, with interleaved repetitions (every repetition runs every method once, in a rotating order, so
drift in clock speed or load hits all methods alike), it times complete sampling runs (Euler, ``--steps`` steps,
batch 1, ComfyUI's ``normal`` schedule) of

* ``cfg``: plain CFG (2 model passes per step, batched in one call);
* ``safecfg``: SafeCFG with an HGR of the size shipped for the model family (``HGRConfig.for_family``); the HGR
  runs once per prompt inside the timed region, then CFG with ``u*`` (2 passes per step);
* ``negprompt``: CFG with the concept texts as the negative prompt (2 passes per step);
* ``sld``: SLD-style safety guidance, MEDIUM preset scaled to the step count (3 passes per step, one call);

and prints medians, spread (interquartile range), each method's ratio to plain CFG, the HGR's own time per prompt,
parameter counts and peak memory (``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the process' peak
resident set size, reset before each method through ``/proc/self/clear_refs`` where Linux allows it). It then
times HGR training (``safecfg_core.train.train_hgr``): prompts per second, denoiser rows per second, peak memory.

Models (``--models``):

* ``demo``: the embedded demo world's denoiser (``safecfg_core.demo.world.load_demo_world``; when that is not
  available, the demo-world architecture ``DemoDiT`` with random weights, and the table says so). 4x8x8 latents.
* ``sd15``, ``sdxl``: ComfyUI's own ``UNetModel`` built with the real SD1.5 / SDXL configurations (random init,
  ``--dtype``, default fp16 on CUDA) at 512x512 / 1024x1024 (latents 64x64 / 128x128). ComfyUI is imported from
  ``--comfyui PATH`` or ``$COMFYUI_PATH``; ``bench/comfy_unet.py`` is the only place in ``safecfg_core`` that touches
  ComfyUI, only when these models are asked for, and only for the UNet class (the library itself never imports
  ComfyUI). Conditionings are random tensors of the family's shapes (the text encoder is not part of sampling time);
  SDXL's ADM vector ``y`` is the pooled vector followed by zeros for the size embeddings.

* ``sd3``, ``qwen_image``, ``wan21``, ``wan22``, ``chroma``, ``lumina2``, ``hidream``: what ComfyUI builds for a
  checkpoint of the family (SD3.5 Large, Qwen-Image, Wan 2.1 14B t2v, Wan 2.2 TI2V 5B, Chroma, Lumina Image 2.0,
  HiDream-I1 Full, whose Llama-3.1 states are random too): the released checkpoint's key shapes through
  ComfyUI's own model detection, random init (bf16 by default on CUDA), run through ``BaseModel.apply_model`` with
  ComfyUI's ``model_sampling`` as the schedule, at the family's usual size (``bench/comfy_dit.py``).

``--quick`` is for CI: a tiny demo-architecture network (and, for the ComfyUI models, tiny configs of the same
classes at 8x8 latents), 3 steps, 2 repetitions, 2 training steps. After training, the report projects the wall
time of each training preset (``safecfg_core.train.presets``) from the measured CFG step and training row.

Modules: ``cli`` (options, main loop), ``models`` (the demo model), ``comfy_unet`` (SD1.5/SDXL from ComfyUI, and the
one ComfyUI import), ``comfy_dit`` (the DiT families), ``time_sampling`` and ``time_training`` (what is timed),
``measure`` (memory, quantiles), ``projection`` (preset wall times), ``report`` (the table).
"""
from __future__ import annotations

from .cli import COMMAND, HELP, add_arguments, main, run

__all__ = ["COMMAND", "HELP", "add_arguments", "main", "run"]
