"""One training run: build, train on a sample budget, validate, checkpoint, summarise.

The batch order is a pure function of (seed, epoch), and checkpoints land on batch boundaries, so a run
resumed from its checkpoint sees exactly the batches it would have seen without the interruption.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from kaecompress import fileio

from kaecompress.experiments import runs
from kaecompress.experiments.config import RunConfig, check_optimizer
from kaecompress.experiments.data import load_images
from kaecompress.errors import KaecError
from kaecompress.nn.entropy import round_ste
from kaecompress.nn.models import CNNKAE, count_parameters

CHECKPOINT_VERSION = 1


class Progress(Protocol):
    """What a caller sees of a run in progress (the CLI draws a progress bar from it)."""

    def start(self, total: int, done: int) -> None: ...
    def update(self, inputs: int, loss: float, throughput: float) -> None: ...
    def validated(self, inputs: int, val_loss: float) -> None: ...


class _Silent:
    def start(self, total, done): pass
    def update(self, inputs, loss, throughput): pass
    def validated(self, inputs, val_loss): pass


def build_model(cfg: RunConfig) -> CNNKAE:
    m = cfg.model
    return CNNKAE(shape=m.shape, latent_dim=m.latent_dim, channels=m.channels, kernel_size=m.kernel_size,
                  encoder_kae_order=m.encoder_kae_order, decoder_kae_order=m.decoder_kae_order,
                  activation=m.activation, latent_activation=m.latent_activation,
                  output_activation=m.output_activation, stride=m.stride,
                  prior=cfg.codec.prior if cfg.codec else None)


def step_loss(model: CNNKAE, x: torch.Tensor, cfg: RunConfig, step_seed: int) -> torch.Tensor:
    """The training loss of one batch: MSE, or for a codec model bits per pixel + lambda * 255^2 * MSE.

    A codec model's decoder sees the latents rounded (straight-through gradient); its rate is the
    information content of the latents plus uniform noise, drawn from a generator seeded per step so that
    a resumed run draws the same noise.
    """
    if cfg.codec is None:
        return F.mse_loss(model(x), x)
    z = model.encoder(x)
    x_hat = model.decoder(round_ste(z))
    gen = torch.Generator(device=z.device).manual_seed(step_seed)
    noise = torch.rand(z.shape, generator=gen, device=z.device, dtype=z.dtype) - 0.5
    bpp = model.prior.bits(z + noise).sum() / (x.shape[0] * x.shape[-1] * x.shape[-2])
    return bpp + cfg.codec.lmbda * 255.0 ** 2 * F.mse_loss(x_hat, x)


def noise_seed(cfg: RunConfig, inputs: int) -> int:
    """The seed of a codec run's noise for the step after `inputs` inputs: resumed and packed runs draw it too."""
    return cfg.seed * 1_000_003 + inputs


def learning_rate(cfg: RunConfig, inputs: int) -> float:
    """The learning rate after `inputs` inputs: a pure function of them, so a resumed run follows it too."""
    tc = cfg.train
    if tc.lr_schedule == "cosine":
        return tc.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(inputs / tc.max_inputs, 1.0))))
    if tc.lr_drop_at is not None and inputs >= tc.lr_drop_at * tc.max_inputs:
        return tc.lr / 10
    return tc.lr


def build_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    return make_optimizer(cfg.train.optimizer, params, cfg.train.lr, cfg.train.weight_decay)


def make_optimizer(name: str, params, lr: float, weight_decay: float | None = None) -> torch.optim.Optimizer:
    """A torch.optim optimizer by (case-insensitive) name; the fused implementation where it has one,
    which on this CPU makes an AdamW step of the KAE models 4-5x faster than the default loop."""
    valid = sorted(n for n, c in vars(torch.optim).items()
                   if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer)
    match = {n.lower(): n for n in valid}.get(name.lower())
    if match is None:
        raise KaecError(f"train.optimizer: unknown optimizer {name!r} (expected a torch.optim name: "
                        f"{', '.join(valid)})")
    check_optimizer(match, "train.optimizer")
    cls = getattr(torch.optim, match)
    kwargs = {"lr": lr}
    if weight_decay is not None:
        kwargs["weight_decay"] = weight_decay
    params = list(params)
    if "fused" in inspect.signature(cls).parameters and all(p.device.type in ("cpu", "cuda") for p in params):
        kwargs["fused"] = True
    try:
        return cls(params, **kwargs)
    except (TypeError, ValueError) as e:  # e.g. a negative weight_decay, or one the optimizer does not take
        raise KaecError(f"train: {match} refuses these settings ({e})") from None


def resolve_device(name: str, where: str = "train.device") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KaecError(f"{where}: {name} requested but no CUDA device is available")
    return torch.device(name)


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Mean squared error over every pixel of `images`, in eval mode."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device, non_blocking=True)
        total += F.mse_loss(model(x), x, reduction="sum").double()
    model.train(was_training)
    return total.item() / images.numel()


@dataclass
class _State:
    inputs: int = 0
    train_time: float = 0.0
    best_val: float = math.inf
    last_val: float = math.nan
    mid_step: bool = False


class _Scalars:
    """TensorBoard scalars when tensorboard is installed; otherwise nothing."""

    def __init__(self, log_dir: Path) -> None:
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self.writer = SummaryWriter(str(log_dir))

    def add(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def resumed_model(cfg: RunConfig, run_dir: Path, dev):
    """The run's model and optimizer on `dev`: seeded as a fresh run is, then resumed from its checkpoint where
    it has one (the training state of a fresh run otherwise)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model.parameters())
    state = _State()
    ckpt_path = run_dir / runs.CHECKPOINT
    if ckpt_path.is_file():
        state = _load_checkpoint(ckpt_path, model, optimizer, cfg)
    model.to(dev)
    _optimizer_to(optimizer, dev)
    return model, optimizer, state


def train_run(cfg: RunConfig, run_dir: str | Path, *, data_root: str | Path | None = None,
              device: str | None = None, progress: Progress | None = None,
              train_images: torch.Tensor | None = None, val_images: torch.Tensor | None = None,
              max_memory: int | None = None, threads: int | None = None) -> dict:
    """Train one run into `run_dir` (resuming from its checkpoint if there is one); return its summary.

    A finished run is not trained again: its summary is returned as it is. Ctrl-C saves a checkpoint and
    re-raises KeyboardInterrupt, so the next call resumes where this one stopped. A run whose memory
    estimate exceeds `max_memory` (default: a share of this machine's memory) is refused before anything
    is allocated. A full disk marks the run failed, keeps its last checkpoint and raises KaecError.
    """
    from kaecompress.experiments.resources import check_memory, env_threads

    check_memory([cfg], max_memory)
    with _threads(threads or env_threads() or cfg.train.threads):
        try:
            return _train_run(cfg, run_dir, data_root, device, progress, train_images, val_images)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            runs.mark_failed(run_dir, cfg, f"disk full ({e.filename or run_dir})")
            raise KaecError(f"{e.filename or run_dir}: disk full; run {cfg.run_folder} marked failed, its last "
                            "checkpoint kept (free some space and run the same command again to resume)") from None


@contextlib.contextmanager
def _threads(n: int | None):
    """torch's intra-op threads for the run, put back afterwards."""
    from kaecompress.experiments.resources import default_threads

    before = torch.get_num_threads()
    torch.set_num_threads(n or default_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_run(cfg, run_dir, data_root, device, progress, train_images, val_images) -> dict:
    run_dir = Path(run_dir)
    progress = progress or _Silent()
    recipe = cfg.recipe()
    status = runs.run_status(run_dir, recipe)
    if status == "stale":  # a checkpoint trained with other settings is refused on loading it, below
        raise KaecError(runs.stale_message(run_dir, runs.changed_settings(runs.read_json(run_dir / runs.SUMMARY),
                                                                          recipe)))
    if status in runs.DONE_STATES:
        return runs.read_json(run_dir / runs.SUMMARY)

    # Everything that can reject the input happens before the run directory is touched.
    dev = resolve_device(device or cfg.train.device)
    root = data_root or cfg.data.root
    if train_images is None:
        train_images = load_images(cfg.data.dataset, True, root, cfg.model.shape)
    if val_images is None:
        val_images = load_images(cfg.data.dataset, False, root, cfg.model.shape)
    model, optimizer, state = resumed_model(cfg, run_dir, dev)
    ckpt_path = run_dir / runs.CHECKPOINT
    if dev.type == "cuda":  # the whole set fits on the device and saves a copy per batch
        train_images = train_images.to(dev)

    prepare_run_dir(run_dir, cfg, status, state.inputs)
    scalars = _Scalars(run_dir / "tb")
    try:
        with _interrupt_at_batch_end() as stop:
            status = _loop(cfg, model, optimizer, train_images, val_images, dev, state, run_dir, progress,
                           scalars, stop)
    except KeyboardInterrupt:
        if not state.mid_step:  # else the last checkpoint stays: it matches its own counters
            _save_checkpoint(ckpt_path, model, optimizer, cfg, state)
        raise
    finally:
        scalars.close()
    return finish_run(run_dir, cfg, status, state, model, dev, val_images,
                      save_checkpoint=lambda: _save_checkpoint(ckpt_path, model, optimizer, cfg, state))


def finish_run(run_dir: Path, cfg: RunConfig, status: str, state: _State, model, dev: torch.device, val_images,
               save_checkpoint: Callable[[], object]) -> dict:
    """Write the run's summary. A finished run first gets its last checkpoint (`save_checkpoint()`), a codec
    model's prior its integer tables before it and its bytes measured after it."""
    summary = run_summary(cfg, status, state, model, dev)
    if status == "finished":
        if cfg.codec is not None:
            model.prior.freeze()  # the integer tables every file of this model is coded with
        save_checkpoint()
        if cfg.codec is not None:  # after the checkpoint: a failure here keeps the trained weights
            from kaecompress.experiments.codecstats import measure

            summary.update(measure(model.cpu().eval(), val_images))
    runs.atomic_write_json(run_dir / runs.SUMMARY, summary)
    return summary


def prepare_run_dir(run_dir: Path, cfg: RunConfig, status: str, inputs: int) -> None:
    """The run folder as training (re)starts it: stale temporaries gone, its config written, its metrics cut
    back to the checkpoint's `inputs`. Shared with kaecompress.experiments.packing."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob(".*.tmp"):  # left by a write that a kill -9 cut short
        stale.unlink(missing_ok=True)
    if status == "failed":  # resuming: the run is interrupted again until it ends
        (run_dir / runs.SUMMARY).unlink(missing_ok=True)
    import yaml

    fileio.atomic_write_text(run_dir / runs.CONFIG, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    runs.truncate_metrics(run_dir, inputs)


def run_summary(cfg: RunConfig, status: str, state: _State, model, dev: torch.device) -> dict:
    """The summary a run ends with (before any codec measurements)."""
    return {
        "status": status,
        "experiment_name": cfg.experiment_name,
        "matrix_id": cfg.matrix_id,
        "matrix_slug": cfg.matrix_slug,
        "matrix": cfg.matrix,
        "recipe": cfg.recipe(),
        "inputs": state.inputs,
        "max_inputs": cfg.train.max_inputs,
        "final_val_loss": None if math.isnan(state.last_val) else state.last_val,
        "best_val_loss": None if math.isinf(state.best_val) else state.best_val,
        "train_time_s": state.train_time,
        "throughput": state.inputs / state.train_time if state.train_time > 0 else None,
        "params": count_parameters(model),
        "compression_ratio": model.compression_ratio,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def epoch_order(cfg: RunConfig, n: int, epoch: int) -> torch.Tensor:
    """The order of the `n` training images in `epoch`: a pure function of the run's seed and the epoch."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))


@contextlib.contextmanager
def _interrupt_at_batch_end():
    """Turn the first Ctrl-C into a flag the loop checks between batches, so the checkpoint it saves
    matches the inputs counted; a second Ctrl-C interrupts at once."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag["stop"] = True
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _loop(cfg, model, optimizer, train_images, val_images, dev, state, run_dir, progress, scalars, stop) -> str:
    tc = cfg.train
    n = len(train_images)
    metrics = fileio.open_append(run_dir / runs.METRICS)  # a link planted there is refused, not followed
    progress.start(tc.max_inputs, state.inputs)
    loss_sum = torch.zeros((), device=dev)
    loss_count = 0
    last_ckpt = time.monotonic()
    seg_start = None
    model.train()
    try:
        while state.inputs < tc.max_inputs:
            epoch, offset = divmod(state.inputs, n)
            order = epoch_order(cfg, n, epoch)
            order = order.to(train_images.device)
            seg_start = time.perf_counter()
            for start in range(offset, n, tc.batch_size):
                size = min(tc.batch_size, n - start, tc.max_inputs - state.inputs)
                x = train_images[order[start:start + size]].to(dev, non_blocking=True)
                state.mid_step = True  # weights and counters disagree until the inputs are counted
                lr = learning_rate(cfg, state.inputs)
                if optimizer.param_groups[0]["lr"] != lr:
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                loss = step_loss(model, x, cfg, noise_seed(cfg, state.inputs))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * size
                loss_count += size
                state.inputs += size
                state.mid_step = False
                if loss_count >= tc.log_every or state.inputs >= tc.max_inputs:
                    mean = loss_sum.item() / loss_count  # one device sync per log interval
                    if not math.isfinite(mean):
                        state.train_time += time.perf_counter() - seg_start
                        _write(metrics, {"inputs": state.inputs, "train_loss": None})
                        return "diverged"
                    _write(metrics, {"inputs": state.inputs, "train_loss": mean})
                    scalars.add("loss/train", mean, state.inputs)
                    elapsed = state.train_time + time.perf_counter() - seg_start
                    progress.update(state.inputs, mean, state.inputs / elapsed if elapsed > 0 else 0.0)
                    loss_sum.zero_()
                    loss_count = 0
                if state.inputs >= tc.max_inputs or start + size >= n:
                    break  # the epoch end or the budget: validate first, then honour a Ctrl-C
                if stop["stop"]:
                    raise KeyboardInterrupt
                if time.monotonic() - last_ckpt > tc.checkpoint_every_s:
                    state.train_time += time.perf_counter() - seg_start
                    _save_checkpoint(run_dir / runs.CHECKPOINT, model, optimizer, cfg, state, metrics)
                    last_ckpt = time.monotonic()
                    seg_start = time.perf_counter()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            state.train_time += time.perf_counter() - seg_start
            seg_start = None
            # Validate at every epoch end and at the budget.
            val = evaluate(model, val_images, tc.validation_batch_size, dev)
            state.last_val = val
            if not math.isfinite(val):
                _write(metrics, {"inputs": state.inputs, "val_loss": None})
                return "diverged"
            state.best_val = min(state.best_val, val)
            _write(metrics, {"inputs": state.inputs, "val_loss": val})
            scalars.add("loss/validation", val, state.inputs)
            progress.validated(state.inputs, val)
            if state.inputs < tc.max_inputs:
                _save_checkpoint(run_dir / runs.CHECKPOINT, model, optimizer, cfg, state, metrics)
                last_ckpt = time.monotonic()
                if stop["stop"]:
                    raise KeyboardInterrupt
        return "finished"
    except KeyboardInterrupt:
        if seg_start is not None:
            state.train_time += time.perf_counter() - seg_start
        raise
    finally:
        metrics.close()


def _write(f, row: dict) -> None:
    import json

    f.write(json.dumps(row) + "\n")
    f.flush()


def _save_checkpoint(path: Path, model, optimizer, cfg: RunConfig, state: _State, metrics=None) -> None:
    if metrics is not None:
        metrics.flush()
    runs.atomic_torch_save({
        "version": CHECKPOINT_VERSION,
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "inputs": state.inputs,
        "train_time": state.train_time,
        "best_val": state.best_val,
        "last_val": state.last_val,
    }, path)


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's contents, loaded without unpickling arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        # torch's own message here advises weights_only=False, which would run code from the file: not ours
        reason = ("it is not a plain-tensor PyTorch file, and nothing else is ever unpickled"
                  if "weights_only" in text else f"{type(e).__name__}: {text.splitlines()[0] if text else ''}")
        raise KaecError(f"{path}: not a readable kaecompress checkpoint ({reason})") from None


def _load_checkpoint(path: Path, model, optimizer, cfg: RunConfig) -> _State:
    ckpt = load_checkpoint(path)
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise KaecError(f"{path}: checkpoint format {ckpt.get('version')!r}, expected {CHECKPOINT_VERSION}; "
                        "use --reset to start over")
    changes = runs.changed_settings(ckpt, cfg.recipe())
    if changes:
        raise KaecError(runs.stale_message(path.parent, changes))
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise KaecError(f"{path}: checkpoint does not match the model ({str(e).splitlines()[0]})") from None
    return _State(ckpt["inputs"], ckpt["train_time"], ckpt["best_val"], ckpt["last_val"])


def _optimizer_to(optimizer, dev: torch.device) -> None:
    for st in optimizer.state.values():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and k != "step":
                st[k] = v.to(dev)
