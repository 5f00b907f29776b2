"""Import faiss with errors that say how to fix the environment.

``faiss-cpu`` and the GPU wheels (``faiss-gpu``, ``faiss-gpu-cu12``,
``faiss-gpu-cu11``) all install the same module ``faiss``; with two of them
installed, whichever was unpacked last wins silently. We refuse that case.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from types import ModuleType

__all__ = ["faiss_gpu_count", "import_faiss"]

logger = logging.getLogger(__name__)

CPU_DISTRIBUTIONS = ("faiss-cpu",)
GPU_DISTRIBUTIONS = ("faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11")


def _installed(distributions: tuple[str, ...]) -> list[str]:
    """Names of the given pip distributions that are installed."""
    found = []
    for name in distributions:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def import_faiss() -> ModuleType:
    """Return the ``faiss`` module.

    Returns:
        The imported ``faiss`` module (a CPU or a GPU build).

    Raises:
        ImportError: If faiss is missing, or if a CPU and a GPU distribution
            are both installed; the message is one line with the fix.
    """
    cpu, gpu = _installed(CPU_DISTRIBUTIONS), _installed(GPU_DISTRIBUTIONS)
    if cpu and gpu:
        both = ", ".join(cpu + gpu)
        raise ImportError(
            f"both a CPU and a GPU faiss build are installed ({both}): uninstall "
            f"one: they both install the module faiss (e.g. pip uninstall {cpu[0]})"
        )
    try:
        return importlib.import_module("faiss")
    except ImportError as error:
        raise ImportError(
            f"faiss is not importable ({error}): pip install 'rekd-ray[cpu]'  "
            "(or [gpu] on a CUDA machine)"
        ) from error


def faiss_gpu_count() -> int:
    """Number of GPUs faiss can use; 0 without faiss or a GPU build. Never raises."""
    try:
        faiss = import_faiss()
        if not hasattr(faiss, "StandardGpuResources"):
            return 0
        return int(faiss.get_num_gpus())
    except Exception as error:  # noqa: BLE001 - a probe must not fail the caller
        logger.debug("faiss GPU probe failed, assuming no GPU: %s", error)
        return 0
