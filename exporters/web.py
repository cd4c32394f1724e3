"""A folder that decodes and encodes .kae files in a web page and in Node, offline (`kaec export --format web`).

    DIR/index.html, page.mjs, kae.mjs, kae-node.mjs, lib/*.mjs      the JavaScript runtime (web/ in the repository)
    DIR/ort/...                                                    onnxruntime-web's wasm build, from npm
    DIR/models/NAME/model.json + NAME.{encoder,decoder}.onnx + NAME.safetensors
    DIR/models.json                                                the models, the first one the default

model.json holds what the JavaScript coder needs besides the networks: the model's identity, shapes and its
integer tables and context model as plain integers (read here from the safetensors file, so the browser never
parses it; it hands the bytes to onnxruntime-web as the graphs' external data), and the out-of-domain check's
calibration: the card's "domain" entry and the dataset that names the domain. Needs numpy only: it works in
the runtime install. `serve(DIR)` serves such a folder on 127.0.0.1 (the browser tests and benchmarks use it).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from kaecompress import zoo
from kaecompress.errors import KaecError
from kaecompress.fileio import public_mode, read_json, read_regular
from kaecompress.outputs import replace_folder

SCHEMA = "kaecompress-web-model"
SCHEMA_VERSION = 1
MANIFEST_FORMAT = "kaecompress web export"
RUNTIME_FILES = ("index.html", "page.mjs", "kae.mjs", "kae-node.mjs")
ORT_PACKAGE = "onnxruntime-web"
# The wasm build that kae.mjs imports: the ES module, its loader and the (single-threaded SIMD) binary.
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
ORT_ENV = "KAEC_ONNXRUNTIME_WEB"   # a folder holding ORT_FILES, instead of web/node_modules
MAX_ORT_BYTES = 64 << 20           # the wasm binary is 14.8 MB
MAX_SOURCE_BYTES = 1 << 20
NPM_TIMEOUT_S = 300
# A model's folder and its files' names: plain names, so no name in a card or model.json leads out of the folder
# (kae.mjs checks the same pattern).
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def web_source() -> Path:
    """The JavaScript runtime's sources: web/ in a checkout, kaecompress/web once installed."""
    from kaecompress import web

    return Path(web.__file__).parent


def pinned_ort_version(source: Path | None = None) -> str:
    lock = read_json((source or web_source()) / "package-lock.json", MAX_SOURCE_BYTES, "npm lock file")
    try:
        return lock["packages"][f"node_modules/{ORT_PACKAGE}"]["version"]
    except (KeyError, TypeError):
        raise KaecError(f"{source or web_source()}/package-lock.json: no {ORT_PACKAGE} entry") from None


def ort_folder(source: Path | None = None, install=None) -> Path:
    """Where onnxruntime-web's files are: $KAEC_ONNXRUNTIME_WEB, or the pinned npm package under web/.

    `install(message)`, when given, allows installing the pinned package with `npm ci` (from the lock file,
    its integrity hashes checked, no install scripts run) where it is missing; it is called first with a
    line saying so."""
    source = source or web_source()
    given = os.environ.get(ORT_ENV)
    if given:
        folder = Path(given)
        missing = [f for f in ORT_FILES if not (folder / f).is_file()]
        if missing:
            raise KaecError(f"{ORT_ENV}={given}: expected a folder with {', '.join(ORT_FILES)}; "
                            f"{missing[0]} is missing")
        return folder
    version = pinned_ort_version(source)
    package = source / "node_modules" / ORT_PACKAGE
    how = f"run `npm ci --prefix {source}` (Node 20; fetches {ORT_PACKAGE} {version} from npm) or set {ORT_ENV}"
    installed = _installed_version(package)
    if installed is None and install is not None and shutil.which("npm"):
        install(f"installing {ORT_PACKAGE} {version} from {source}/package-lock.json (npm ci, once)")
        _npm_ci(source)
        installed = _installed_version(package)
    if installed is None:
        raise KaecError(f"--format web needs {ORT_PACKAGE} {version} in {package}: {how}")
    if installed != version:
        raise KaecError(f"{package}: {ORT_PACKAGE} {installed} installed, package-lock.json pins {version}: {how}")
    return package / "dist"


def _installed_version(package: Path) -> str | None:
    try:
        return json.loads(read_regular(package / "package.json", MAX_SOURCE_BYTES, "npm package"))["version"]
    except (KaecError, ValueError, KeyError, TypeError):
        return None


def _npm_ci(source: Path) -> None:
    cmd = ["npm", "ci", "--prefix", str(source), "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise KaecError(f"npm ci --prefix {source}: no answer in {NPM_TIMEOUT_S} s (is the npm registry "
                        "reachable?)") from None
    if run.returncode != 0:
        lines = [line for line in (run.stderr or run.stdout).splitlines() if line.strip()]
        why = lines[-1].strip()[:200] if lines else f"exit {run.returncode}"
        raise KaecError(f"npm ci --prefix {source} failed: {why}")


def model_json(name: str, folder: Path | None = None) -> tuple[dict, dict[str, bytes]]:
    """model.json of a shipped model and the files that go beside it (bytes checked against its card)."""
    folder = folder or zoo.trained_dir()
    card, weights = zoo.read_weights(name, folder)
    if "onnx" not in card:
        raise KaecError(f"{name}: its card lists no ONNX graphs; promote it first "
                        "(python -m kaecompress.experiments.promote)")
    graphs = {part: zoo.read_graph(card, part, folder) for part in zoo.PARTS}
    prior = zoo.tensors(weights, folder / card["weights_file"], "prior.")
    model = card["config"]["model"]
    codec = (card["config"].get("codec") or {}).get("prior")
    tables = context = None
    if codec:
        tables = {"precision": int(prior["prior.table_precision"].reshape(-1)[0]),
                  "offsets": prior["prior.table_offsets"].astype(int).tolist(),
                  "freqs": prior["prior.table_freqs"].astype(int).tolist()}
        if "prior.context_order" in prior:
            context = {k: prior[f"prior.context_{k}"].astype(int).tolist() for k in ("order", "weights", "bias")}
    doc = {
        "schema": SCHEMA, "version": SCHEMA_VERSION,
        "name": name, "family": card.get("family"), "quality": card.get("quality"),
        "codec_id": card.get("codec_id"), "weights_sha256": card["weights_sha256"],
        "input_shape": [int(v) for v in model.get("shape", (1, 28, 28))], "latent_dim": int(model["latent_dim"]),
        "encoder": {"file": card["onnx"]["encoder"]["file"], "sha256": card["onnx"]["encoder"]["sha256"],
                    "input": "images", "output": "latents"},
        "decoder": {"file": card["onnx"]["decoder"]["file"], "sha256": card["onnx"]["decoder"]["sha256"],
                    "input": "latents", "output": "images"},
        "weights": {"file": card["weights_file"], "sha256": card["file_sha256"]},
        "tables": tables, "context": context,
        "psnr_db": (card.get("metrics") or {}).get("psnr_db"),
        "bytes_per_image": (card.get("codec_metrics") or {}).get("bytes_per_image"),
        # the out-of-domain check (codec/domain.py): the dataset names the domain in refusals; the card's
        # "domain" entry (thresholds, and a plain model's latent mean and std for z2) as it is, or null
        "dataset": (card["config"].get("data") or {}).get("dataset", "mnist"),
        "domain": card.get("domain"),
    }
    files = {card["weights_file"]: weights, **{card["onnx"][p]["file"]: graphs[p] for p in zoo.PARTS}}
    for file in files:
        if not PLAIN_NAME.fullmatch(file):
            raise KaecError(f"{name}: its card names the file {file!r}; expected a plain file name beside the card")
    return doc, files


def check_models(models: list[str]) -> list[str]:
    """The model names, checked against the shipped ones before anything is read."""
    models = list(dict.fromkeys(models))
    known = zoo.cards()
    if not models:
        raise KaecError("--format web: name at least one shipped model")
    for name in models:
        if name not in known:
            raise KaecError(f"{name}: not a shipped model (--format web exports shipped models; `kaec models` "
                            "lists them)")
    return models


def write_web_export(models: list[str], out_dir: Path, force: bool = False, install=None) -> list[Path]:
    """Write the folder for `models` (shipped names; the first is the page's default) and return its files.
    `install`: see `ort_folder`.

    The folder is built beside `out_dir` and renamed into place when complete, so a failed export leaves
    nothing; an existing `out_dir` is replaced only with `force`."""
    models = check_models(models)
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise KaecError(f"{out_dir}: already exists (--force replaces an earlier web export)")
    if out_dir.exists() and (out_dir.is_symlink() or not out_dir.is_dir()
                             or Path.cwd().resolve().is_relative_to(out_dir.resolve())
                             or (any(out_dir.iterdir()) and not _only_a_web_export(out_dir))):
        raise KaecError(f"{out_dir}: --force replaces only a folder holding an earlier web export and nothing else "
                        "(every file listed in its manifest.json), never the working directory or another folder")
    if not out_dir.parent.is_dir():
        raise KaecError(f"{out_dir}: folder {out_dir.parent} does not exist")
    source = web_source()
    ort = ort_folder(source, install)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        listing = {}

        def put(rel: str, data: bytes) -> None:
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            listing[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

        for rel in [*RUNTIME_FILES, *sorted(f"lib/{p.name}" for p in (source / "lib").glob("*.mjs"))]:
            put(rel, read_regular(source / rel, MAX_SOURCE_BYTES, "web runtime file", follow=False))
        for name in ORT_FILES:
            put(f"ort/{name}", read_regular(ort / name, MAX_ORT_BYTES, f"{ORT_PACKAGE} file"))
        for name in models:
            doc, files = model_json(name)
            put(f"models/{name}/model.json", (json.dumps(doc, indent=1) + "\n").encode())
            for file, data in files.items():
                put(f"models/{name}/{file}", data)
        put("models.json", (json.dumps({"models": models, "default": models[0]}, indent=1) + "\n").encode())
        manifest = {"format": MANIFEST_FORMAT, ORT_PACKAGE: pinned_ort_version(source), "files": listing}
        put("manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
        for path in [staging, *staging.rglob("*")]:
            public_mode(path, directory=path.is_dir())
        replace_folder(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [out_dir / rel for rel in listing]


def _only_a_web_export(folder: Path) -> bool:
    """True when `folder` holds a web export's files and nothing else: all that --force may delete."""
    try:
        manifest = read_json(folder / "manifest.json", MAX_SOURCE_BYTES, "web export manifest", follow=False)
        listed = {*manifest["files"], "manifest.json"} if manifest.get("format") == MANIFEST_FORMAT else None
    except (KaecError, AttributeError, TypeError, KeyError):
        return False
    if listed is None:
        return False
    for path in folder.rglob("*"):
        if path.is_symlink() or (path.is_file() and path.relative_to(folder).as_posix() not in listed) \
                or not (path.is_file() or path.is_dir()):
            return False
    return True


class _ExportHandler(http.server.SimpleHTTPRequestHandler):
    """A web export's files with the MIME types ES modules and WebAssembly need, never cached (every load
    fetches what it uses); each request appended to `log` as (path, status, bytes sent)."""

    extensions_map: ClassVar[dict[str, str]] = {
        **http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "application/javascript",
        ".wasm": "application/wasm", ".json": "application/json", ".onnx": "application/octet-stream",
        ".safetensors": "application/octet-stream"}

    def __init__(self, *args, log: list, **kwargs):
        self.requests_log = log
        super().__init__(*args, **kwargs)

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_request(self, code="-", size="-"):
        path = Path(self.translate_path(self.path))
        sent = path.stat().st_size if str(code) == "200" and path.is_file() else 0
        self.requests_log.append((self.path, int(getattr(code, "value", code)), sent))

    def log_message(self, *args):  # quiet: the log above says what was fetched
        pass


@contextmanager
def serve(folder: Path, log: list | None = None) -> Iterator[str]:
    """Serve a web export on http://127.0.0.1:PORT/ (a free port) while the block runs; yields that URL.
    Each request is appended to `log`, when given, as (path, status, bytes sent)."""
    handler = functools.partial(_ExportHandler, directory=str(folder), log=[] if log is None else log)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
