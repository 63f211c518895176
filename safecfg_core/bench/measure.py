"""Measurement helpers of the benchmark: peak memory, quantiles and number formatting."""
from __future__ import annotations

import gc
import statistics
import sys
from typing import Any, Dict, Optional, Sequence

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels: CUDA runs asynchronously, so a clock read alone would miss them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_hwm_reset() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _proc_status_bytes(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss_hwm_bytes() -> Optional[int]:
    v = _proc_status_bytes("VmHWM")
    if v is not None:
        return v
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(kb) * (1 if sys.platform == "darwin" else 1024)
    except Exception:  # pragma: no cover
        return None


class PeakMemory:
    """Peak memory of what runs inside ``with``: CUDA allocator peak, or process peak RSS on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak: Optional[int] = None
        self.start: Optional[int] = None
        self.kind = "max_memory_allocated" if device.type == "cuda" else "peak RSS"
        self.reset_ok = True

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = int(torch.cuda.memory_allocated(self.device))
        else:
            self.start = _proc_status_bytes("VmRSS")
            self.reset_ok = _rss_hwm_reset()
            if not self.reset_ok:
                self.kind = "process peak RSS (not resettable here)"
        return self

    @property
    def increase(self) -> Optional[int]:
        """Peak minus what was in use when the measurement started (weights, torch itself)."""
        if self.peak is None or self.start is None:
            return None
        return max(0, self.peak - self.start)

    def __exit__(self, *exc: Any) -> None:
        sync(self.device)
        if self.device.type == "cuda":
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self.peak = _rss_hwm_bytes()


def fmt_bytes(n: Optional[int]) -> str:
    """``n`` bytes in MiB or GiB ("n/a" when unknown)."""
    if n is None:
        return "n/a"
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / (1 << 20):.1f} MiB"


def fmt_seconds(x: float) -> str:
    """``x`` seconds in ms below 10 s (the usual range of one demo run), else in s."""
    return f"{x * 1000:.1f} ms" if x < 10 else f"{x:.2f} s"


def quantiles(xs: Sequence[float]) -> Dict[str, float]:
    """Median, quartiles and range of ``xs`` (all equal to the one value when there is only one)."""
    xs = sorted(xs)
    if len(xs) == 1:
        return {"median": xs[0], "q1": xs[0], "q3": xs[0], "min": xs[0], "max": xs[0]}
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return {"median": statistics.median(xs), "q1": q[0], "q3": q[2], "min": xs[0], "max": xs[-1]}


def count_parameters(module: Any) -> int:
    params = getattr(module, "parameters", None)
    return int(sum(p.numel() for p in params())) if params is not None else 0

