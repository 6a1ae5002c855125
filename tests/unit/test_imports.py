"""No import cycle anywhere in queuectl, at module level or inside functions.

Every module is parsed with `ast`; every import of a queuectl module is an edge,
wherever it stands (imports under `if TYPE_CHECKING:` excepted: they never run).  An
import names the module it loads: `from queuectl.cli import render` is an edge to
queuectl.cli.render, `from queuectl import __version__` one to queuectl.  The graph
must have no cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import queuectl

ROOT = Path(queuectl.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of the tree but those under `if TYPE_CHECKING:` (their `else:` runs)."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for node in child.orelse:
                yield node
                yield from _nodes(node)
            continue
        yield child
        yield from _nodes(child)


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The queuectl modules the module `name` (at `path`) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(_existing(alias.name, known) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in known else _existing(base, known))
    return {t for t in targets if t and t != name}


def _existing(dotted: str, known: set[str]) -> str:
    """The longest prefix of `dotted` that is a queuectl module ("" if none)."""
    parts = dotted.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return ""


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imported(name, path, known) for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle as its modules in order (the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_the_graph_sees_imports_inside_functions_and_skips_type_checking() -> None:
    edges = graph()
    assert "queuectl.cli.fast_enqueue" in edges["queuectl.cli"]  # inside main's helper
    assert "queuectl.api" in edges["queuectl"]  # inside __getattr__
    assert "queuectl.cli.enqueue_options" in edges["queuectl.cli.fast_enqueue"]


def test_find_cycle_names_the_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_queuectl() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _modules_loaded_by(tmp_path: Path, *args: str) -> set[str]:
    """The modules a real `queuectl ARGS` process had loaded when it exited (0)."""
    import json
    import subprocess
    import sys

    from tests.helpers import clean_env

    out = tmp_path / "modules.json"
    probe = (
        "import atexit, json, runpy, sys\n"
        f"atexit.register(lambda: open({str(out)!r}, 'w').write(json.dumps(sorted(sys.modules))))\n"
        "sys.argv = ['queuectl', *sys.argv[1:]]\n"
        "runpy.run_module('queuectl', run_name='__main__')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe, *args], env=clean_env(), capture_output=True, timeout=60
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return set(json.loads(out.read_text()))


def test_a_worker_loads_no_library_of_the_operations_commands(tmp_path: Path) -> None:
    """A real `worker run --burst` (which also runs a recovery pass at start-up) with a
    schedule that is not due: the cron, metrics and terminal libraries stay unloaded,
    rich too when it is installed (structlog would import it)."""
    import subprocess
    import sys

    from tests.helpers import clean_env

    home = tmp_path / "home"
    home.mkdir()
    env = clean_env()
    base = [sys.executable, "-m", "queuectl", "--home", str(home)]
    add = subprocess.run([*base, "schedule", "add", "y", "0 0 1 1 *", "true"], env=env, capture_output=True)
    assert add.returncode == 0, add.stderr
    loaded = _modules_loaded_by(tmp_path, "--home", str(home), "worker", "run", "--burst")
    assert "queuectl.worker" in loaded and "structlog" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("cronsim", "prometheus_client", "rich", "http")}


def test_a_mutating_command_seals_its_change_without_loading_structlog(tmp_path: Path) -> None:
    """`config set` seals its note into the audit trail and appends it, in the same
    text the workers write, without importing structlog (about 40 ms a command)."""
    import json

    from queuectl.trail import line_text

    home = tmp_path / "home"
    home.mkdir()
    loaded = _modules_loaded_by(tmp_path, "--home", str(home), "config", "set", "backoff_base", "3")
    assert "queuectl.trail" in loaded and "structlog" not in loaded
    (line,) = [ln for f in sorted((home / "logs").glob("audit-*.jsonl")) for ln in f.read_text().splitlines()]
    event = json.loads(line)
    assert event["event"] == "config_set" and line == line_text(event)
