"""Packed training: several runs that share their shapes trained together as one batched model.

Runs pack when they have the same model config, batch size, validation batch size, budget, dataset,
device and prior (codec runs). They may differ in everything that only changes numbers: trial/seed,
optimizer, learning rate and its schedule, weight decay, log interval, a codec run's lambda.

How: each member is built and resumed exactly as `train.train_run` does it (same seed, same checkpoint
loader). Then every parameter is stacked into one (members, ...) leaf tensor and each member's own
parameters become views of its slice, so that its module, its optimizer (one per member, the one its
config names, stepped on its slice of the stacked gradient) and its state dict keep working unchanged.
Members whose optimizers step alike (trials of one setting) step as one optimizer over their slices
(StackedOptimizers), their own optimizers' states views of its state.
One forward pass runs all members at once: grouped convolutions (groups = members) and batched matrix
products for the dense layers, each member on its own batch drawn in its own data order; a codec run's
rate comes from its stacked prior (entropy.interval_mass) over its own noise draws. Validation,
metrics, checkpoints and summaries go through train.py's helpers per member, so a packed run's folder is
the folder it would have had alone.
"""

from __future__ import annotations

import contextlib
import errno
import math
import time
from pathlib import Path

from kaecompress.errors import KaecError
from kaecompress.experiments import runs
from kaecompress.experiments.config import RunConfig

# torch is imported where it is used: `kaec train --pack` is checked before torch loads.

PACK_CHOICES = "auto, off or a number >= 1"
# Members per pack for --pack auto on CUDA: 1 (off) until benchmarks/gpu_check.sh's pack step has measured
# that packing pays there; on the CPU it does not (docs/results/pack_speed.json). --pack N packs anywhere.
AUTO_PACK_CUDA = 1


def parse_pack(text: str | int | None) -> str | int:
    """`--pack`: "auto", "off", or the most members per pack (1 is off)."""
    value = "auto" if text is None else str(text).strip().lower()
    if value in ("auto", "off"):
        return value
    if value.isdigit() and int(value) >= 1:
        return "off" if int(value) == 1 else int(value)
    raise KaecError(f"--pack: expected {PACK_CHOICES}, got {text!r}")


def pack_limit(pack: str | int, device) -> int:
    """The most members per pack: `auto` is AUTO_PACK_CUDA on CUDA and off on the CPU, where a grouped step
    costs about as much as the members' steps one by one (benchmarks/pack_speed.py)."""
    if pack == "off":
        return 1
    if pack == "auto":
        return AUTO_PACK_CUDA if device.type == "cuda" else 1
    return int(pack)


_NUMBERS_ONLY = ("optimizer", "lr", "weight_decay", "seed", "log_every", "checkpoint_every_s", "threads",
                 "lr_drop_at", "lr_schedule", "resources", "device")


def pack_key(cfg: RunConfig, device, data_root=None) -> tuple | None:
    """Runs with equal keys can train in one pack; None: this run never packs."""
    if not packable_model(cfg):
        return None
    train = {k: v for k, v in vars(cfg.train).items() if k not in _NUMBERS_ONLY}
    return (repr(cfg.model), repr(sorted(train.items())), cfg.data.dataset, str(data_root or cfg.data.root),
            str(device), cfg.codec and cfg.codec.prior)


def packable_model(cfg: RunConfig) -> bool:
    import torch

    from kaecompress.experiments.train import build_model

    try:
        with torch.device("meta"):
            model = build_model(cfg)
    except KaecError:
        return False
    from kaecompress.nn.entropy import FactorizedPrior

    return (all(_kind(m) is not None for m in [*model.encoder, *model.decoder])
            and (model.prior is None or type(model.prior) is FactorizedPrior))


def _kind(module) -> str | None:
    from torch import nn

    from kaecompress.nn.layers import KAELayer
    from kaecompress.nn.models import Reshape

    for cls, kind in ((nn.Conv2d, "conv"), (nn.ConvTranspose2d, "deconv"), (nn.Flatten, "flatten"),
                      (Reshape, "reshape"), (KAELayer, "kae"), (nn.Linear, "linear")):
        if type(module) is cls:
            return kind
    if not any(True for _ in module.parameters()) and not list(module.children()):
        return "elementwise"  # the activations: parameter-free and shape-preserving
    return None


class PackedModel:
    """The members' parameters stacked, and a forward pass over all of them at once. `lambdas`: the
    members' rate-distortion weights, for codec models."""

    def __init__(self, models: list, lambdas: list[float] | None = None) -> None:
        import torch

        self.models = models
        self.names = [name for name, _ in models[0].named_parameters()]
        self.params = [[m.get_parameter(name) for name in self.names] for m in models]  # per member, in names' order
        self.stacked: dict = {}
        for k, name in enumerate(self.names):
            params = [member[k] for member in self.params]
            stacked = torch.stack([p.detach() for p in params]).requires_grad_(True)
            for i, p in enumerate(params):
                p.data = stacked.detach()[i]  # the member's parameter is now its slice: one storage for all
            self.stacked[name] = stacked
        template = models[0]
        self.encoder, self.decoder = ([(f"{part}.{i}", m, _kind(m)) for i, m in enumerate(getattr(template, part))]
                                      for part in ("encoder", "decoder"))
        self.has_prior = template.prior is not None
        # the stacked prior's matrices, biases and factors, in the order FactorizedPrior lists them
        self.prior_params = [[t for n, t in self.stacked.items() if n.startswith(f"prior.{part}.")]
                             for part in ("matrices", "biases", "factors")]
        # lambda * 255^2 formed in double as train.step_loss forms it, then one float32 factor per member
        self.distortion_weights = None if lambdas is None else torch.tensor(
            [lmbda * 255.0 ** 2 for lmbda in lambdas], device=next(iter(self.stacked.values())).device)

    def encode(self, x):
        """x: (members, batch, C, H, W) -> latents (members, batch, latent_dim)."""
        b = x.shape[1]
        h = x.transpose(0, 1).reshape(b, x.shape[0] * x.shape[2], *x.shape[3:])  # members side by side as channels
        return self._through(self.encoder, h, b)

    def decode(self, z, shape):
        """z: (members, batch, latent_dim) -> reconstructions (members, batch, *shape)."""
        b = z.shape[1]
        return self._through(self.decoder, z, b).reshape(b, z.shape[0], *shape).transpose(0, 1)

    def forward(self, x):
        """x: (members, batch, C, H, W) -> reconstructions of the same shape, member i by member i's weights
        (a codec model's latents rounded first, as CNNKAE.forward does)."""
        from kaecompress.nn.entropy import round_ste

        z = self.encode(x)
        return self.decode(round_ste(z) if self.has_prior else z, x.shape[2:])

    def _through(self, layers, h, b):
        """h through `layers`: as (batch, members * channels, H, W) between convolutions, as
        (members, batch, features) between dense layers."""
        import torch
        import torch.nn.functional as F

        m = len(self.models)
        p = self.stacked
        for name, mod, kind in layers:
            w, bias = p.get(f"{name}.weight"), p.get(f"{name}.bias")
            if kind == "conv":
                h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), None if bias is None else bias.reshape(-1),
                             mod.stride, mod.padding, mod.dilation, groups=m)
            elif kind == "deconv":
                h = F.conv_transpose2d(h, w.reshape(-1, *w.shape[2:]), None if bias is None else bias.reshape(-1),
                                       mod.stride, mod.padding, mod.output_padding, groups=m, dilation=mod.dilation)
            elif kind == "flatten":
                h = h.reshape(b, m, -1).transpose(0, 1)  # (members, batch, features)
            elif kind == "reshape":
                h = h.transpose(0, 1).reshape(b, m * mod.shape[0], *mod.shape[1:])
            elif kind == "linear":
                h = torch.baddbmm(bias[:, None, :], h, w.transpose(1, 2)) if bias is not None \
                    else torch.bmm(h, w.transpose(1, 2))
            elif kind == "kae":
                h = _kae(h, p[f"{name}.coeffs"], bias)
            else:
                h = mod(h)
        return h

    def losses(self, x, noise_seeds: list[int]):
        """Each member's training loss on its own batch, (members,): as train.step_loss gives it alone, the
        mean squared error, or for codec models bits per pixel + lambda * 255^2 * MSE with each member's
        noise drawn from its own generator seeded with its `noise_seeds` entry."""
        import torch
        import torch.nn.functional as F

        from kaecompress.nn.entropy import interval_mass, round_ste

        def mse(x_hat):
            return F.mse_loss(x_hat, x, reduction="none").reshape(x.shape[0], -1).mean(dim=1)

        if not self.has_prior:
            return mse(self.forward(x))
        z = self.encode(x)
        x_hat = self.decode(round_ste(z), x.shape[2:])
        noise = torch.stack([torch.rand(z.shape[1:], generator=torch.Generator(device=z.device).manual_seed(seed),
                                        device=z.device, dtype=z.dtype) for seed in noise_seeds]) - 0.5
        mass = interval_mass(*self.prior_params, z + noise)
        bpp = -torch.log2(mass).sum(dim=(1, 2)) / (x.shape[1] * x.shape[-1] * x.shape[-2])
        return bpp + self.distortion_weights * mse(x_hat)

    def zero_grad(self) -> None:
        for t in self.stacked.values():
            t.grad = None
        for member in self.params:
            for param in member:
                param.grad = None

    def hand_grads(self, i: int) -> None:
        """Member i's slice of each stacked gradient, as the gradient its own optimizer steps on."""
        for param, name in zip(self.params[i], self.names):
            param.grad = self.stacked[name].grad[i]

    def clear(self, i: int) -> None:
        """Zero a diverged member's weights, so that its NaNs cost nothing further in the shared pass."""
        import torch

        with torch.no_grad():
            for t in self.stacked.values():
                t[i].zero_()


# Optimizers whose update of each number depends only on that number's own gradient and state: one of them
# over several members' stacked parameters steps each member as its own would.
ELEMENTWISE_OPTIMIZERS = ("adam", "adamw", "sgd")
_SAME_STEP = ("optimizer", "lr", "weight_decay", "lr_schedule", "lr_drop_at")


def step_signature(cfg: RunConfig) -> tuple | None:
    """Runs with equal signatures step alike (the same elementwise optimizer, settings and learning-rate
    schedule: trials of one setting, say); None: this run's optimizer steps on its own."""
    if cfg.train.optimizer.lower() not in ELEMENTWISE_OPTIMIZERS:
        return None
    return tuple(repr(getattr(cfg.train, k)) for k in _SAME_STEP)


class StackedOptimizers:
    """The members' optimizer steps, a group at a time: consecutive members with the same step_signature
    (and optimizer states that agree) share one optimizer over their slice of the stacked parameters, which
    costs Python one step, not one per member; the others step on their own. The members' optimizers keep
    their state as views of their group's, so that their checkpoints are what they would be alone;
    `unstack()` gives each its own copy back, after which they step one by one again."""

    def __init__(self, packed: PackedModel, cfgs: list[RunConfig], optimizers: list) -> None:
        self.packed, self.cfgs, self.optimizers = packed, cfgs, optimizers
        self.groups: list[tuple[int, int, object]] = []  # (first member, past the last, optimizer)
        self.linked: set[int] = set()
        self.alone: list[int] = []
        start = 0
        while start < len(cfgs):
            stop = start + 1
            while stop < len(cfgs) and step_signature(cfgs[stop]) == step_signature(cfgs[start]):
                stop += 1
            if stop - start > 1 and step_signature(cfgs[start]) is not None and self._agree(start, stop):
                self._group(start, stop)
            else:
                self.alone += range(start, stop)
            start = stop

    def _states(self, start: int, stop: int) -> list[list[dict]]:
        """Per parameter (in names' order), the members' optimizer states."""
        return [[self.optimizers[i].state.get(self.packed.params[i][k], {}) for i in range(start, stop)]
                for k in range(len(self.packed.names))]

    def _agree(self, start: int, stop: int) -> bool:
        """The members' states hold the same entries and the same step count: one group state can hold them."""
        import torch

        for first, *others in self._states(start, stop):
            for state in others:
                if state.keys() != first.keys():
                    return False
                for key, value in first.items():
                    if not _per_number(value) and not (torch.equal(state[key], value)
                                                       if isinstance(value, torch.Tensor) else state[key] == value):
                        return False
        return True

    def _group(self, start: int, stop: int) -> None:
        import torch

        from kaecompress.experiments.train import make_optimizer

        tc = self.cfgs[start].train
        views = [self.packed.stacked[name].detach()[start:stop] for name in self.packed.names]  # share storage
        optimizer = make_optimizer(tc.optimizer, views, tc.lr, tc.weight_decay)
        index = len(self.groups)
        self.groups.append((start, stop, optimizer))
        states = self._states(start, stop)
        if any(states[0]):  # resumed: the members' saved states, stacked
            for view, per_member in zip(views, states):
                optimizer.state[view] = {key: torch.stack([s[key] for s in per_member]) if _per_number(value)
                                         else value for key, value in per_member[0].items()}
            self._link(index)

    def step(self, inputs: int) -> None:
        from kaecompress.experiments.train import learning_rate

        for index, (start, stop, optimizer) in enumerate(self.groups):
            for view, name in zip(optimizer.param_groups[0]["params"], self.packed.names):
                view.grad = self.packed.stacked[name].grad[start:stop]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(self.cfgs[start], inputs)
            optimizer.step()
            if index not in self.linked:  # a fresh group's first step created its state
                self._link(index)
        for i in self.alone:
            self.packed.hand_grads(i)
            self.optimizers[i].step()

    def _link(self, index: int) -> None:
        """Each member's optimizer state: its slice of every entry of its group's (the step count shared)."""
        start, stop, optimizer = self.groups[index]
        for view, k in zip(optimizer.param_groups[0]["params"], range(len(self.packed.names))):
            state = optimizer.state[view]
            for i in range(start, stop):
                self.optimizers[i].state[self.packed.params[i][k]] = {
                    key: value[i - start] if _per_number(value) else value for key, value in state.items()}
        self.linked.add(index)

    def unstack(self) -> None:
        """Each member's optimizer state its own again (copied out), to step member by member from here."""
        import torch

        for start, stop, _ in self.groups:
            for i in range(start, stop):
                state = self.optimizers[i].state
                for p in self.packed.params[i]:
                    if p in state:
                        state[p] = {key: value.clone() if isinstance(value, torch.Tensor) else value
                                    for key, value in state[p].items()}


def _per_number(value) -> bool:
    """A state entry with one value per number of the parameter (not a scalar such as the step count)."""
    import torch

    return isinstance(value, torch.Tensor) and value.dim() > 0


def _kae(x, coeffs, bias):
    """KAELayer over stacked members: x (M, B, in), coeffs (M, out, in, order+1), bias (M, 1, out)."""
    import torch

    m, out_dim, in_dim, n_terms = coeffs.shape
    const = coeffs[..., 0].sum(dim=2)
    if bias is not None:
        const = const + bias.reshape(m, out_dim)
    if n_terms == 1:
        return const[:, None, :].expand(m, x.shape[1], out_dim)
    powers = [x]
    for _ in range(n_terms - 2):
        powers.append(powers[-1] * x)
    weight = coeffs[..., 1:].permute(0, 1, 3, 2).reshape(m, out_dim, (n_terms - 1) * in_dim)
    return torch.baddbmm(const[:, None, :], torch.cat(powers, dim=2), weight.transpose(1, 2))


class _Copied:
    """A member's model or optimizer as a checkpoint sees it: every tensor of its state copied out of the
    stacked ones, so that a file holds one member only (torch.save writes a view's whole storage)."""

    def __init__(self, owner) -> None:
        self.owner = owner

    def state_dict(self) -> dict:
        return _copied(self.owner.state_dict())


def _copied(value):
    import torch

    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    return value


class _Member:
    def __init__(self, cfg, run_dir, status, model, optimizer, state, progress) -> None:
        self.cfg, self.run_dir, self.status = cfg, Path(run_dir), status
        self.model, self.optimizer, self.state = model, optimizer, state
        self.progress = progress
        self.metrics = None
        self.scalars = None
        self.summary: dict | None = None
        self.loss_count = 0

    def checkpoint(self) -> None:
        from kaecompress.experiments.train import _save_checkpoint

        _save_checkpoint(self.run_dir / runs.CHECKPOINT, _Copied(self.model), _Copied(self.optimizer),
                         self.cfg, self.state, self.metrics)


def train_pack(cfgs: list[RunConfig], run_dirs: list[str | Path], *, train_images,
               val_images, device: str | None = None, progresses: list | None = None,
               max_memory: int | None = None, threads: int | None = None,
               stack_optimizers: bool = True) -> list[dict]:
    """Train `cfgs` into `run_dirs` as one pack (each resuming from its own checkpoint); their summaries,
    in order. Finished runs are returned as they are; runs that cannot share the pack (another resume
    point) are trained alone with `train.train_run`. Ctrl-C checkpoints every member and re-raises.
    Members whose optimizers step alike step as one (`StackedOptimizers`) unless `stack_optimizers` is
    False (benchmarks/pack_speed.py compares)."""
    from kaecompress.experiments.resources import check_memory, default_limit, env_threads
    from kaecompress.experiments.train import _threads

    limit = default_limit() if max_memory is None else max_memory
    check_memory(cfgs, limit // max(len(cfgs), 1))  # the pack holds every member at once
    progresses = progresses or [None] * len(cfgs)
    with _threads(threads or env_threads() or cfgs[0].train.threads):
        members: list[_Member] = []
        try:
            return _train_pack(cfgs, [Path(d) for d in run_dirs], train_images, val_images, device, progresses,
                               members, stack_optimizers)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            for member in members:
                if member.summary is None:
                    runs.mark_failed(member.run_dir, member.cfg, f"disk full ({e.filename or member.run_dir})")
            raise KaecError(f"{e.filename}: disk full; the pack's unfinished runs marked failed, their last "
                            "checkpoints kept (free some space and run the same command again to resume)") from None


def _train_pack(cfgs, run_dirs, train_images, val_images, device, progresses, members,
                stack_optimizers) -> list[dict]:
    from kaecompress.experiments.train import _Scalars, _Silent, resolve_device, resumed_model, train_run

    summaries: list[dict | None] = [None] * len(cfgs)
    keys = set()
    for i, (cfg, run_dir) in enumerate(zip(cfgs, run_dirs)):
        recipe = cfg.recipe()
        status = runs.run_status(run_dir, recipe)
        if status == "stale":
            raise KaecError(runs.stale_message(run_dir, runs.changed_settings(runs.read_json(run_dir / runs.SUMMARY),
                                                                              recipe)))
        if status in runs.DONE_STATES:
            summaries[i] = runs.read_json(run_dir / runs.SUMMARY)
            continue
        dev = resolve_device(device or cfg.train.device)
        keys.add(pack_key(cfg, dev))
        model, optimizer, state = resumed_model(cfg, run_dir, dev)  # as the run alone starts or resumes
        members.append(_Member(cfg, run_dir, status, model, optimizer, state, progresses[i] or _Silent()))
        members[-1].index = i
    if len(keys) > 1 or None in keys:
        raise KaecError("these runs cannot train in one pack (different shapes, budgets, data, devices or priors)")
    # Members must stand at the same point of their budget: the most common one packs, the others train alone.
    starts = [m.state.inputs for m in members]
    common = max(set(starts), key=starts.count) if starts else 0
    alone = [m for m in members if m.state.inputs != common]
    members[:] = [m for m in members if m.state.inputs == common]
    if len(members) == 1:
        alone, members[:] = alone + members, []
    for m in alone:
        summaries[m.index] = train_run(m.cfg, m.run_dir, device=device, progress=m.progress,
                                       train_images=train_images, val_images=val_images)
    if members:
        dev = next(members[0].model.parameters()).device
        if dev.type == "cuda":
            train_images = train_images.to(dev)
        for m in members:
            from kaecompress.experiments.train import prepare_run_dir

            prepare_run_dir(m.run_dir, m.cfg, m.status, m.state.inputs)
        # members that step alike side by side, to step as one group (StackedOptimizers)
        order = {}
        for m in members:
            order.setdefault(step_signature(m.cfg) or ("alone", m.index), []).append(m)
        members[:] = [m for group in order.values() for m in group]
        codec = members[0].cfg.codec is not None
        packed = PackedModel([m.model for m in members], [m.cfg.codec.lmbda for m in members] if codec else None)
        stack = contextlib.ExitStack()
        with stack:
            for m in members:
                m.metrics = stack.enter_context(_open_metrics(m.run_dir))
                m.scalars = _Scalars(m.run_dir / "tb")
                stack.callback(m.scalars.close)
            _pack_loop(members, packed, train_images, val_images, dev, stack_optimizers)
        for m in members:
            summaries[m.index] = m.summary
    return summaries


@contextlib.contextmanager
def _open_metrics(run_dir: Path):
    from kaecompress import fileio

    f = fileio.open_append(run_dir / runs.METRICS)
    try:
        yield f
    finally:
        f.close()


def _finish(member: _Member, status: str, dev, val_images) -> None:
    from kaecompress.experiments.train import finish_run

    member.summary = finish_run(member.run_dir, member.cfg, status, member.state, member.model, dev, val_images,
                                save_checkpoint=member.checkpoint)


def _pack_loop(members: list[_Member], packed: PackedModel, train_images, val_images, dev,
               stack_optimizers: bool = True) -> None:
    import torch

    from kaecompress.experiments.train import (_interrupt_at_batch_end, _write, epoch_order, evaluate, learning_rate,
                                               noise_seed)

    tc = members[0].cfg.train  # batch size, budget and validation batch size are the pack's
    n, count = len(train_images), len(members)
    inputs = members[0].state.inputs
    for m in members:
        m.progress.start(tc.max_inputs, inputs)
    loss_sum = torch.zeros(count, device=dev)
    active = list(range(count))
    every = min(m.cfg.train.checkpoint_every_s for m in members)
    last_ckpt = time.monotonic()
    seg_start = None

    def live():
        return [members[i] for i in active]

    stacked = [StackedOptimizers(packed, [m.cfg for m in members], [m.optimizer for m in members])] \
        if stack_optimizers else []

    def diverge(i: int, row: dict) -> None:
        m = members[i]
        _write(m.metrics, row)
        active.remove(i)
        packed.clear(i)
        if stacked:  # the others step one by one from here, each on its own state
            stacked.pop().unstack()
        _finish(m, "diverged", dev, val_images)

    for model in packed.models:
        model.train()
    try:
        with _interrupt_at_batch_end() as stop:
            while inputs < tc.max_inputs and active:
                epoch, offset = divmod(inputs, n)
                orders = torch.stack([epoch_order(m.cfg, n, epoch) for m in members]).to(train_images.device)
                seg_start = time.perf_counter()
                for start in range(offset, n, tc.batch_size):
                    size = min(tc.batch_size, n - start, tc.max_inputs - inputs)
                    x = train_images[orders[:, start:start + size]].to(dev, non_blocking=True)
                    for m in live():
                        m.state.mid_step = True
                        lr = learning_rate(m.cfg, inputs)
                        if m.optimizer.param_groups[0]["lr"] != lr:
                            for group in m.optimizer.param_groups:
                                group["lr"] = lr
                    losses = packed.losses(x, [noise_seed(m.cfg, inputs) for m in members])
                    packed.zero_grad()
                    (losses.sum() if len(active) == count else losses[active].sum()).backward()
                    if stacked:
                        stacked[0].step(inputs)
                    else:
                        for i in active:
                            packed.hand_grads(i)
                            members[i].optimizer.step()
                    loss_sum += losses.detach() * size
                    inputs += size
                    for m in live():
                        m.state.inputs = inputs
                        m.state.mid_step = False
                        m.loss_count += size
                    shown = []  # every member's row is written before any progress callback may raise
                    for i in list(active):
                        m = members[i]
                        if m.loss_count >= m.cfg.train.log_every or inputs >= tc.max_inputs:
                            mean = loss_sum[i].item() / m.loss_count
                            if not math.isfinite(mean):
                                m.state.train_time += time.perf_counter() - seg_start
                                diverge(i, {"inputs": inputs, "train_loss": None})
                                continue
                            _write(m.metrics, {"inputs": inputs, "train_loss": mean})
                            m.scalars.add("loss/train", mean, inputs)
                            shown.append((m, mean))
                            loss_sum[i] = 0
                            m.loss_count = 0
                    for m, mean in shown:
                        elapsed = m.state.train_time + time.perf_counter() - seg_start
                        m.progress.update(inputs, mean, inputs / elapsed if elapsed > 0 else 0.0)
                    if not active or inputs >= tc.max_inputs or start + size >= n:
                        break
                    if stop["stop"]:
                        raise KeyboardInterrupt
                    if time.monotonic() - last_ckpt > every:
                        now = time.perf_counter()
                        for m in live():
                            m.state.train_time += now - seg_start
                            m.checkpoint()
                        last_ckpt = time.monotonic()
                        seg_start = time.perf_counter()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                now = time.perf_counter()
                for m in live():
                    m.state.train_time += now - seg_start
                seg_start = None
                for i in list(active):  # each member on its own module: the very numbers it gets alone
                    m = members[i]
                    val = evaluate(m.model, val_images, m.cfg.train.validation_batch_size, dev)
                    m.state.last_val = val
                    if not math.isfinite(val):
                        diverge(i, {"inputs": inputs, "val_loss": None})
                        continue
                    m.state.best_val = min(m.state.best_val, val)
                    _write(m.metrics, {"inputs": inputs, "val_loss": val})
                    m.scalars.add("loss/validation", val, inputs)
                for m in live():
                    m.progress.validated(inputs, m.state.last_val)
                if inputs < tc.max_inputs:
                    for m in live():
                        m.checkpoint()
                    last_ckpt = time.monotonic()
                    if stop["stop"]:
                        raise KeyboardInterrupt
    except KeyboardInterrupt:
        now = time.perf_counter()
        for m in live():
            if seg_start is not None:
                m.state.train_time += now - seg_start
            if not m.state.mid_step:  # else the last checkpoint stays: it matches its own counters
                m.checkpoint()
        raise
    for m in live():
        try:
            _finish(m, "finished", dev, val_images)
        except (KeyboardInterrupt, KaecError):
            raise
        except Exception as e:  # a member's measurement failing (its checkpoint saved) ends no other member
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise  # train_pack's disk-full handling
            m.summary = runs.mark_failed(m.run_dir, m.cfg, e)


def plan_packs(jobs: list, pack: str | int, device: str | None, data_root=None) -> list[list]:
    """The sweep's packs: pending jobs (sweep.Job) with equal pack keys and resume points, in their order,
    cut at the pack limit; jobs left alone are not listed."""
    if pack == "off":
        return []
    from kaecompress.experiments.train import load_checkpoint, resolve_device

    groups: dict[tuple, list] = {}
    for job in jobs:
        dev = resolve_device(device or job.cfg.train.device)
        if pack_limit(pack, dev) < 2:  # e.g. auto on the CPU: nothing more to look at
            continue
        key = pack_key(job.cfg, dev, data_root)
        if key is None:
            continue
        ckpt = job.directory / runs.CHECKPOINT
        start = load_checkpoint(ckpt).get("inputs", 0) if ckpt.is_file() else 0
        groups.setdefault((key, start, pack_limit(pack, dev)), []).append(job)
    packs = []
    for (_, _, limit), members in groups.items():
        for k in range(0, len(members), max(limit, 1)):
            if len(members[k:k + limit]) > 1:
                packs.append(members[k:k + limit])
    return packs
