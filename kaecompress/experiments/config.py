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
`${matrix_slug}` (and `${matrix_id}`) name the run itself: an `experiment_name` holding the slug is the
run's own folder (`ae/kae/cnn-kae-mnist_${matrix_slug}`), otherwise each run gets `NAME/SLUG`.
Nothing in a config is ever executed: YAML is read with `yaml.safe_load` and every key is checked. Inputs
that would hang or exhaust the machine are refused first: YAML aliases may expand to at most
`MAX_YAML_NODES` nodes, a matrix to at most `MAX_RUNS` runs, and every number must be finite.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re
import typing
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaecompress.nn.activations import check_activation
from kaecompress.experiments.data import check_dataset_name
from kaecompress.errors import KaecError
from kaecompress.fileio import MAX_DEPTH, check_depth, read_text, too_deep

MAX_RUNS = 10_000            # runs one experiment file may expand to (the study's grid has 256)
MAX_YAML_NODES = 20_000      # nodes a file may hold once its aliases are expanded (ours hold < 200)
MAX_CONFIG_BYTES = 1 << 20   # a config file is a page of text, not a data set
MAX_EXPANSION = 2_000_000    # runs x values per run: what expanding a matrix may build (~ a second)


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
    stride: int = 1  # > 1: 'same'-padded strided convolutions instead of the study's unpadded ones


@dataclass(frozen=True)
class CodecConfig:
    """Rate training (the `codec:` section): loss = bits per pixel + lmbda * 255^2 * MSE."""

    lmbda: float
    prior: str = "factorized"


@dataclass(frozen=True)
class Resources:
    """What one run asks of a Ray cluster (`--ray`): CPUs and a share of a GPU (0.25: four runs per GPU; a
    pack of runs asks for raysweep.pack_resources)."""
    cpu: float = 1.0
    gpu: float = 0.0


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
    threads: int | None = None  # CPU threads for torch; None: kaecompress.experiments.resources.default_threads()
    lr_drop_at: float | None = None  # fraction of the budget after which the learning rate is divided by 10
    lr_schedule: str = "constant"  # or "cosine": from lr down to lr / 100 over the budget
    resources: Resources = Resources()  # per run, for --ray (kaecompress.experiments.raysweep)


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
    folder: str = ""  # the run's folder under the runs folder; set by expand()
    codec: CodecConfig | None = None  # set: a rate-trained codec model

    @property
    def run_folder(self) -> str:
        """Relative path of this run's folder: `folder`, else EXPERIMENT/SLUG."""
        return self.folder or f"{self.experiment_name}/{self.matrix_slug}"

    @property
    def seed(self) -> int:
        """Same config and trial give the same numbers."""
        return self.train.seed * 1000 + self.trial

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def recipe(self) -> dict:
        return recipe_of(self.to_dict())


# Settings that leave a run's numbers alone: changing them keeps a finished run finished.
_NOT_RECIPE = {"": ("source", "matrix", "matrix_id", "matrix_slug", "folder"), "data": ("root",),
               "train": ("device", "checkpoint_every_s", "log_every", "validation_batch_size", "threads",
                         "resources")}


def recipe_of(config: dict) -> dict:
    """The part of a run's config (as `RunConfig.to_dict()` gives it) that determines its results."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for section, keys in _NOT_RECIPE.items():
        target = out if not section else out.get(section, {})
        for k in keys:
            target.pop(k, None)
    # Settings added later, at their defaults, leave the recipes of earlier runs as they were.
    for section, key, default in (("model", "stride", 1), ("train", "lr_drop_at", None),
                                    ("train", "lr_schedule", "constant"), ("", "codec", None)):
        target = out if not section else out.get(section, {})
        if key in target and target[key] == default:
            del target[key]
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
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
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
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 3e-4 as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise KaecError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise KaecError(f"{where}: expected a finite number, got {value!r}")
        return number
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


def shown_key(key: Any) -> str:
    """A key of the user's file as an error message shows it: plain names as they are, anything else (a
    newline, a number) as its Python repr, so that a message stays one line."""
    return key if isinstance(key, str) and re.fullmatch(r"[\w.+-]+", key) else repr(key)


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)  # slow (it evaluates annotations); a 10,000-run grid asks 30,000 times


def _build(cls, mapping: Any, where: str):
    if not isinstance(mapping, dict):
        raise KaecError(f"{where}: expected a mapping of keys, got {mapping!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in mapping if k not in names]
    if unknown:
        raise KaecError(f"{where}.{shown_key(unknown[0])}: unknown key (expected one of: {', '.join(names)})")
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


# Optimizers a plain gradient loop cannot drive, refused with the config (no torch needed to know).
UNSUPPORTED_OPTIMIZERS = {"lbfgs": ("LBFGS", "needs a closure that re-evaluates the loss at every step"),
                          "sparseadam": ("SparseAdam", "needs sparse gradients, and these models have dense ones")}


def check_optimizer(name: str, where: str) -> str:
    if name.lower() in UNSUPPORTED_OPTIMIZERS:
        real, why = UNSUPPORTED_OPTIMIZERS[name.lower()]
        raise KaecError(f"{where}: {real} {why}; use one that steps on gradients alone (Adam, AdamW, SGD, ...)")
    return name


def check_device(name: str, where: str) -> str:
    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise KaecError(f"{where}: expected auto, cpu or cuda, got {name!r}")
    return name


def check_finite(obj: Any, where: str) -> None:
    """Refuse infinities and NaN anywhere in a config (`lr: .inf` would train a diverging run)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise KaecError(f"{where}: expected a finite number, got {obj}")
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_finite(v, f"{where}.{shown_key(k)}" if not where.endswith(": ") else f"{where}{shown_key(k)}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_finite(v, f"{where}[{i}]")


_PART = re.compile(r"[\w.+\-:,=()\[\]]+")


def check_folder_name(name: Any, where: str, hint: str = "") -> str:
    """A relative path of plain folder names: never absolute, never `.` or `..`, so that every run folder
    stays inside the runs folder whatever the config says."""
    if not isinstance(name, str) or not name:
        raise KaecError(f"{where}: expected a name, got {name!r}")
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", "..") or not _PART.fullmatch(part):
            raise KaecError(f"{where}: expected folder names of letters, digits, '_', '-', '.' separated by '/' "
                            f"(no empty, '.' or '..' part, not absolute), got {name!r}")
    check_name_lengths(name, where, hint)
    return name


MAX_NAME_BYTES = 255           # one folder name: the limit of ext4, XFS, btrfs, APFS and NTFS
MAX_RUN_FOLDER_BYTES = 1024    # a run's whole relative folder, leaving room for the runs folder in PATH_MAX


def check_name_lengths(name: str, where: str, hint: str = "") -> None:
    """Refuse, at validation, a run folder the file system would refuse only when training creates it."""
    for part in name.split("/"):
        size = len(part.encode("utf-8"))
        if size > MAX_NAME_BYTES:
            raise KaecError(f"{where}: folder name {part[:40]!r}... is {size:,} bytes; a file system allows at most "
                            f"{MAX_NAME_BYTES} per name{hint}")
    size = len(name.encode("utf-8"))
    if size > MAX_RUN_FOLDER_BYTES:
        raise KaecError(f"{where}: the run folder {name[:40]!r}... is {size:,} bytes; at most {MAX_RUN_FOLDER_BYTES:,} "
                        f"in all{hint}")


def build_run(raw: dict, source: str, *, trial: int = 0, matrix: dict | None = None,
              matrix_id: str = "1", matrix_slug: str = "run", folder: str = "") -> RunConfig:
    """Validate one run's resolved mapping (matrix values already substituted)."""
    top = {"experiment_name", "data", "model", "train"}
    unknown = sorted(map(str, set(raw) - top - {"codec"}))  # YAML keys may be numbers too
    if unknown:
        raise KaecError(f"{source}: unknown key {unknown[0]!r} (expected one of: experiment_name, matrix, "
                        "exclude, data, model, train, codec)")
    for key in sorted(top):
        if key not in raw:
            raise KaecError(f"{source}: missing required key '{key}'")
    slug_hint = " (shorten it, or the matrix keys and values that ${matrix_slug} holds)" if folder else ""
    name = check_folder_name(raw["experiment_name"], f"{source}: experiment_name", slug_hint)
    check_finite(raw, f"{source}: ")
    data = _build(DataConfig, raw["data"], f"{source}: data")
    model = model_config(raw["model"], f"{source}: model")
    train = _build(TrainConfig, raw["train"], f"{source}: train")
    codec = _build_codec(raw.get("codec"), f"{source}: codec")
    check_dataset_name(data.dataset, f"{source}: data.dataset")
    for key in ("batch_size", "lr", "max_inputs", "validation_batch_size", "log_every", "checkpoint_every_s",
                "threads"):
        _positive(getattr(train, key), f"{source}: train.{key}")
    check_device(train.device, f"{source}: train.device")
    if train.resources.cpu <= 0 or train.resources.gpu < 0 or (train.resources.gpu > 1 and
                                                                not float(train.resources.gpu).is_integer()):
        raise KaecError(f"{source}: train.resources: expected cpu > 0 and gpu a fraction of one GPU or a whole "
                        f"number of GPUs, got cpu {train.resources.cpu}, gpu {train.resources.gpu}")
    check_optimizer(train.optimizer, f"{source}: train.optimizer")
    if folder:
        check_folder_name(folder, f"{source}: experiment_name", slug_hint)
    else:  # EXPERIMENT/SLUG; the slug is made of folder-safe characters, so only its length can be wrong
        check_name_lengths(matrix_slug, f"{source}: matrix", " (shorten the matrix keys and values: they name "
                                                             "each run's folder)")
        check_name_lengths(f"{name}/{matrix_slug}", f"{source}: experiment_name")
    if train.lr_drop_at is not None and not 0 < train.lr_drop_at < 1:
        raise KaecError(f"{source}: train.lr_drop_at: expected a fraction between 0 and 1, got {train.lr_drop_at}")
    if train.lr_schedule not in ("constant", "cosine"):
        raise KaecError(f"{source}: train.lr_schedule: expected constant or cosine, got {train.lr_schedule!r}")
    if train.lr_schedule == "cosine" and train.lr_drop_at is not None:
        raise KaecError(f"{source}: train.lr_drop_at: a cosine schedule already lowers the learning rate; "
                        "set one of lr_drop_at and lr_schedule")
    return RunConfig(name, data, model, train, trial, dict(matrix or {}), matrix_id, matrix_slug, source, folder,
                     codec=codec)


def model_config(mapping: Any, where: str) -> ModelConfig:
    """The `model:` section (of a config, or of a model card's config), every value checked."""
    model = _build(ModelConfig, mapping, where)
    for key in ("activation", "latent_activation", "output_activation"):
        model = dataclasses.replace(model, **{key: check_activation(getattr(model, key), f"{where}.{key}")})
    if len(model.shape) != 3:
        raise KaecError(f"{where}.shape: expected [channels, height, width], got {list(model.shape)}")
    for key in ("latent_dim", "kernel_size"):
        _positive(getattr(model, key), f"{where}.{key}")
    for key in ("encoder_kae_order", "decoder_kae_order"):
        if getattr(model, key) < 0:
            raise KaecError(f"{where}.{key}: expected an order >= 0 (0 means a Linear layer)")
    if model.stride < 1:
        raise KaecError(f"{where}.stride: expected an integer >= 1, got {model.stride}")
    return model


def _build_codec(mapping: Any, where: str) -> CodecConfig | None:
    """The `codec:` section; its `lambda` key is `lmbda` in Python."""
    if mapping is None:
        return None
    if not isinstance(mapping, dict):
        raise KaecError(f"{where}: expected a mapping with lambda (and prior), got {mapping!r}")
    if "lmbda" in mapping:
        raise KaecError(f"{where}.lmbda: unknown key (expected one of: lambda, prior)")
    renamed = {("lmbda" if k == "lambda" else k): v for k, v in mapping.items()}
    try:
        codec = _build(CodecConfig, renamed, where)
    except KaecError as e:
        raise KaecError(str(e).replace(".lmbda", ".lambda").replace("lmbda, ", "lambda, ")) from None
    _positive(codec.lmbda, f"{where}.lambda")
    if codec.prior != "factorized":
        raise KaecError(f"{where}.prior: expected factorized (a learned density per latent dimension), "
                        f"got {codec.prior!r}")
    return codec


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


RUN_NAMES = ("matrix_slug", "matrix_id")  # variables naming the run itself, not matrix keys


def expand(raw: dict, source: str, text: str | None = None) -> tuple[dict[str, list], list[RunConfig]]:
    """All runs of an experiment mapping (native or the study's format), in matrix order."""
    from kaecompress.experiments.studyformat import display_value, is_study_format, study_to_native

    if not isinstance(raw, dict):
        raise KaecError(f"{source}: expected a mapping at the top level")
    check_finite(raw, f"{source}: ")
    raw = dict(raw)
    study = is_study_format(raw)
    matrix = raw.pop("matrix", None) or {}
    exclude = raw.pop("exclude", None) or []
    if not isinstance(matrix, dict) or not all(isinstance(v, list) and v for v in matrix.values()):
        raise KaecError(f"{source}: matrix: expected a mapping of key to a non-empty list of values")
    bad = [k for k in matrix if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z][\w-]*", k)]
    if bad:
        raise KaecError(f"{source}: matrix key {bad[0]!r}: use letters, digits, '_' and '-' (it names folders)")
    reserved = [k for k in matrix if k in RUN_NAMES]
    if reserved:
        raise KaecError(f"{source}: matrix key {reserved[0]!r}: reserved (${{{reserved[0]}}} names each run)")
    total = math.prod(len(v) for v in matrix.values())  # before building any combination
    if total > MAX_RUNS:
        raise KaecError(f"{source}: matrix: {' x '.join(str(len(v)) for v in matrix.values())} = {total:,} "
                        f"combinations; at most {MAX_RUNS:,} runs per experiment file (split the grid)")
    values = _count_values(raw)
    if total * values > MAX_EXPANSION:
        raise KaecError(f"{source}: matrix: {total:,} runs of {values:,} values each would build "
                        f"{total * values:,} values; at most {MAX_EXPANSION:,} per experiment file (split the grid)")
    if not isinstance(exclude, list) or not all(isinstance(e, dict) and set(e) <= set(matrix) for e in exclude):
        raise KaecError(f"{source}: exclude: expected a list of mappings over matrix keys ({', '.join(matrix)})")
    combos = [dict(zip(matrix, values)) for values in itertools.product(*matrix.values())]
    combos = [c for c in combos if not any(all(c[k] == v for k, v in e.items()) for e in exclude)]
    width = len(str(len(combos)))
    name_template = raw.get("experiment_name")
    own_folder = isinstance(name_template, str) and "${matrix_slug}" in name_template
    runs = []
    for i, values in enumerate(combos, 1):
        trial = values.get("trial", 0)
        if not isinstance(trial, int) or isinstance(trial, bool):
            raise KaecError(f"{source}: matrix.trial: expected integers, got {trial!r}")
        shown = {k: display_value(v) for k, v in values.items()} if study else values
        slug = "_".join(f"{k}:{slug_value(v)}" for k, v in shown.items()) or "run"
        matrix_id = str(i).zfill(width)
        run_raw = substitute(raw, {**values, "matrix_slug": slug, "matrix_id": matrix_id}, source)
        if study:
            run_raw = study_to_native(run_raw, source, text)
        name = run_raw.get("experiment_name")
        runs.append(build_run(run_raw, source, trial=trial, matrix=shown, matrix_id=matrix_id, matrix_slug=slug,
                              folder=name if own_folder and isinstance(name, str) else ""))
    if not runs:
        raise KaecError(f"{source}: exclude drops every combination of the matrix")
    seen: dict[str, RunConfig] = {}
    for run in runs:  # the folder is the run's identity: two runs must never share one
        if run.run_folder in seen:
            raise KaecError(f"{source}: matrix values {seen[run.run_folder].matrix} and {run.matrix} give the same "
                            f"run folder name {run.matrix_slug!r}; make them differ in letters or digits")
        seen[run.run_folder] = run
    return matrix, runs


def _count_values(obj: Any) -> int:
    """Values in a loaded config, aliases counted once per use (read_yaml has bounded them)."""
    count, stack = 0, [obj]
    while stack:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack += item.values()
        elif isinstance(item, (list, tuple)):
            stack += item
    return count


def load_experiment(path: str | Path) -> Experiment:
    """Read, validate and expand an experiment file."""
    path = Path(path)
    text = read_text(path, MAX_CONFIG_BYTES, "an experiment file")  # a FIFO or /dev/zero is refused unread
    raw = read_yaml(text, str(path))
    matrix, runs = expand(raw, str(path), text)
    return Experiment(path, str(raw.get("experiment_name")), matrix, runs)


def read_yaml(text: str, source: str) -> Any:
    """Plain data from YAML text: safe tags only, no key given twice, and aliases that expand to at most
    MAX_YAML_NODES nodes (a 'billion laughs' file is refused before anything is built from it)."""
    import yaml

    loader = None
    try:
        loader = _unique_key_loader()(text)  # it reads the first characters: a NUL is refused here already
        loader.source = source
        node = loader.get_single_node()
        if node is None:
            return None
        nodes = _expanded_size(node)
        if nodes == math.inf:
            raise KaecError(f"{source}: a YAML alias refers to its own anchor (a loop)")
        if nodes > MAX_YAML_NODES:
            raise KaecError(f"{source}: YAML aliases expand to more than {MAX_YAML_NODES:,} values "
                            f"(the limit per experiment file)")
        try:
            data = loader.construct_document(node)
        except (ValueError, OverflowError, AttributeError) as e:  # a tag's value it cannot be: `!!timestamp x`
            raise KaecError(f"{source}: invalid YAML ({str(e).splitlines()[0]})") from None
        check_depth(data, source)
        return data
    except RecursionError:  # PyYAML composes nested nodes recursively: a few hundred levels exhaust the stack
        raise too_deep(source) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = str(getattr(e, "problem", None) or e).splitlines()[0]
        raise KaecError(f"{source}:{line} invalid YAML ({problem})") from None
    finally:
        if loader is not None:
            loader.dispose()


def _expanded_size(root) -> float:
    """Nodes in the tree the YAML graph stands for, each alias counted as a full copy of what it names;
    computed once per node, so it costs the size of the file, not of the expansion. Stops at the first
    node over MAX_YAML_NODES; an alias inside its own anchor (a cycle) counts as infinite."""
    import yaml

    def children(node):
        if isinstance(node, yaml.ScalarNode):
            return []
        return [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else node.value

    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the current path: met again below itself means a cycle
    stack = [(root, False)]
    while stack:  # iterative: a deeply nested file cannot exhaust Python's recursion
        node, done = stack.pop()
        key = id(node)
        if done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children(node))
            if sizes[key] > MAX_YAML_NODES:
                return sizes[key]
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            return math.inf
        open_nodes.add(key)
        stack.append((node, True))
        stack += [(c, False) for c in children(node)]
    return sizes[id(root)]


def _unique_key_loader():
    """yaml.SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        source, depth = "", 0

        def compose_node(self, parent, index):
            # Stopped at the limit, not at the stack's end: the scanner's cost grows with the depth of
            # open flow collections (`[[[[...`), so 500 levels cost seconds and 100 a fraction of one.
            self.depth += 1
            try:
                if self.depth > MAX_DEPTH + 1:  # the values inside MAX_DEPTH collections are one deeper
                    raise too_deep(self.source)
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

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
