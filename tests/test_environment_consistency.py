"""pyproject.toml and environment.yml list the same packages; CI runs the README's command.

environment.yml is read with a small parser of its simple format (no PyYAML needed), so
the comments are seen too: every dependency carries one saying why the course needs it,
and the optional `gpu` extra (cuda-bindings) is present only as a commented-out line.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch", "playwright-python": "playwright"}
NOT_IN_PYPROJECT = {"python", "pip"}  # conda needs them; pip gets them from requires-python


def load_toml(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10: pip's vendored copy of the same parser
        try:
            import tomli as tomllib
        except ImportError:
            from pip._vendor import tomli as tomllib
    with path.open("rb") as f:
        return tomllib.load(f)


def split_requirement(text: str) -> tuple[str, str]:
    """'torch>=2.5,<2.15' -> ('torch', '>=2.5,<2.15'), name normalised (PEP 503)."""
    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*", text)
    assert match, f"cannot read requirement {text!r}"
    name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
    return name, match.group(3).replace(" ", "")


def parse_environment(path: Path) -> dict:
    """Parse environment.yml's simple layout: top-level keys, `- item  # comment` lists,
    and the nested `- pip:` list. Commented-out list items are kept apart."""
    data: dict = {"name": None, "channels": [], "dependencies": [], "pip": [], "commented": []}
    section = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.strip() or raw.lstrip().startswith("#") and not raw.lstrip().startswith("# -"):
            continue
        indent = len(raw) - len(raw.lstrip())
        line = raw.strip()
        if indent == 0:
            key, _, value = line.partition(":")
            section = key
            if key == "name":
                data["name"] = value.strip()
            continue
        if line.startswith("# - "):
            item, _, comment = line[len("# - "):].partition("  #")
            data["commented"].append((item.strip(), comment.strip()))
            continue
        assert line.startswith("- "), f"unexpected line in {path.name}: {raw!r}"
        item, _, comment = line[2:].partition("  #")
        item, comment = item.strip(), comment.strip()
        if item == "pip:":
            section = "pip"
            continue
        if section == "pip" and indent > 2:
            data["pip"].append((item, comment))
        elif section == "channels":
            data["channels"].append(item)
        else:
            section = "dependencies"
            data["dependencies"].append((item, comment))
    return data


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return load_toml(REPO / "pyproject.toml")


@pytest.fixture(scope="module")
def environment() -> dict:
    return parse_environment(REPO / "environment.yml")


def conda_requirements(environment) -> dict[str, str]:
    out = {}
    for item, _ in environment["dependencies"]:
        name, spec = split_requirement(item)
        if name in NOT_IN_PYPROJECT:
            continue
        out[CONDA_TO_PIP.get(name, name)] = spec
    return out


def test_same_packages_and_versions(pyproject, environment):
    pip_side = dict(split_requirement(r) for r in pyproject["project"]["dependencies"])
    # The conda environment installs the extras too, all but `gpu` (a commented-out line there).
    for extra, requirements in pyproject["project"].get("optional-dependencies", {}).items():
        if extra != "gpu":
            pip_side.update(split_requirement(r) for r in requirements)
    assert conda_requirements(environment) == pip_side


def test_python_version_matches(pyproject, environment):
    conda_python = dict(split_requirement(i) for i, _ in environment["dependencies"])["python"]
    assert conda_python == pyproject["project"]["requires-python"]


def test_gpu_extra_is_a_commented_line_with_the_same_spec(pyproject, environment):
    gpu = dict(split_requirement(r) for r in pyproject["project"]["optional-dependencies"]["gpu"])
    assert gpu == {"cuda-bindings": ">=12.6"}
    active = {split_requirement(i)[0] for i, _ in environment["dependencies"]}
    assert "cuda-bindings" not in active
    commented = dict(split_requirement(i) for i, _ in environment["commented"])
    assert commented == gpu


def test_conda_forge_only(environment):
    assert environment["channels"] == ["conda-forge"]
    for item, _ in environment["dependencies"]:
        assert "::" not in item, f"{item}: no channel prefixes (PyTorch's own channel is retired)"


def test_every_dependency_says_why(environment):
    for item, comment in environment["dependencies"] + environment["pip"] + environment["commented"]:
        assert comment, f"environment.yml: {item} has no comment saying why the course needs it"


def test_project_itself_is_a_pip_entry(environment):
    assert [item for item, _ in environment["pip"]] == ["-e ."]
    assert ("pip" in {split_requirement(i)[0] for i, _ in environment["dependencies"]})


def test_package_metadata(pyproject):
    project = pyproject["project"]
    assert project["requires-python"] == ">=3.10"
    assert project["scripts"] == {"graphlab": "graphlab_utils.cli:main"}
    package_data = pyproject["tool"]["setuptools"]["package-data"]["graphlab_utils"]
    for pattern in package_data:  # every data file the package ships is named, and exists
        assert list((REPO / "graphlab_utils").glob(pattern)), f"package-data {pattern!r} matches no file"
    assert "simulator/data/*.json" in package_data  # the cost model's calibration

    torch_spec = dict(split_requirement(r) for r in project["dependencies"])["torch"]
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(torch_spec)
    for version in ("2.11.0", "2.11.0+cu130", "2.13.0", "2.13.0+cpu", "2.14.1"):
        assert spec.contains(version), version
    assert not spec.contains("2.4.1")

def test_test_tools_are_not_runtime_dependencies(pyproject):
    """A learner's install (Colab, Binder, `pip install`) does not pull the test tools."""
    runtime = {split_requirement(r)[0] for r in pyproject["project"]["dependencies"]}
    test = {split_requirement(r)[0] for r in pyproject["project"]["optional-dependencies"]["test"]}
    assert test == {"pytest", "pytest-xdist", "nbval", "playwright"}
    assert not runtime & test


# --- CI runs exactly the README's test command ----------------------------------------


def readme_first_code_block() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no fenced code block"
    return [line.split("#", 1)[0].strip() for line in match.group(1).splitlines()]


def test_readme_starts_with_lab_and_test_commands():
    commands = [c for c in readme_first_code_block() if c]
    assert commands == ["make lab", "make test"]


def test_ci_runs_the_readme_test_command():
    ci = REPO / ".ci" / "run"
    assert ci.stat().st_mode & stat.S_IXUSR, ".ci/run must be executable"
    lines = [line.strip() for line in ci.read_text().splitlines()]
    assert lines[0].startswith("#!") and "bash" in lines[0]
    commands = [
        line for line in lines[1:]
        if line and not line.startswith("#")
        and not line.startswith("set ") and not line.startswith("cd ")
        and not line.startswith("if ! command -v chromium")  # installs the browser test's Chromium
    ]
    readme_test = [c for c in readme_first_code_block() if c.startswith("make test")]
    assert readme_test == ["make test"]
    assert commands == readme_test


def test_makefile_has_the_readme_targets():
    makefile = (REPO / "Makefile").read_text()
    for target in ("env", "lab", "test", "test-gpu", "labs", "doctor"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target
    # the GPU command runs the GPU verification and writes its report
    assert "tools/gpu/test_gpu.py" in makefile
    assert os.path.exists(REPO / "tests" / "nbval_sanitize.cfg")
