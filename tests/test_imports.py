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
            "import kaecompress.fileio, kaecompress.codec.containers, kaecompress.codec.bitstream\n"
            "import kaecompress.codec.rangecoder, kaecompress.zoo, kaecompress.experiments.config\n"
            "import kaecompress.experiments.runs, kaecompress.exporters.manifest\n"
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)


# The package's floors, lowest first: a module imports from its own floor or lower ones only.
FLOORS = ["kaecompress kaecompress.errors kaecompress.fileio kaecompress.outputs kaecompress.web", "kaecompress.zoo",
          "kaecompress.codec", "kaecompress.runtime", "kaecompress.nn", "kaecompress.exporters",
          "kaecompress.experiments", "kaecompress.api", "kaecompress.evaluation", "kaecompress.cli"]


def _floor(module: str) -> int:
    for i, names in enumerate(FLOORS):
        for n in names.split():
            if module == n or (n != "kaecompress" and module.startswith(n + ".")):
                return i
    raise AssertionError(f"{module} has no floor")


def test_every_module_imports_only_its_floor_or_lower():
    upward = sorted(f"{m} -> {d}" for m, deps in _graph().items() for d in deps if _floor(d) > _floor(m))
    assert upward == []


def test_the_runtime_floors_never_import_torch():
    """codec, zoo and runtime (and what they stand on) import no training-side package, even inside a
    function: they are the runtime install."""
    heavy = {"torch", "torchvision", "onnx", "onnxscript", "safetensors", "yaml", "scipy", "matplotlib",
             "bjontegaard", "filelock"}
    found = []
    for name, path in _modules().items():
        if _floor(name) > FLOORS.index("kaecompress.runtime"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            roots = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{name}: {r}" for r in roots if r.split(".")[0] in heavy]
    assert found == []
