"""Inference benchmark: the exported encoder (compress) and decoder (decompress) in onnxruntime, next to
PyTorch eager, TorchScript and Pillow's JPEG / WebP / PNG, all on the same real images in the same run.
Without torch (the runtime install), a shipped model's own ONNX graphs are measured, next to Pillow only.

Each measurement warms up first (excluded), then calls the function until both a minimum time and a
minimum number of calls are reached, timing every call; throughput is images over total time, latency
percentiles come from the per-call times.
"""

from __future__ import annotations

import io
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from kaecompress.errors import KaecError
from kaecompress.evaluation.metrics import psnr


@dataclass
class Timing:
    calls: int
    images: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)

    def percentile(self, q: float) -> float:
        xs = sorted(self.latencies_ms)
        k = (len(xs) - 1) * q / 100
        lo, hi = math.floor(k), math.ceil(k)
        return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    def summary(self, bytes_per_image: int) -> dict:
        return {"images_per_s": self.images_per_s, "MB_per_s": self.images_per_s * bytes_per_image / 1e6,
                "p50_ms": self.percentile(50), "p90_ms": self.percentile(90), "p99_ms": self.percentile(99),
                "calls": self.calls}


def measure(fn: Callable[[], object], images_per_call: int, *, warmup: int = 3, min_seconds: float = 1.0,
            min_calls: int = 10, sync: Callable[[], None] | None = None) -> Timing:
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    latencies = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        latencies.append((time.perf_counter() - t0) * 1e3)
        total = time.perf_counter() - start
        if total >= min_seconds and len(latencies) >= min_calls:
            break
    return Timing(len(latencies), len(latencies) * images_per_call, sum(latencies) / 1e3, latencies)


def _cpu_jiffies() -> list[int] | None:
    """The machine-wide `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal ..."""
    try:
        with open("/proc/stat") as f:
            return [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


class MachineLoad:
    """What else used the CPU while we measured: /proc/stat and our own CPU time sampled at the start and
    the end, and the load average. Busy means other processes used over a quarter of the machine, the
    hypervisor stole over 5% of it, or the load average at the start was at least the number of cores."""

    def __init__(self) -> None:
        import resource

        self._resource = resource
        self.cores = os.cpu_count() or 1
        self.load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        self._jiffies = _cpu_jiffies()
        self._own = self._own_cpu()
        self._wall = time.monotonic()

    def _own_cpu(self) -> float:
        usage = self._resource.getrusage(self._resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def report(self) -> dict:
        end = _cpu_jiffies()
        own = self._own_cpu() - self._own
        wall = time.monotonic() - self._wall
        out = {"cores": self.cores, "load_1min_start": self.load_start,
               "load_1min_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
               "seconds": wall, "own_cpu_share": own / (wall * self.cores) if wall > 0 else None,
               "others_cpu_share": None, "steal_share": None}
        if self._jiffies and end:
            delta = [b - a for a, b in zip(self._jiffies, end)]
            total = sum(delta)
            if total > 0:
                hz = os.sysconf("SC_CLK_TCK")
                busy = total - delta[3] - delta[4] - delta[7]  # not idle, not waiting for I/O, not stolen
                out["others_cpu_share"] = max(0.0, (busy - own * hz) / total)
                out["steal_share"] = delta[7] / total
        reasons = []
        if out["others_cpu_share"] is not None and out["others_cpu_share"] > 0.25:
            reasons.append(f"other processes used {out['others_cpu_share']:.0%} of the CPU")
        if out["steal_share"] is not None and out["steal_share"] > 0.05:
            reasons.append(f"the hypervisor stole {out['steal_share']:.0%} of it")
        if self.load_start is not None and self.load_start >= self.cores:
            reasons.append(f"the load average was {self.load_start:.1f} on {self.cores} cores at the start")
        out["busy"] = bool(reasons)
        out["why"] = "; ".join(reasons)
        return out


def environment(threads: int | None) -> dict:
    """The machine and library versions; torch's entries are null where it is not installed."""
    from kaecompress.api import torch_installed
    from kaecompress.runtime.sessions import import_onnxruntime

    ort = import_onnxruntime()

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
           "onnxruntime": ort.__version__, "torch": None, "torch_threads": None, "ort_intra_op_threads": threads or 0,
           "gpu": None}
    if torch_installed():
        import torch

        out.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                   gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    else:
        out["gpu"] = _gpu_name()
    return out


def _gpu_name() -> str | None:
    """The first GPU's name from nvidia-smi, where there is one (the runtime install has no torch to ask)."""
    import subprocess

    try:
        p = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    names = p.stdout.strip().splitlines() if p.returncode == 0 else []
    return names[0].strip() if names else None


def pillow_round_trip(images: np.ndarray, fmt: str, **params) -> tuple[float, float]:
    """Mean bytes and mean PSNR of encoding + decoding each image with Pillow."""
    from PIL import Image

    sizes, scores = [], []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt, **params)
        sizes.append(buf.tell())
        back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"), dtype=np.float64) / 255
        scores.append(psnr(float(((back - img / 255.0) ** 2).mean())))
    return statistics.fmean(sizes), statistics.fmean(scores)


def _closest_quality(images: np.ndarray, fmt: str, target_bytes: float) -> int:
    """The quality setting whose mean file size is closest to `target_bytes`."""
    best = min(range(1, 96, 2), key=lambda q: abs(pillow_round_trip(images[:50], fmt, quality=q)[0] - target_bytes))
    return best


def run_bench(loaded, *, provider: str = "cpu", batch_sizes: Sequence[int] = (1, 32, 256), threads: int | None = None,
              min_seconds: float = 1.0, images: int = 1000, data_root=None, progress=None) -> dict:
    """Every figure of `kaec bench`, as one JSON-ready dict. `loaded` is a torch model
    (experiments.loading.load_model): onnxruntime against PyTorch eager and TorchScript; or a shipped model
    as the runtime holds it (runtime.shipped.ShippedModel): onnxruntime alone, no torch imported."""
    from kaecompress.runtime.shipped import ShippedModel

    if provider not in ("cpu", "cuda"):
        raise KaecError(f"--provider: expected cpu or cuda, got {provider!r}")
    step = progress or (lambda label: None)
    if isinstance(loaded, ShippedModel):
        return _run_onnx_only(loaded, provider, batch_sizes, threads, min_seconds, images, data_root, step)
    return _run_with_torch(loaded, provider, batch_sizes, threads, min_seconds, images, data_root, step)


def _batches(x, batch_sizes: Sequence[int], images: int):
    n = max(max(batch_sizes), min(images, len(x)))
    x = x[:n]
    if len(x) < max(batch_sizes):
        raise KaecError(f"--batch-sizes: the largest batch needs {max(batch_sizes)} images, have {len(x)}")
    return x


def _ort_rows(add, part: str, session, inp: np.ndarray, name: str, batch: int, provider: str,
              min_seconds: float, step) -> None:
    step(f"{part} batch {batch}: onnxruntime")
    add(part, f"onnxruntime-{provider}", batch,
        measure(lambda: session.run(None, {name: inp}), batch, min_seconds=min_seconds))
    if provider == "cuda":
        add(part, "onnxruntime-cuda-iobinding", batch,
            measure(iobinding_run(session, name, inp)[0], batch, min_seconds=min_seconds))


def _run_onnx_only(loaded, provider, batch_sizes, threads, min_seconds, images, data_root, step) -> dict:
    """The runtime install's bench: the shipped graphs in onnxruntime, the Codec through them, and Pillow."""
    from kaecompress.api import torch_installed
    from kaecompress.errors import TRAINING_INSTALL
    from kaecompress.experiments.data import load_array
    from kaecompress.runtime.sessions import check_cuda, default_threads

    if provider == "cuda":  # refused here, before any data is read, naming the option
        check_cuda("--provider cuda")
    monitor = MachineLoad()
    chosen = threads is None
    threads = threads or default_threads()
    if loaded.dataset not in ("mnist", "fashion-mnist") or tuple(loaded.shape) != (1, 28, 28):
        raise KaecError(f"{loaded.name}: its test images ({loaded.dataset}) are read by the training install only: "
                        f"{TRAINING_INSTALL}")
    x = _batches(load_array(loaded.dataset, False, data_root), batch_sizes, images).astype(np.float32) / 255
    try:
        backend = loaded.backend("onnx", provider, threads=threads)
    except KaecError as e:  # the Codec's option is --device; here the choice was --provider
        raise KaecError(str(e).replace("--device cuda", "--provider cuda", 1)) from None
    used = backend.encoder.get_providers()[0]
    z_all = _chunked(backend.encode, x)
    raw_bytes = int(np.prod(loaded.shape))
    rows = []

    def add(part, runtime, batch, timing):
        rows.append({"part": part, "runtime": runtime, "batch": batch, **timing.summary(raw_bytes),
                     "vs_pytorch_eager": None})

    for batch in batch_sizes:
        xb, zb = np.ascontiguousarray(x[:batch]), np.ascontiguousarray(z_all[:batch])
        for part, sess, inp, name in (("encoder", backend.encoder, xb, "images"),
                                      ("decoder", backend.decoder, zb, "latents")):
            _ort_rows(add, part, sess, inp, name, batch, provider, min_seconds, step)

    step("quality and bytes")
    from kaecompress.codec.images import Codec

    recon = np.clip(_chunked(backend.decode, z_all), 0.0, 1.0)
    quality = _quality(Codec(loaded, backend), loaded, x, recon)
    step("Pillow baselines")
    baselines = _pillow_baselines(x, quality["kae_bytes_per_image"], min_seconds)
    why = ("PyTorch is not installed (the runtime install); " + TRAINING_INSTALL + " adds them"
           if not torch_installed() else "the model was given as its shipped ONNX graphs, without PyTorch")
    return {"model": loaded.name, "weights_sha256": loaded.weights_sha256, "provider": provider,
            "provider_used": used, "device": provider, "images": len(x), "batch_sizes": list(batch_sizes),
            "raw_bytes_per_image": raw_bytes, "environment": {**environment(threads), "threads_chosen": chosen},
            "machine_load": monitor.report(), "inference": rows, "quality": quality, "pillow": baselines,
            "skipped": [{"runtime": r, "why": why} for r in ("pytorch-eager", "torchscript")]}


def _chunked(fn, x: np.ndarray, size: int = 256) -> np.ndarray:
    # bounded activations: a whole test split in one call would take gigabytes
    return np.concatenate([fn(np.ascontiguousarray(x[i:i + size])) for i in range(0, len(x), size)])


def _run_with_torch(loaded, provider, batch_sizes, threads, min_seconds, images, data_root, step) -> dict:
    import torch

    from kaecompress.codec.images import Codec
    from kaecompress.experiments.data import load_images
    from kaecompress.experiments.export_cache import export_cache
    from kaecompress.exporters.formats import load_runner
    from kaecompress.runtime.sessions import cuda_sessions, default_threads, onnx_session

    monitor = MachineLoad()
    chosen = threads is None
    threads = threads or default_threads()
    torch.set_num_threads(threads)
    data = load_images(loaded.dataset, False, data_root, loaded.model.shape)
    x = _batches(data, batch_sizes, images).contiguous()
    folder = export_cache(loaded, data_root, formats=("onnx", "torchscript"))

    model = loaded.model.eval()
    device = torch.device("cuda" if provider == "cuda" and torch.cuda.is_available() else "cpu")
    if provider == "cuda":
        encoder_s, decoder_s = cuda_sessions(folder, threads)
    else:
        # No busy-waiting threads: PyTorch is measured in the same process, on the same cores.
        encoder_s, decoder_s = (onnx_session(folder / f"{p}.onnx", "cpu", threads, spinning=False)
                                for p in ("encoder", "decoder"))
    used = encoder_s.get_providers()[0]
    scripted = {p: load_runner(folder / f"{p}.pt", device) for p in ("encoder", "decoder")}
    with torch.inference_mode():
        z_all = model.encoder(x)
    model.to(device)
    raw_bytes = int(np.prod(loaded.model.shape))  # one byte per pixel value
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    rows = []

    def add(part, runtime, batch, timing):
        rows.append({"part": part, "runtime": runtime, "batch": batch, **timing.summary(raw_bytes)})

    for batch in batch_sizes:
        xb, zb = x[:batch].numpy(), z_all[:batch].numpy()
        for part, sess, inp, name in (("encoder", encoder_s, xb, "images"), ("decoder", decoder_s, zb, "latents")):
            _ort_rows(add, part, sess, inp, name, batch, provider, min_seconds, step)
            t_in = torch.from_numpy(inp).to(device)
            module = getattr(model, part)
            step(f"{part} batch {batch}: pytorch eager")

            def eager(m=module, t=t_in):
                with torch.inference_mode():
                    return m(t)

            add(part, f"pytorch-eager-{device.type}", batch, measure(eager, batch, min_seconds=min_seconds, sync=sync))
            step(f"{part} batch {batch}: torchscript")
            add(part, f"torchscript-{device.type}", batch,
                measure(lambda r=scripted[part], t=t_in: r(t), batch, min_seconds=min_seconds, sync=sync))
    model.to("cpu")
    for row in rows:
        base = next(r for r in rows if r["part"] == row["part"] and r["batch"] == row["batch"]
                    and r["runtime"].startswith("pytorch-eager"))
        row["vs_pytorch_eager"] = row["images_per_s"] / base["images_per_s"]

    step("quality and bytes")
    with torch.inference_mode():
        recon = loaded.model.decoder(z_all).clamp(0, 1).numpy()
    x = x.numpy()
    quality = _quality(Codec(loaded), loaded, x, recon)
    step("Pillow baselines")
    baselines = _pillow_baselines(x, quality["kae_bytes_per_image"], min_seconds)
    return {"model": loaded.name, "weights_sha256": loaded.weights_sha256, "provider": provider,
            "provider_used": used, "device": str(device), "images": len(x), "batch_sizes": list(batch_sizes),
            "raw_bytes_per_image": raw_bytes, "environment": {**environment(threads), "threads_chosen": chosen},
            "machine_load": monitor.report(), "inference": rows, "quality": quality, "pillow": baselines,
            "skipped": []}


def _pillow_baselines(x: np.ndarray, kae_bytes: float, min_seconds: float) -> list[dict]:
    """JPEG and WebP at the quality closest to the model's file size, and PNG, on 1-channel images."""
    from PIL import Image

    if x.shape[1] != 1:
        return []
    pixels = np.rint(x[:, 0] * 255).astype(np.uint8)
    sample = pixels[: min(len(pixels), 200)]
    baselines = []
    for fmt, params in (("JPEG", {"quality": _closest_quality(sample, "JPEG", kae_bytes)}),
                        ("WEBP", {"quality": _closest_quality(sample, "WEBP", kae_bytes)}),
                        ("PNG", {"optimize": True})):
        mean_bytes, mean_psnr = pillow_round_trip(sample, fmt, **params)

        def round_trip(imgs=sample[:32], f=fmt, p=params):
            for img in imgs:
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format=f, **p)
                Image.open(io.BytesIO(buf.getvalue())).load()

        t = measure(round_trip, 32, min_seconds=min_seconds, min_calls=3)
        baselines.append({"codec": fmt.lower(), "settings": params, "bytes_per_image": mean_bytes,
                          "psnr_db": mean_psnr, "lossless": math.isinf(mean_psnr),
                          "encode_decode_images_per_s": t.images_per_s})
    return baselines


def iobinding_run(session, name: str, inp: np.ndarray, device: str = "cuda"):
    """A call running `session` with its input and output kept on `device` (no host copies per call), and
    the binding, whose `copy_outputs_to_cpu()` reads the last result."""
    from kaecompress.runtime.sessions import import_onnxruntime

    ort = import_onnxruntime()

    binding = session.io_binding()
    binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(inp, device, 0))
    binding.bind_output(session.get_outputs()[0].name, device, 0)

    def run():
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return run, binding


def _quality(codec, loaded, x: np.ndarray, recon: np.ndarray) -> dict:
    """Float reconstruction error (`recon`: the decoder's output, clamped) and the .kae files `codec` makes of
    `x` (N, C, H, W in [0, 1]): a codec model's entropy-coded version-2 files, which is what `kaec encode`
    writes for it, else version-1 files of uint8 latents; their PSNR is on the 8-bit decoded pixels."""
    from kaecompress.codec.containers import from_kae, to_kae

    per_image = ((recon.astype(np.float64) - x) ** 2).reshape(len(x), -1).mean(1).tolist()
    encoded = codec.compress_many([_to_pil(img) for img in x])
    if codec.rate_model:
        blobs = codec.to_kae_many(encoded)
        back = codec.from_kae_many(blobs, [f"bench image {i}" for i in range(len(blobs))])
    else:
        blobs = [to_kae(e, "uint8") for e in encoded]
        back = [from_kae(b, "bench")[0] for b in blobs]
    decoded = codec.decompress_many(back)
    q_err = [float(((_planes(d) - img) ** 2).mean()) for d, img in zip(decoded, x)]
    c, h, w = loaded.shape
    mean_bytes = statistics.fmean(len(b) for b in blobs)
    return {"mse": statistics.fmean(per_image), "psnr_db": statistics.fmean(psnr(e) for e in per_image),
            "kae_uint8_psnr_db": statistics.fmean(psnr(e) for e in q_err),
            "compression_ratio_values": c * h * w / loaded.latent_dim,
            "kae_bytes_per_image": mean_bytes, "kae_ratio_vs_raw_bytes": c * h * w / mean_bytes,
            "kae_version": 2 if codec.rate_model else 1}


def _planes(im) -> np.ndarray:
    arr = np.asarray(im, np.float64) / 255
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _to_pil(img):
    from PIL import Image

    arr = np.rint(img * 255).astype(np.uint8)
    return Image.fromarray(arr[0], "L") if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0), "RGB")
