"""What a run needs of the machine, known from its config before anything is allocated.

`estimate_bytes` adds up, in float32: the parameters with their gradients and optimizer state, the
activations a training batch keeps for the backward pass, a validation batch, the images held in memory,
and the interpreter with torch itself. It is a deliberate over-estimate of the same order as what training
really takes, so that a config that cannot fit (a KAE order of 100,000, a latent of 10^8) is refused by
`kaec train --dry-run` in a moment instead of being killed by the kernel an hour later.
The limit is `MEMORY_SHARE` of this machine's physical memory (or of the cgroup's limit, when lower).
Nothing here imports torch.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from kaecompress.errors import KaecError

MEMORY_SHARE = 0.8          # of physical memory a run may be estimated to use
FLOAT = 4                   # bytes per float32
BASE_BYTES = 600 << 20      # Python, torch and its libraries, measured ~0.5 GB resident after import
# Per parameter: the value, its gradient, the optimizer's state; KAE layers also lay their coefficients out
# once more as a (out, order * in) weight for the matrix product, and its gradient.
_STATE_PER_PARAM = {"sgd": 1, "adam": 2, "adamw": 2, "nadam": 2, "radam": 2, "adamax": 2, "adagrad": 1,
                    "adadelta": 2, "rmsprop": 2, "rprop": 2, "asgd": 2}
_TRAIN_IMAGES = {"mnist": 60_000, "fashion-mnist": 60_000}
_VAL_IMAGES = {"mnist": 10_000, "fashion-mnist": 10_000}


def physical_memory() -> int:
    """Bytes of RAM this process may use: the machine's, or its cgroup's limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def default_limit() -> int:
    """$KAEC_MAX_MEMORY (what `--max-memory` sets) or MEMORY_SHARE of this machine's memory."""
    text = os.environ.get("KAEC_MAX_MEMORY")
    return parse_size(text, "KAEC_MAX_MEMORY") if text else int(physical_memory() * MEMORY_SHARE)


def parse_size(text: str, where: str = "--max-memory") -> int:
    """`12G`, `512MiB`, `2.5GB`, `1000000` (bytes) or `50%` (of physical memory) as bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(%|[kmgt]i?b?|b)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise KaecError(f"{where}: expected a size such as 12G, 512M or 50%, got {text!r}")
    value, unit = float(m.group(1)), (m.group(2) or "b").lower()
    if unit == "%":
        if not 0 < value <= 100:
            raise KaecError(f"{where}: expected a share of memory between 0 and 100%, got {text!r}")
        return int(physical_memory() * value / 100)
    scale = 1024 ** "bkmgt".index(unit[0])
    size = int(value * scale)
    if size <= 0:
        raise KaecError(f"{where}: expected a positive size, got {text!r}")
    return size


def _layer_shapes(model) -> dict:
    """Feature sizes of the CNNKAE a ModelConfig describes (the same arithmetic as models.CNNKAE)."""
    c, h, w = model.shape
    channels = list(model.channels)
    k = model.kernel_size
    stride = getattr(model, "stride", 1) or 1
    if stride == 1:
        sizes = [(h - (k - 1) * i, w - (k - 1) * i) for i in range(1, len(channels) + 1)]
    else:
        sizes = [(h // stride ** i, w // stride ** i) for i in range(1, len(channels) + 1)]
    fh, fw = sizes[-1]
    return {"sizes": sizes, "flat": channels[-1] * max(fh, 1) * max(fw, 1)}


def _dense_params(n_in: int, n_out: int, order: int) -> int:
    return n_out * n_in * (order + 1) + n_out if order > 0 else n_in * n_out + n_out


def parameter_count(model) -> int:
    """Parameters of the model a ModelConfig describes, without building it."""
    shapes = _layer_shapes(model)
    c = model.shape[0]
    k2 = model.kernel_size ** 2
    convs = 0
    for c_in, c_out in zip([c, *model.channels[:-1]], model.channels):
        convs += c_in * c_out * k2 + c_out  # encoder convolution
        convs += c_out * c_in * k2 + c_in   # the decoder's transposed one, mirrored
    return (convs + _dense_params(shapes["flat"], model.latent_dim, model.encoder_kae_order)
            + _dense_params(model.latent_dim, shapes["flat"], model.decoder_kae_order))


def activation_values(model) -> int:
    """Values one sample keeps for the backward pass: every layer's output (twice where an activation
    follows), and the powers x, x**2, ... a KAE layer multiplies."""
    shapes = _layer_shapes(model)
    maps = sum(c * h * w for c, (h, w) in zip(model.channels, shapes["sizes"]))
    c, h, w = model.shape
    pixels = c * h * w
    flat, latent = shapes["flat"], model.latent_dim
    enc = 2 * maps + flat * max(model.encoder_kae_order, 1) + 2 * latent
    dec = latent * max(model.decoder_kae_order, 1) + 2 * flat + 2 * maps + 2 * pixels
    return enc + dec + pixels


def estimate_bytes(cfg) -> int:
    """Bytes training `cfg` (a RunConfig) is expected to need at most."""
    m, t = cfg.model, cfg.train
    params = parameter_count(m)
    kae = sum(_dense_params(a, b, o) for a, b, o in (
        (_layer_shapes(m)["flat"], m.latent_dim, m.encoder_kae_order),
        (m.latent_dim, _layer_shapes(m)["flat"], m.decoder_kae_order)) if o > 0)
    state = _STATE_PER_PARAM.get(t.optimizer.lower(), 2)
    weights = FLOAT * (params * (2 + state) + 2 * kae)
    per_sample = activation_values(m)
    train = FLOAT * per_sample * t.batch_size * 2  # what forward keeps, and the gradients flowing back
    val = FLOAT * per_sample * t.validation_batch_size // 2  # no graph kept: about half
    pixels = math.prod(m.shape)
    dataset = cfg.data.dataset
    # Held as float32; loading converts from the files' bytes, so briefly two copies exist.
    images = 2 * FLOAT * pixels * (_TRAIN_IMAGES.get(dataset, 0) + _VAL_IMAGES.get(dataset, 0))
    return BASE_BYTES + weights + train + val + images


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:,.0f} MiB"


def check_memory(configs, limit: int | None = None, flag: str = "--max-memory") -> None:
    """Refuse, naming the run and the figures, any config whose estimate exceeds `limit` bytes (default:
    MEMORY_SHARE of this machine's memory)."""
    limit = default_limit() if limit is None else limit
    seen = set()
    for cfg in configs:
        key = (cfg.model, cfg.train.batch_size, cfg.train.validation_batch_size, cfg.train.optimizer,
               cfg.data.dataset)
        if key in seen:
            continue
        seen.add(key)
        need = estimate_bytes(cfg)
        if need > limit:
            share = ("the limit set" if os.environ.get("KAEC_MAX_MEMORY") or limit != default_limit()
                     else f"{MEMORY_SHARE:.0%} of this machine's {gib(physical_memory())}")
            raise KaecError(
                f"{cfg.source or cfg.experiment_name}: "
                f"{'run ' + cfg.matrix_slug if cfg.matrix else 'the run'} would need about {gib(need)} of memory "
                f"({parameter_count(cfg.model):,} parameters, batch {cfg.train.batch_size}), more than {gib(limit)} "
                f"({share}; {flag} changes it)")


def env_threads() -> int | None:
    """$KAEC_THREADS (what `kaec train --threads` sets), if it holds a positive integer."""
    text = os.environ.get("KAEC_THREADS", "")
    return int(text) if text.isdigit() and int(text) > 0 else None


def set_task_threads(cfgs, user: str | None, share: int | None) -> None:
    """$KAEC_THREADS for a task in a worker process (a local worker, a Ray task): the user's `--threads`
    first, then the runs' own train.threads (which training reads itself), else `share`, the worker's part
    of the machine. Nothing is left over from the worker's previous task."""
    if user:
        os.environ["KAEC_THREADS"] = user
    elif share and getattr(cfgs[0].train, "threads", None) is None:
        os.environ["KAEC_THREADS"] = str(share)
    else:
        os.environ.pop("KAEC_THREADS", None)


def default_threads() -> int:
    """CPU threads for training when neither `--threads` nor `train.threads` says: one. On the 2-core
    development machine shared with other jobs, one thread trained the quick-start model 5.9-6.4x faster
    than torch's default of two (`benchmarks/train_threads.py`): a second thread
    waits on a core someone else holds, and every step waits for it."""
    return 1
