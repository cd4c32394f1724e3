"""onnxruntime sessions: the one place this package imports onnxruntime and creates sessions."""

from __future__ import annotations

import os
from pathlib import Path

from kaecompress.errors import KaecError


NO_FILES = Path(__file__).with_name("__no_external_files__")


def import_onnxruntime():
    """onnxruntime, imported with its telemetry off. Every import of it in this package goes through here.

    Since 1.29 onnxruntime starts a telemetry client on Linux and macOS as soon as it is imported: it creates
    ~/.cache/Microsoft/DeveloperTools/.onnxruntime/ (deviceid, onnxruntime.db and its -wal/-shm) and may
    upload events. ORT_DISABLE_TELEMETRY=1 in the environment before the import stops all of it; measured with
    1.32, disable_telemetry_events() or the variable set after the import leave the files behind, so this
    must run before anything else imports onnxruntime. Child processes inherit the setting."""
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    try:
        import onnxruntime
    except ImportError:
        raise KaecError("onnxruntime is not installed: pip install 'kaecompress[cpu]' (or [gpu])") from None
    return onnxruntime


def default_threads() -> int:
    """Threads for torch and onnxruntime: one per core the machine's load leaves free, at least one.
    Measured on the 2-core development machine under a load average of 8: torch's default 2 threads ran
    the decoder at 7 images/s one image at a time and 627-681 at batch 256, against 800 and 1,040-1,090
    with 1 thread (oversubscribed threads wait on each other at every operator)."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cores
    return max(1, min(cores, int(cores - load + 0.5)))


def onnx_session(model: Path | bytes, provider: str = "cpu", threads: int | None = None, spinning: bool = True,
                 external: dict[str, bytes] | None = None):
    """An onnxruntime session on exactly the provider asked for, from a file or the bytes of one. `external`
    holds the files a graph's external data names, as bytes already checked: onnxruntime reads its weights
    from these, never from disk (a graph given as bytes cannot open files at all). `spinning=False` stops its
    idle threads from busy-waiting, which otherwise starves the other work sharing a few cores."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if external:
        # onnxruntime reads external data that is not given from memory from this folder: one that never
        # exists, so a graph naming any other file is refused rather than read from the working directory.
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(NO_FILES))
        names = list(external)
        options.add_external_initializers_from_files_in_memory(names, [external[n] for n in names],
                                                               [len(external[n]) for n in names])
    providers = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider"]}[provider]
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=providers)


def _gpu_visible() -> bool:
    """Whether a CUDA driver exposes a GPU here (Linux device nodes; elsewhere, assume so and let the
    session's own provider list tell the truth)."""
    if not Path("/dev").is_dir() or os.name != "posix":
        return True
    return any(Path("/dev").glob("nvidia[0-9]*"))


def cuda_usable() -> bool:
    """onnxruntime has CUDA support and a GPU is visible: what `--device auto` picks CUDA on."""
    return "CUDAExecutionProvider" in import_onnxruntime().get_available_providers() and _gpu_visible()


def check_cuda(flag: str) -> None:
    ort = import_onnxruntime()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise KaecError(f"{flag}: this onnxruntime has no CUDA support; install the GPU build in an "
                        "environment without the CPU one: pip uninstall onnxruntime && pip install "
                        "'kaecompress[gpu]'")
    if not _gpu_visible():
        # Said here in one line; onnxruntime would log a screenful about libcuda and then fall back.
        raise KaecError(f"{flag}: CUDA is not usable here: no GPU or driver is visible (no /dev/nvidia*)")
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels; no LD_LIBRARY_PATH needed


def cuda_sessions(graphs, threads, flag: str = "--provider cuda", external: dict[str, bytes] | None = None):
    """Encoder and decoder sessions on CUDA, refusing to run when CUDA is not really in use (errors name
    `flag`). `graphs` is a folder holding encoder.onnx and decoder.onnx, or the two graphs' bytes."""
    check_cuda(flag)
    if isinstance(graphs, (str, Path)):
        graphs = [Path(graphs) / f"{part}.onnx" for part in ("encoder", "decoder")]
    sessions = [onnx_session(g, "cuda", threads, spinning=False, external=external) for g in graphs]
    for s in sessions:
        # onnxruntime falls back to CPU with only a logged error; the session's own list tells the truth.
        if s.get_providers()[0] != "CUDAExecutionProvider":
            raise KaecError(f"{flag}: CUDA is not usable here (the session runs on {s.get_providers()}); "
                            "refusing to run on the CPU under a CUDA label")
    return sessions
