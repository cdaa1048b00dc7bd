"""Device choice: CUDA whenever present, logged; asking for missing CUDA is an error."""

from __future__ import annotations

import logging

import pytest
import torch

from agent.device import pick_device
from datasets.errors import ParameterError


def test_auto_picks_cuda_when_available_and_logs(caplog):
    with caplog.at_level(logging.INFO, logger="agent.device"):
        dev = pick_device()
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert "device:" in caplog.text


def test_bad_requests():
    with pytest.raises(ParameterError, match="unknown device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ParameterError, match="no CUDA"):
            pick_device("cuda")
    assert pick_device("cpu").type == "cpu"
