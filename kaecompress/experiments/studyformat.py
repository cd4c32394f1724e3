"""The research study's experiment format, read without executing anything.

    experiment_name: cnn-kae-01
    matrix: {trial: [1, 2], ks: [3, 7], outact: ["'sigmoid'", "None"]}
    globals: {SHAPE: (1, 28, 28), CODE_SIZE: 16}
    model: |
      from models import CNNKAE
      CNNKAE(shape=SHAPE, latent_dim=CODE_SIZE, channels=[32], kernel_size=${ks}, output_activation=${outact})
    train_set: mnist_dataset(shape=SHAPE, train=True)
    validation_set: mnist_dataset(shape=SHAPE, train=False)
    batch_size: 64
    learnrate: 3e-4
    optimizer: Adam
    loss_function: l2
    max_inputs: 300_000
    trainer: AutoencoderTrainer
    feature_loss_weight: 0

The Python-looking fields are parsed with `ast` and only these forms pass: import lines (ignored), one
`CNNKAE(...)` call with keyword arguments, `mnist_dataset(...)` / `fashion_mnist_dataset(...)` calls, and
as values literals or names from `globals`. Matrix values such as `"'relu'"` and `"None"` are Python
literals too: the string relu and None.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from kaecompress.errors import KaecError
from kaecompress.fileio import MAX_DEPTH

STUDY_KEYS = {"experiment_name", "matrix", "exclude", "globals", "model", "train_set", "validation_set",
              "batch_size", "learnrate", "optimizer", "loss_function", "max_inputs", "trainer",
              "feature_loss_weight"}
_DATASETS = {"mnist_dataset": "mnist", "fashion_mnist_dataset": "fashion-mnist"}
_MODEL_ARGS = {"shape", "latent_dim", "channels", "kernel_size", "encoder_kae_order", "decoder_kae_order",
               "activation", "latent_activation", "output_activation"}


def is_study_format(raw: dict) -> bool:
    return isinstance(raw.get("model"), str) or "train_set" in raw or "learnrate" in raw


def display_value(value: Any) -> Any:
    """A matrix value as the study meant it: "'relu'" is relu, "None" is None."""
    if isinstance(value, str) and re.fullmatch(r"'[^']*'|\"[^\"]*\"|None|True|False", value.strip()):
        return ast.literal_eval(value.strip())
    return value


class _Where:
    """Names a file and line for errors about one of its Python-looking fields."""

    def __init__(self, source: str, text: str | None):
        self.source, self.lines = source, (text or "").splitlines()

    def line_of(self, key: str, lineno: int | None = None) -> str:
        """`file:line` of `key`, or of line `lineno` of its value (block scalars start a line below)."""
        for i, line in enumerate(self.lines, 1):
            if re.match(rf"{re.escape(key)}\s*:", line):
                if lineno is None:
                    return f"{self.source}:{i}"
                block = line.split(":", 1)[1].strip()[:1] in ("|", ">")
                return f"{self.source}:{i + lineno - (0 if block else 1)}"
        return self.source

    def error(self, key: str, message: str, lineno: int | None = None) -> KaecError:
        return KaecError(f"{self.line_of(key, lineno)}: {key}: {message}")


def _value(node: ast.AST, names: dict, where: _Where, key: str):
    lineno = getattr(node, "lineno", 1)
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        raise where.error(key, f"unknown name {node.id!r} (globals: {', '.join(names) or 'none'})", lineno)
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        raise where.error(key, f"only literals and globals are allowed, got {ast.unparse(node)!r}", lineno) from None


def _call(text: Any, key: str, allowed: set[str], names: dict, where: _Where) -> tuple[str, dict]:
    if not isinstance(text, str):
        raise where.error(key, f"expected a call such as {sorted(allowed)[0]}(...), got {text!r}")
    try:
        tree = parse(text)
    except SyntaxError as e:
        raise where.error(key, f"invalid syntax ({e.msg})", e.lineno or 1) from None
    except KaecError as e:
        raise where.error(key, str(e)) from None
    body = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))]
    if len(body) != 1 or not isinstance(body[0], ast.Expr) or not isinstance(body[0].value, ast.Call):
        raise where.error(key, f"expected import lines and one call of {' or '.join(sorted(allowed))}", 1)
    call = body[0].value
    func = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", None)
    if func not in allowed:
        raise where.error(key, f"{ast.unparse(call.func)!r} is not allowed (expected {' or '.join(sorted(allowed))})",
                          call.lineno)
    if call.args:
        raise where.error(key, "use keyword arguments only", call.lineno)
    names_given = [kw.arg for kw in call.keywords]
    for kw in call.keywords:
        if kw.arg is None or names_given.count(kw.arg) > 1:  # Python itself refuses both
            raise where.error(key, f"keyword {kw.arg or '**'!r} given twice" if kw.arg else "'**' is not allowed",
                              kw.lineno)
    return func, {kw.arg: _value(kw.value, names, where, key) for kw in call.keywords}


def study_to_native(raw: dict, source: str, text: str | None = None) -> dict:
    """One run's study-format mapping (matrix values substituted) as a native experiment mapping."""
    where = _Where(source, text)
    unknown = sorted(map(str, set(raw) - STUDY_KEYS))  # YAML keys may be numbers too
    if unknown:
        raise KaecError(f"{where.line_of(unknown[0])}: unknown key {unknown[0]!r} (expected one of: "
                        f"{', '.join(sorted(STUDY_KEYS))})")
    for key in ("experiment_name", "model", "train_set", "validation_set", "batch_size", "learnrate",
                "optimizer", "max_inputs"):
        if key not in raw:
            raise KaecError(f"{source}: missing required key '{key}'")
    names = {"None": None, "True": True, "False": False}
    given = raw.get("globals") or {}
    if not isinstance(given, dict) or not all(isinstance(k, str) and k.isidentifier() for k in given):
        raise where.error("globals", f"expected a mapping of Python names to values, got {given!r:.60}")
    for name, value in given.items():
        try:
            names[name] = _literal(value) if isinstance(value, str) else value
        except KaecError as e:
            raise where.error("globals", f"{name}: {e}") from None
    _, model = _call(raw["model"], "model", {"CNNKAE"}, names, where)
    bad = sorted(set(model) - _MODEL_ARGS)
    if bad:
        raise where.error("model", f"unknown CNNKAE argument {bad[0]!r} (expected: {', '.join(sorted(_MODEL_ARGS))})",
                          1)
    model = {k: ("none" if v is None and k.endswith("activation") else v) for k, v in model.items()}
    for k in ("encoder_kae_order", "decoder_kae_order"):
        if model.get(k) is None:
            model[k] = 0
    datasets = {}
    for key, train in (("train_set", True), ("validation_set", False)):
        func, kwargs = _call(raw[key], key, set(_DATASETS), names, where)
        if kwargs.get("train", train) != train:
            raise where.error(key, f"expected train={train}", 1)
        if "shape" in kwargs and _as_tuple(kwargs["shape"]) != _as_tuple(model.get("shape", (1, 28, 28))):
            raise where.error(key, f"shape {kwargs['shape']!r} differs from the model's", 1)
        datasets[key] = _DATASETS[func]
    if datasets["train_set"] != datasets["validation_set"]:
        raise KaecError(f"{source}: train_set and validation_set must be the same dataset")
    loss = str(raw.get("loss_function", "l2")).lower()
    if loss not in ("l2", "mse"):
        raise where.error("loss_function", f"only l2 (mean squared error) is supported, got {loss!r}")
    weight = raw.get("feature_loss_weight", 0)
    if weight not in (0, 0.0, None):
        raise where.error("feature_loss_weight", f"only 0 (plain reconstruction loss) is supported, got {weight!r}")
    optimizer = str(raw["optimizer"]).strip().strip("'\"")
    optimizer = optimizer.rsplit(".", 1)[-1]  # torch.optim.Adam -> Adam
    return {
        "experiment_name": raw["experiment_name"],
        "data": {"dataset": datasets["train_set"]},
        "model": model,
        "train": {"batch_size": raw["batch_size"], "optimizer": optimizer, "lr": raw["learnrate"],
                  "max_inputs": raw["max_inputs"]},
    }


def parse(text: str, mode: str = "exec") -> ast.AST:
    """`text` as a Python syntax tree at most MAX_DEPTH nodes deep; deeper is a KaecError (and SyntaxError
    stays itself). Python's parser and every walk of its tree recurse: 200,000 unary minus signs exhaust
    the parser's own stack (MemoryError) and a few thousand the interpreter's (RecursionError)."""
    try:
        tree = ast.parse(text.strip(), mode=mode)
    except (RecursionError, MemoryError):
        raise KaecError(f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as e:  # a NUL byte, on Python 3.10 (later versions raise SyntaxError)
        raise SyntaxError(str(e)) from None
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise KaecError(f"nested more than {MAX_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return tree


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _literal(text: str):
    try:
        return ast.literal_eval(parse(text, mode="eval"))
    except (ValueError, TypeError, SyntaxError):
        return text  # a plain word stays a string, as YAML meant it
