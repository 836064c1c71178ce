"""Unit-test hooks: tests marked ``gpu`` are skipped when PyTorch sees no CUDA GPU."""

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU: PyTorch sees none here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
