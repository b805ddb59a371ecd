"""``docs/architecture.md`` stays true: its examples run against the code as it is, and the layout keeps its rules.

Every fenced ``python`` block of the page is executed on its own in a fresh module named ``__main__`` (as if the block
were saved and run as a script, so a config ``_target_`` can name ``__main__.<class>``). It runs in a folder whose
``bundles/`` is the repository's, with ``tempfile`` writing under ``tmp_path``. Its line numbers are the page's, so a
failing block's traceback points at the page. The blocks pass ``ruff check`` and ``ruff format`` like the package's
code. Every ``json`` block must parse; ``diff``, ``text`` and ``mermaid`` blocks are not run. The page's rules 1 and 2
(no library module imports the run layer; no import cycle) are checked on the package's sources, imports inside
functions included.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tempfile
import types
from functools import cache
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

import mskd

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "architecture.md"
PACKAGE = Path(mskd.__file__).resolve().parent
RUN_LAYER = frozenset({"bundle", "workflows", "validation", "predict", "export", "experiment", "demo", "cli"})
_FENCE = re.compile(r"^```(\S*)\s*$")


def blocks(language: str) -> list[tuple[int, str]]:
    """``(line of the opening fence, code)`` of every fenced block of ``language`` in the page."""
    found, current, start, lines = [], None, 0, []
    for number, line in enumerate(PAGE.read_text(encoding="utf-8").splitlines(), start=1):
        fence = _FENCE.match(line)
        if fence and current is None:
            current, start, lines = fence.group(1), number, []
        elif fence and not fence.group(1):
            if current == language:
                found.append((start, "\n".join(lines) + "\n"))
            current = None
        elif current is not None:
            lines.append(line)
    assert current is None, f"{PAGE}:{start}: a code block is not closed"
    return found


PYTHON = blocks("python")
JSON = blocks("json")


def test_page_holds_the_picture_and_an_example_per_section():
    text = PAGE.read_text(encoding="utf-8")
    assert blocks("mermaid"), "the picture of the layers and the data flow"
    assert "](figures/architecture.png)" in text
    assert (PAGE.parent / "figures" / "architecture.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    where = text.split("## Where a new thing goes", 1)[1].split("### Everything else", 1)[0]
    sections = where.split("\n### ")[1:]
    assert len(sections) >= 4, "a loss term, a network, a handler, a dataset format"
    for section in sections:
        assert "\n```python\n" in section, f"the section '{section.splitlines()[0]}' has no runnable example"


@pytest.mark.parametrize("start, code", PYTHON, ids=[f"line{start}" for start, _ in PYTHON])
def test_python_block_runs(start, code, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "bundles").symlink_to(ROOT / "bundles", target_is_directory=True)
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    module = types.ModuleType("__main__")
    module.__file__ = str(PAGE)
    monkeypatch.setitem(sys.modules, "__main__", module)
    exec(compile("\n" * start + code, str(PAGE), "exec"), module.__dict__)


def test_python_blocks_keep_the_house_style(tmp_path):
    pytest.importorskip("ruff")
    for start, code in PYTHON:
        (tmp_path / f"architecture_md_line{start}.py").write_text(code, encoding="utf-8")
    config = str(ROOT / "pyproject.toml")
    for command in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--config", config, str(tmp_path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"ruff {' '.join(command)} on the page's python blocks:\n{result.stdout}"


@pytest.mark.parametrize("start, text", JSON, ids=[f"line{start}" for start, _ in JSON])
def test_json_block_parses(start, text):
    assert isinstance(json.loads(text), dict), f"{PAGE}:{start}: a bundle entry is a JSON object"


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("mskd", *path.relative_to(PACKAGE).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` imports, at its top or inside a function."""
    here = [*name.split("."), "__init__"] if path.name == "__init__.py" else name.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            parent = here[: len(here) - node.level] if node.level else []
            base = ".".join([*parent, node.module] if node.module else parent)
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return (found & modules.keys()) - {name}


@cache
def _graph() -> dict[str, frozenset[str]]:
    """Module name -> the package's modules it imports."""
    modules = _modules()
    return {name: frozenset(_imports(name, path, modules)) for name, path in modules.items()}


def _layer(name: str) -> str:
    """The top-level module or folder of ``name`` (``""`` for the package itself)."""
    return name.split(".")[1] if "." in name else ""


def test_imports_of_the_package_are_resolved():
    graph = _graph()
    assert graph["mskd.cli"] >= {"mskd.bundle", "mskd.workflows"}
    assert "mskd.data.datalist" in graph["mskd.data.transforms"]  # `from .datalist import ...`
    assert "mskd.engines.distillation_trainer" in graph["mskd.handlers.nonfinite"]


def test_library_never_imports_the_run_layer():
    wrong = {
        name: sorted(used)
        for name, imported in _graph().items()
        if _layer(name) not in RUN_LAYER
        if (used := {u for u in imported if _layer(u) in RUN_LAYER})
    }
    assert not wrong, f"library modules import the run layer: {wrong}"


def test_no_import_cycle():
    try:
        list(TopologicalSorter(_graph()).static_order())
    except CycleError as e:
        pytest.fail(f"import cycle, each module importing the next: {' -> '.join(reversed(e.args[1]))}")
