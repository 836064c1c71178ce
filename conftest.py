"""pytest hooks for the notebook tests (nbval) run by `make test`.

nbval compares every stored output with the fresh one. Two kinds of output are not part of
the contract and are left out of the comparison:

* what a cell writes to stderr (library warnings, progress bars), which differs between
  PyTorch versions and between the GPU and the simulator;
* the records a lab check leaves for `graphlab check` (a display output whose only content is
  the JSON under `graphlab_utils.checks.core.RECORD_MIME`): the printed line beside it is what
  the learner reads, and it is compared.

Unit-test hooks live in tests/conftest.py.
"""

RECORD_MIME = "application/vnd.graphlab.check+json"  # graphlab_utils.checks.core.RECORD_MIME


def _is_check_record(output) -> bool:
    data = output.get("data") if hasattr(output, "get") else None
    return bool(data) and RECORD_MIME in data and not any(
        value for key, value in data.items() if key != RECORD_MIME)


def _without_records(compare):
    def compare_outputs(self, test, ref, skip_compare=None):
        return compare(self, [o for o in test if not _is_check_record(o)],
                       [o for o in ref if not _is_check_record(o)], skip_compare)

    compare_outputs.__wrapped__ = compare
    return compare_outputs


def pytest_configure(config):
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:  # nbval not installed: no notebook tests to adjust
        return
    if not hasattr(IPyNbCell.compare_outputs, "__wrapped__"):
        IPyNbCell.compare_outputs = _without_records(IPyNbCell.compare_outputs)


def pytest_collectstart(collector):
    try:
        from nbval.plugin import IPyNbFile
    except ImportError:  # nbval not installed: no notebook tests to adjust
        return
    if isinstance(collector, IPyNbFile) and "stderr" not in collector.skip_compare:
        collector.skip_compare = tuple(collector.skip_compare) + ("stderr",)
