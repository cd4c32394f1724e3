"""Experiment configuration: a declarative YAML file, validated, with a matrix expanded into runs.

    experiment_name: quickstart-${ks}
    matrix:              # optional: one run per combination, first key slowest
      trial: [1, 2]
      ks: [3, 7]
    exclude:             # optional: drop combinations matching every key given
      - {trial: 2, ks: 3}
    data: {dataset: mnist}
    model: {latent_dim: 16, channels: [32], kernel_size: "${ks}", decoder_kae_order: 3}
    train: {batch_size: 64, optimizer: AdamW, lr: 3.0e-4, max_inputs: 300_000}

`${name}` is replaced by the run's matrix value anywhere in the file; a value that is exactly `${name}`
takes the matrix value's own type. `trial` is an ordinary matrix key that also sets the run's seed.
Nothing in a config is ever executed: YAML is read with `yaml.safe_load` and every key is checked.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import typing
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaecompress.activations import check_activation
from kaecompress.data import check_dataset_name
from kaecompress.errors import KaecError

_REQUIRED = object()


@dataclass(frozen=True)
class DataConfig:
    dataset: str
    root: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    latent_dim: int
    channels: tuple[int, ...]
    kernel_size: int
    shape: tuple[int, ...] = (1, 28, 28)
    encoder_kae_order: int = 0
    decoder_kae_order: int = 0
    activation: str = "relu"
    latent_activation: str = "none"
    output_activation: str = "none"


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int
    optimizer: str
    lr: float
    max_inputs: int
    weight_decay: float | None = None
    seed: int = 0
    device: str = "auto"
    validation_batch_size: int = 1000
    log_every: int = 1000
    checkpoint_every_s: float = 30.0


@dataclass(frozen=True)
class RunConfig:
    experiment_name: str
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    trial: int = 0
    matrix: dict = field(default_factory=dict)
    matrix_id: str = "1"
    matrix_slug: str = "run"
    source: str = ""

    @property
    def seed(self) -> int:
        """Same config and trial give the same numbers."""
        return self.train.seed * 1000 + self.trial

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def recipe(self) -> dict:
        return recipe_of(self.to_dict())


# Settings that leave a run's numbers alone: changing them keeps a finished run finished.
_NOT_RECIPE = {"": ("source", "matrix", "matrix_id", "matrix_slug"), "data": ("root",),
               "train": ("device", "checkpoint_every_s", "log_every", "validation_batch_size")}


def recipe_of(config: dict) -> dict:
    """The part of a run's config (as `RunConfig.to_dict()` gives it) that determines its results."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for section, keys in _NOT_RECIPE.items():
        target = out if not section else out.get(section, {})
        for k in keys:
            target.pop(k, None)
    return out


def recipe_changes(old: dict, new: dict) -> list[str]:
    """Dotted names of the settings that differ between two recipes."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            changed.append(key)
    return changed


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


@dataclass(frozen=True)
class Experiment:
    path: Path
    name: str
    matrix: dict[str, list]
    runs: list[RunConfig]


# ---- validation -------------------------------------------------------------------------------------

def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise KaecError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise KaecError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise KaecError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if value is None:
            return "none"
        raise KaecError(f"{where}: expected a string, got {value!r}")
    if origin is tuple:
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise KaecError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(hint)  # pragma: no cover - a schema bug, not a user mistake


def _build(cls, mapping: Any, where: str):
    if not isinstance(mapping, dict):
        raise KaecError(f"{where}: expected a mapping of keys, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in mapping if k not in names]
    if unknown:
        raise KaecError(f"{where}.{unknown[0]}: unknown key (expected one of: {', '.join(names)})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in mapping:
            kwargs[f.name] = _coerce(mapping[f.name], hints[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise KaecError(f"{where}.{f.name}: missing required key")
    return cls(**kwargs)


def _positive(value, where: str) -> None:
    if value is not None and value <= 0:
        raise KaecError(f"{where}: expected a positive value, got {value!r}")


def check_device(name: str, where: str) -> str:
    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise KaecError(f"{where}: expected auto, cpu or cuda, got {name!r}")
    return name


def build_run(raw: dict, source: str, *, trial: int = 0, matrix: dict | None = None,
              matrix_id: str = "1", matrix_slug: str = "run") -> RunConfig:
    """Validate one run's resolved mapping (matrix values already substituted)."""
    top = {"experiment_name", "data", "model", "train"}
    unknown = sorted(set(raw) - top)
    if unknown:
        raise KaecError(f"{source}: unknown key '{unknown[0]}' (expected one of: experiment_name, matrix, "
                        "exclude, data, model, train)")
    for key in sorted(top):
        if key not in raw:
            raise KaecError(f"{source}: missing required key '{key}'")
    name = raw["experiment_name"]
    if not isinstance(name, str) or not re.fullmatch(r"[\w.+-]+", name):
        raise KaecError(f"{source}: experiment_name: expected a name of letters, digits, '_', '-', '.', got {name!r}")
    data = _build(DataConfig, raw["data"], f"{source}: data")
    model = _build(ModelConfig, raw["model"], f"{source}: model")
    train = _build(TrainConfig, raw["train"], f"{source}: train")
    check_dataset_name(data.dataset, f"{source}: data.dataset")
    for key in ("activation", "latent_activation", "output_activation"):
        model = dataclasses.replace(model, **{key: check_activation(getattr(model, key), f"{source}: model.{key}")})
    if len(model.shape) != 3:
        raise KaecError(f"{source}: model.shape: expected [channels, height, width], got {list(model.shape)}")
    for key in ("latent_dim", "kernel_size"):
        _positive(getattr(model, key), f"{source}: model.{key}")
    for key in ("batch_size", "lr", "max_inputs", "validation_batch_size", "log_every", "checkpoint_every_s"):
        _positive(getattr(train, key), f"{source}: train.{key}")
    for key in ("encoder_kae_order", "decoder_kae_order"):
        if getattr(model, key) < 0:
            raise KaecError(f"{source}: model.{key}: expected an order >= 0 (0 means a Linear layer)")
    check_device(train.device, f"{source}: train.device")
    return RunConfig(name, data, model, train, trial, dict(matrix or {}), matrix_id, matrix_slug, source)


# ---- matrix -----------------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][\w-]*)\}")


def substitute(obj: Any, values: dict, where: str) -> Any:
    if isinstance(obj, dict):
        return {k: substitute(v, values, where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [substitute(v, values, where) for v in obj]
    if not isinstance(obj, str):
        return obj

    def lookup(name: str):
        if name not in values:
            raise KaecError(f"{where}: ${{{name}}} names no matrix key (matrix keys: {', '.join(values) or 'none'})")
        return values[name]

    whole = _VAR.fullmatch(obj)
    if whole:
        return lookup(whole.group(1))
    return _VAR.sub(lambda m: str(lookup(m.group(1))), obj)


def slug_value(value: Any) -> str:
    text = "None" if value is None else str(value).replace(" ", "")
    return re.sub(r"[^\w.,+\-\[\]()=]", "-", text)


def expand(raw: dict, source: str, text: str | None = None) -> tuple[dict[str, list], list[RunConfig]]:
    """All runs of an experiment mapping (native or the study's format), in matrix order."""
    from kaecompress.studyformat import display_value, is_study_format, study_to_native

    if not isinstance(raw, dict):
        raise KaecError(f"{source}: expected a mapping at the top level")
    raw = dict(raw)
    study = is_study_format(raw)
    matrix = raw.pop("matrix", None) or {}
    exclude = raw.pop("exclude", None) or []
    if not isinstance(matrix, dict) or not all(isinstance(v, list) and v for v in matrix.values()):
        raise KaecError(f"{source}: matrix: expected a mapping of key to a non-empty list of values")
    bad = [k for k in matrix if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z][\w-]*", k)]
    if bad:
        raise KaecError(f"{source}: matrix key {bad[0]!r}: use letters, digits, '_' and '-' (it names folders)")
    if not isinstance(exclude, list) or not all(isinstance(e, dict) and set(e) <= set(matrix) for e in exclude):
        raise KaecError(f"{source}: exclude: expected a list of mappings over matrix keys ({', '.join(matrix)})")
    combos = [dict(zip(matrix, values)) for values in itertools.product(*matrix.values())]
    combos = [c for c in combos if not any(all(c[k] == v for k, v in e.items()) for e in exclude)]
    width = len(str(len(combos)))
    runs = []
    for i, values in enumerate(combos, 1):
        trial = values.get("trial", 0)
        if not isinstance(trial, int) or isinstance(trial, bool):
            raise KaecError(f"{source}: matrix.trial: expected integers, got {trial!r}")
        run_raw = substitute(raw, values, source)
        if study:
            run_raw = study_to_native(run_raw, source, text)
            values = {k: display_value(v) for k, v in values.items()}
        slug = "_".join(f"{k}:{slug_value(v)}" for k, v in values.items()) or "run"
        runs.append(build_run(run_raw, source, trial=trial, matrix=values,
                              matrix_id=str(i).zfill(width), matrix_slug=slug))
    if not runs:
        raise KaecError(f"{source}: exclude drops every combination of the matrix")
    seen: dict[str, RunConfig] = {}
    for run in runs:  # the slug names the run's folder: two runs must never share one
        if run.matrix_slug in seen:
            raise KaecError(f"{source}: matrix values {seen[run.matrix_slug].matrix} and {run.matrix} give the same "
                            f"run folder name {run.matrix_slug!r}; make them differ in letters or digits")
        seen[run.matrix_slug] = run
    return matrix, runs


def load_experiment(path: str | Path) -> Experiment:
    """Read, validate and expand an experiment file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise KaecError(f"{path}: cannot read config ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise KaecError(f"{path}: not a text file (expected a UTF-8 YAML experiment)") from None
    try:
        raw = yaml.load(text, Loader=_unique_key_loader())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise KaecError(f"{path}:{line} invalid YAML ({getattr(e, 'problem', None) or e})") from None
    matrix, runs = expand(raw, str(path), text)
    return Experiment(path, str(raw.get("experiment_name")), matrix, runs)


def _unique_key_loader():
    """yaml.SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` is flattened by the base class
                    continue
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, Hashable):
                    continue  # the base class reports unhashable keys
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader
