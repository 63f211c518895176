"""safecfg_core: the ComfyUI-independent SafeCFG library (torch only).

Never imports ComfyUI. Modules import each other relatively so the package works both installed
(``import safecfg_core``) and vendored inside the ComfyUI node pack.
"""
from .conditioning import Cond, Denoiser, TextEncoder, TOKEN_CHUNK

__all__ = ["Cond", "Denoiser", "TextEncoder", "TOKEN_CHUNK"]
__version__ = "0.1.0"
