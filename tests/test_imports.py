"""The package's layers: no import circles (function-level imports included), the library never imports
the CLI, and the modules that reading and checking files need load without torch."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGES = {"kaecompress": "kaecompress", "cli": "kaecompress.cli", "exporters": "kaecompress.exporters"}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if package == "kaecompress" and parts[0] in ("cli", "exporters"):
                continue
            name = ".".join([package, *parts])
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of ours that `name` imports anywhere in its file (at module level or inside a function)."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # `from package import module` imports the module (its package's __init__ runs first, but an
            # __init__ that re-exports its own modules is their facade, not a layer of its own)
            subs = [f"{base}.{a.name}" for a in node.names]
            targets = subs if all(s in known for s in subs) else [base] + subs
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def test_the_import_graph_reads_our_modules():
    graph = _graph()
    assert "kaecompress.fileio" in graph["kaecompress.codec.containers"]
    assert "kaecompress.codec.containers" in graph["kaecompress.codec.bitstream"]
    assert "kaecompress.experiments.sweep" in graph["kaecompress.cli.experiments"]  # an import inside a function


def test_no_import_circles():
    graph = _graph()
    state: dict[str, str] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert circles == []


def test_the_library_never_imports_the_cli():
    graph = _graph()
    upward = {m: sorted(d for d in deps if d.startswith("kaecompress.cli"))
              for m, deps in graph.items() if not m.startswith("kaecompress.cli")}
    assert {m: d for m, d in upward.items() if d} == {}


def test_reading_and_checking_files_needs_no_torch():
    code = ("import sys\n"
            "import kaecompress.fileio, kaecompress.codec.containers, kaecompress.codec.bitstream, kaecompress.codec.rangecoder\n"
            "import kaecompress.zoo, kaecompress.experiments.config, kaecompress.experiments.runs, kaecompress.exporters.manifest\n"
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)
