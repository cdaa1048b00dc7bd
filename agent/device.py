"""Which torch device runs the agent: CUDA whenever it is present, and always logged.

DESIGN.md / SPEC.md: never fall back to CPU silently on a GPU machine. Asking for
``cuda`` where none exists is a user error, not a quiet downgrade.
"""

from __future__ import annotations

import logging

import torch

from datasets.errors import ParameterError

__all__ = ["pick_device"]

log = logging.getLogger(__name__)


def pick_device(requested: str | None = None) -> torch.device:
    """The device to run on.

    Parameters
    ----------
    requested : "auto" / None (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N"

    Returns
    -------
    torch.device, after logging which one runs (and a warning when CPU is chosen
    explicitly although CUDA is present).
    """
    req = "auto" if requested in (None, "", "auto") else str(requested)
    has_cuda = torch.cuda.is_available()
    if req == "auto":
        dev = torch.device("cuda" if has_cuda else "cpu")
    elif req.startswith("cuda"):
        if not has_cuda:
            raise ParameterError(f"device {req!r} requested but torch sees no CUDA device")
        dev = torch.device(req)
    elif req == "cpu":
        dev = torch.device("cpu")
        if has_cuda:
            log.warning("device: CPU chosen explicitly although CUDA is available (%s)", torch.cuda.get_device_name(0))
    else:
        raise ParameterError(f"unknown device {req!r}; use auto, cpu or cuda[:N]")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    log.info("device: %s (%s)", dev, name)
    return dev
