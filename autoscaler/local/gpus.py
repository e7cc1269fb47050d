"""The local GPU inventory: which device indices are free for replicas to take."""

from __future__ import annotations

import shutil
import subprocess

from autoscaler.control import ports


class GpuPool:
    """The stack's GPUs: the local Capacity of control/ports.py."""

    def __init__(self, indices: list[int]) -> None:
        self._free = sorted(set(indices))
        self.total = len(self._free)

    @property
    def free(self) -> int:
        return len(self._free)

    def free_gpus(self, target: ports.RevisionTarget) -> int | None:
        return self.free if target.policy.gpus_per_replica else None

    def take(self, count: int) -> tuple[int, ...] | None:
        """`count` devices, or None when not that many are free."""
        if count > len(self._free):
            return None
        taken, self._free = tuple(self._free[:count]), self._free[count:]
        return taken

    def give_back(self, indices: tuple[int, ...]) -> None:
        self._free = sorted({*self._free, *indices})


def discover() -> list[int]:
    """Device indices nvidia-smi reports; none when it is absent or fails."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(line) for line in out.split() if line.strip().isdigit()]
