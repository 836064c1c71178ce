"""pytest hooks for the notebook tests (nbval) run by `make test`.

nbval compares every stored output with the fresh one. What a cell writes to stderr
(library warnings, progress bars) differs between PyTorch versions and between the GPU
and the simulator, so it is not part of the contract: stderr is left out of the
comparison. Unit-test hooks live in tests/conftest.py.
"""


def pytest_collectstart(collector):
    try:
        from nbval.plugin import IPyNbFile
    except ImportError:  # nbval not installed: no notebook tests to adjust
        return
    if isinstance(collector, IPyNbFile) and "stderr" not in collector.skip_compare:
        collector.skip_compare = tuple(collector.skip_compare) + ("stderr",)
