"""What the tests of the lab checks share: run a check quietly, and assert the hint a wrong answer gets."""
from __future__ import annotations


def run(check, *answers):
    """The check's result for ``answers``, without printing its line."""
    return check(*answers, quiet=True)


def assert_hint(result, *words):
    """A wrong answer fails with a hint (never a traceback from inside the package) naming ``words``."""
    text = result.text()
    assert not result.passed, text
    assert "idea:" in text
    assert "Traceback" not in text
    for w in words:
        assert w in text, text
