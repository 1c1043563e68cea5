"""Peak resident memory of this process over a stretch of work (Linux: VmHWM, reset via clear_refs).

>>> with PeakMemory() as pm:
...     _ = bytearray(50 * 2**20)
>>> pm.peak_mb is None or pm.peak_mb >= 50
True
"""

from __future__ import annotations

from pathlib import Path


def _status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _hwm_mb() -> float | None:
    return _status_mb("VmHWM")


def rss_mb() -> float | None:
    """Resident memory of this process now (None where the OS cannot tell)."""
    return _status_mb("VmRSS")


class PeakMemory:
    """``with PeakMemory() as pm: ...`` then ``pm.peak_mb`` (None where the OS cannot tell), and
    ``pm.grown_mb``: how far the peak rose above the resident memory at the start."""

    def __enter__(self) -> "PeakMemory":
        self.start_mb = rss_mb()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets the high-water mark to current RSS
            self.reset = True
        except OSError:
            self.reset = False
        self.peak_mb = None
        return self

    def __exit__(self, *exc) -> None:
        self.peak_mb = _hwm_mb() if self.reset else None
        self.grown_mb = None if self.peak_mb is None or self.start_mb is None else self.peak_mb - self.start_mb
