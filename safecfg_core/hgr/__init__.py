"""The Harmful Guidance Redirector: the network (:mod:`.net`) and its file format (:mod:`.header`, :mod:`.bundle`).

``from safecfg_core.hgr import HGRBundle, HGRConfig, ...`` is the public way in; the submodules are the layout.
"""
from .bundle import HGRBundle, HGRMeta, atomic_save_safetensors, load_with_extras, read_training_record
from .header import FORMAT_NAME, FORMAT_VERSION, TRAIN_STATE_PREFIX, WEIGHT_PREFIX
from ..families import KNOWN_FAMILIES, guess_family, normalize_family  # the one family table; re-exported
from .net import MAX_PARAMETERS, SIZE_LIMITS, HarmfulGuidanceRedirector, HGRConfig, format_parameter_count

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "KNOWN_FAMILIES",
    "MAX_PARAMETERS",
    "SIZE_LIMITS",
    "TRAIN_STATE_PREFIX",
    "WEIGHT_PREFIX",
    "HGRConfig",
    "HarmfulGuidanceRedirector",
    "HGRMeta",
    "HGRBundle",
    "atomic_save_safetensors",
    "format_parameter_count",
    "guess_family",
    "load_with_extras",
    "normalize_family",
    "read_training_record",
]
