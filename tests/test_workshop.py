"""The workshop kit: slides export offline without touching the lessons; the Binder
(repo2docker) files agree with the package, and the package installs offline; the guides'
links and commands exist."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKSHOP = REPO / "docs" / "workshop"
LESSON = REPO / "notebooks" / "00_welcome.ipynb"
CONDA_TO_PIP = {"pytorch": "torch"}

# Run Python with every network connection refused: the export must work offline.
OFFLINE = """
import socket, sys
def refuse(*args, **kwargs):
    raise OSError("network access is refused in this test")
socket.socket.connect = refuse
socket.create_connection = refuse
sys.argv = sys.argv[1:]
import runpy
if sys.argv[0].endswith(".py"):
    runpy.run_path(sys.argv[0], run_name="__main__")
else:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def offline(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-c", OFFLINE, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def load_slides_tool():
    spec = importlib.util.spec_from_file_location("make_slides", REPO / "tools" / "make_slides.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------
# Slides
# ---------------------------------------------------------------------------------------
def test_slide_roles_follow_the_lesson_layout():
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    tool = load_slides_tool()
    nb = new_notebook(cells=[
        new_markdown_cell("# Title"), new_markdown_cell("---\n## 1. Setup"), new_code_cell("x = 1"),
        new_markdown_cell("### A sub-section"), new_markdown_cell("Some text."),
        new_markdown_cell("<details><summary>Hint</summary>\n\nuse copy_\n</details>"),
    ])
    deck = tool.with_slide_metadata(nb)
    roles = [c.metadata["slideshow"]["slide_type"] for c in deck.cells]
    assert roles == ["slide", "slide", "-", "subslide", "-", "notes"]
    assert "slideshow" not in nb.cells[1].metadata  # the original is untouched
    talk = tool.with_slide_metadata(nb, keep_code=False)
    assert talk.cells[2].metadata["slideshow"]["slide_type"] == "skip"


def test_make_slides_exports_offline_and_leaves_the_lesson_alone(tmp_path):
    before = LESSON.read_bytes()
    r = offline("tools/make_slides.py", str(LESSON), "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    deck = tmp_path / "00_welcome.slides.html"
    html = deck.read_text(encoding="utf-8")
    assert "Reveal.initialize" in html and "reveal.js" in html
    sections = sum(1 for line in LESSON.read_text().splitlines() if re.search(r'"(---\\n)?## ', line))
    assert html.count("<section") >= sections >= 3
    assert "Welcome to CUDA Graph Lab" in html
    assert LESSON.read_bytes() == before


def test_plain_nbconvert_slides_export_offline(tmp_path):
    before = LESSON.read_bytes()
    r = offline("nbconvert", "--to", "slides", str(LESSON), "--SlidesExporter.reveal_scroll=True",
                "--output-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    html = (tmp_path / "00_welcome.slides.html").read_text(encoding="utf-8")
    assert "Reveal.initialize" in html
    assert LESSON.read_bytes() == before


# ---------------------------------------------------------------------------------------
# Binder (repo2docker)
# ---------------------------------------------------------------------------------------
def load_toml(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        try:
            import tomli as tomllib
        except ImportError:
            from pip._vendor import tomli as tomllib
    with path.open("rb") as f:
        return tomllib.load(f)


def requirement(text: str) -> tuple[str, str]:
    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*", text)
    assert match, text
    return re.sub(r"[-_.]+", "-", match.group(1)).lower(), match.group(3).replace(" ", "")


def test_postbuild_installs_the_package():
    post = REPO / "binder" / "postBuild"
    assert post.is_file()
    assert post.stat().st_mode & stat.S_IXUSR, "repo2docker runs postBuild only if it is executable"
    text = post.read_text()
    assert text.startswith("#!/bin/bash") and "set -euo pipefail" in text
    commands = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert any(re.search(r"\bpip install\b.*--no-deps.*-e \.$", c) for c in commands), commands


def conda_dependencies(path: Path) -> dict:
    yaml = pytest.importorskip("yaml")
    env = yaml.safe_load(path.read_text())
    deps = [d for d in env["dependencies"] if isinstance(d, str)]
    return env, dict(requirement(d.replace("=", "==", 1) if re.fullmatch(r"[\w-]+=[\d.]+", d) else d) for d in deps)


def test_binder_environment_names_the_package_dependencies():
    env, conda = conda_dependencies(REPO / "binder" / "environment.yml")
    assert env["channels"] == ["conda-forge"]
    assert not [d for d in env["dependencies"] if isinstance(d, dict)], \
        "the package is installed by postBuild, not by a pip: section"
    pyproject = load_toml(REPO / "pyproject.toml")["project"]
    for name, spec in (requirement(d) for d in pyproject["dependencies"]):
        candidates = [c for c in ({v: k for k, v in CONDA_TO_PIP.items()}.get(name), name, f"{name}-python") if c]
        found = [c for c in candidates if c in conda]
        assert found, f"{name} missing from binder/environment.yml"
        assert conda[found[0]] == spec, f"{found[0]}: binder says {conda[found[0]]!r}, pyproject {spec!r}"
    assert "python" in conda and "pip" in conda
    minimum = pyproject["requires-python"].lstrip(">=")
    version = conda["python"].lstrip("=")
    assert tuple(map(int, version.split("."))) >= tuple(map(int, minimum.split(".")))


def test_binder_environment_matches_the_root_one():
    """With a binder/ folder repo2docker ignores the root environment.yml: the two lists must agree
    (apart from Python's pin, the root's `pip: -e .`, which binder/postBuild replaces, and the
    `test` and `site` extras, which a learner on Binder does not run)."""
    _, binder = conda_dependencies(REPO / "binder" / "environment.yml")
    _, root = conda_dependencies(REPO / "environment.yml")
    binder.pop("python")
    root.pop("python")
    extras = load_toml(REPO / "pyproject.toml")["project"]["optional-dependencies"]
    tools = {requirement(r)[0] for name in ("test", "site") for r in extras[name]}
    for name in tools:
        root.pop({v: k for k, v in CONDA_TO_PIP.items()}.get(name, name), None)
        root.pop(f"{name}-python", None)
    assert binder == root


def test_binder_environment_comments_every_dependency():
    for raw in (REPO / "binder" / "environment.yml").read_text().splitlines():
        if raw.startswith("  - ") and not raw.startswith("  - conda-forge"):
            assert "  # " in raw, f"no comment saying why: {raw!r}"


def test_the_package_installs_offline(tmp_path):
    """`pip install --no-deps -e .`, as postBuild runs it, on a copy of the package (offline, dry run)."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "graphlab_utils", tmp_path / "graphlab_utils",
                    ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                        "--dry-run", "-e", str(tmp_path)], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Would install cuda-graph-lab" in r.stdout


# ---------------------------------------------------------------------------------------
# The guides
# ---------------------------------------------------------------------------------------
# (links of the guides: tests/test_links.py checks every page's)


def test_the_commands_the_guide_names_exist():
    from graphlab_utils import cli

    text = (WORKSHOP / "README.md").read_text()
    for command in set(re.findall(r"\bgraphlab (\w[\w-]*)", text)):
        assert command in cli.COMMANDS, f"`graphlab {command}` is not a command"
    for tool in re.findall(r"\b(tools/[\w/]+\.py)\b", text):
        assert (REPO / tool).is_file(), tool
    for stem in set(re.findall(r"\b(?:notebooks|labs|solutions)/(\d\d_\w+)\.ipynb", text)):
        assert any((REPO / folder / f"{stem}.ipynb").is_file() for folder in ("notebooks", "solutions")), stem
