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


@pytest.fixture(scope="module")
def sim():
    """The simulator for one test module: installed at its start, removed at its end.

    Modules that test the simulator or the lab checks on it say
    `pytestmark = pytest.mark.usefixtures("sim")` (or take `sim` as an argument).
    """
    import graphlab_utils
    from graphlab_utils import simulator

    session = graphlab_utils.setup(backend="sim", quiet=True)
    yield session
    simulator.uninstall()
