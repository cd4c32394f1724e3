"""The runtime's modules, and an encode and a decode run in-process, import none of the training install's
packages (they are installed in the training install, so this is where the check bites)."""

import json

from .conftest import BACKEND, EXAMPLES, TRAINING, python

TRAINING_ONLY = ("torch", "torchvision", "onnx", "safetensors", "numba", "scipy", "matplotlib", "yaml")

SCRIPT = """
import importlib, json, pkgutil, sys
training_only = set(sys.argv[1].split(","))
def loaded():
    return sorted({name.split(".")[0] for name in sys.modules} & training_only)
import kaecompress.runtime
modules = ["kaecompress", "kaecompress.codec", "kaecompress.zoo", "kaecompress.api", "kaecompress.cli.main"]
modules += [f"kaecompress.runtime.{m.name}" for m in pkgutil.iter_modules(kaecompress.runtime.__path__)]
for name in modules:
    importlib.import_module(name)
after_import = loaded()
from kaecompress.cli.main import main
for argv in json.loads(sys.argv[2]):
    sys.argv = ["kaec", *argv]
    try:
        main()
    except SystemExit as e:
        if e.code:
            sys.exit(f"kaec {' '.join(argv)}: exit {e.code}")
print(json.dumps({"modules": modules, "after_import": after_import, "after_coding": loaded()}))
"""


def test_runtime_modules_and_coding_import_no_training_package(tmp_path):
    backend = list(BACKEND) if TRAINING else []  # the runtime install: its default
    digit = EXAMPLES / "mnist-7.png"
    commands = [["models"],
                ["encode", digit, "-o", "default.kae"], ["decode", "default.kae", "-o", "default.png"],
                ["encode", digit, "-o", "context.kae", "--model", "mnist-q6", "--rdo", "2"],  # context model, rdo
                ["decode", "context.kae", "-o", "context.png"],
                ["encode", digit, "-o", "plain.kae", "--model", "mnist-kae-dec3"],  # .kae version 1
                ["encode", digit, "-o", "resized.npz", "--model", "mnist-kae-dec3", "--fit", "resize"],
                ["decode", "plain.kae", "resized.npz", "-o", "plain"]]
    argv = json.dumps([[*map(str, c), *(backend if c[0] != "models" else [])] for c in commands])
    r = python("-c", SCRIPT, ",".join(TRAINING_ONLY), argv, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout.splitlines()[-1])
    assert "kaecompress.runtime.shipped" in found["modules"]
    assert found["after_import"] == [] and found["after_coding"] == []
    for name in ("default.png", "context.png", "plain/plain.png", "plain/resized.png"):
        assert (tmp_path / name).is_file()
