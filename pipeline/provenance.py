"""Where a row was measured, beyond what ``pipeline/measure/timing.py: provenance`` records: the
CPU's model name (``platform.processor()`` is empty on Linux, leaving only "x86_64") and the git
commit of the code. Both are read once per process; a missing answer is ``None``, never an error
(a worker on a cluster runs from a copy of the code without ``.git``)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def cpu_model() -> str | None:
    """e.g. "AMD EPYC 7763 64-Core Processor", from /proc/cpuinfo (Linux only)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The checkout's commit (12 hex digits), "+dirty" when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(_ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(_ROOT), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if changed else head or None
