"""The package layout holds: dependencies point down (the import-linter contract in pyproject.toml), no two
modules import each other even through others, and no module grows past what one job needs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
# Modules allowed past MAX_LINES, each with the reason its one job needs the room.
LONG_ON_PURPOSE = {
    "nurture/delivery/sender.py": "the send loop and its per-outcome records are one crash-safety argument",
    "nurture/subscribers/importer.py": "bulk enrollment: chunked writes and the timetables they need",
}
MAX_LINES = 500


def test_the_layers_contract_is_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative: the groups of modules that reach each other (cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(group)
    return groups


def test_the_cycle_finder_finds_a_cycle_through_a_third_module() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(edges) == [{"a", "b", "c"}]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    graph = grimp.build_graph("nurture", exclude_type_checking_imports=True)
    modules = {m for m in graph.modules if ".migrations" not in m}
    edges = {m: graph.find_modules_directly_imported_by(m) & modules for m in modules}
    assert strongly_connected(edges) == []


def test_modules_stay_small_unless_their_one_job_needs_the_room() -> None:
    too_long = {}
    for path in sorted((ROOT / "nurture").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if "/migrations/" in relative or relative in LONG_ON_PURPOSE:
            continue
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            too_long[relative] = lines
    assert too_long == {}


def test_every_package_says_what_its_modules_do() -> None:
    for init in (ROOT / "nurture").rglob("__init__.py"):
        if "migrations" in init.parts or init.parent.name == "nurture":
            continue
        text = init.read_text()
        modules = [p.stem for p in init.parent.glob("*.py") if p.stem not in {"__init__", "__main__"}]
        # Named as ``module``, or first on a line of a list or table.
        missing = [
            m
            for m in modules
            if f"``{m}``" not in text and f"{m}.py" not in text and not re.search(rf"(?m)^\W*{m}\b", text)
        ]
        assert missing == [], f"{init.relative_to(ROOT)} does not mention {missing}"
