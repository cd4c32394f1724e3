"""Bounded reads of files a user hands us: regular files only, a size cap checked before reading, and a
nesting limit on what is parsed from them.

A FIFO would block the reader until a writer appears and `/dev/zero` never ends, so a file is checked
with stat before it is opened (a device is never opened), opened without blocking, checked again with
fstat (the same open file that is then read, so nothing can be swapped in between), and read no further
than its cap.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from kaecompress.errors import KaecError

MiB = 1 << 20
MAX_DEPTH = 100  # nesting of lists and mappings; real configs, cards and results use under 10
_UMASK = os.umask(0)
os.umask(_UMASK)


def read_regular(path: str | Path, max_bytes: int, what: str, follow: bool = True) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (a symlink to one is followed unless `follow` is
    false; to anything else, refused). `what` names the kind of file in messages, e.g. "a model card"."""
    path = Path(path)
    try:
        if not stat.S_ISREG((os.stat if follow else os.lstat)(path).st_mode):
            if not follow and path.is_symlink():
                raise KaecError(f"{path}: a symbolic link (expected {what} as a plain file)")
            raise KaecError(f"{path}: not a regular file (expected {what})")
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow else os.O_NOFOLLOW)
        fd = os.open(path, flags)
    except OSError as e:
        raise KaecError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped in since the stat above
            raise KaecError(f"{path}: not a regular file (expected {what})")
        if st.st_size > max_bytes:
            raise KaecError(f"{path}: {st.st_size:,} bytes; {what} is at most {max_bytes:,} bytes")
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, MiB))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:  # the file grew while we read it
            raise KaecError(f"{path}: more than {max_bytes:,} bytes; {what} is at most {max_bytes:,} bytes")
        return data
    except OSError as e:
        raise KaecError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    finally:
        os.close(fd)


def open_nofollow(path: str | Path, flags: int) -> int:
    """os.open of a regular file that never follows a symbolic link at `path` (nor blocks on a FIFO there):
    for what kaec writes or appends to in a folder whose contents someone else may have planted."""
    path = Path(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        if path.is_symlink():
            raise KaecError(f"{path}: a symbolic link; kaec writes nothing through a link there") from None
        raise KaecError(f"{path}: cannot open it for writing ({e.strerror or e})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise KaecError(f"{path}: not a regular file (kaec keeps its own file there)")
    return fd


def open_append(path: str | Path):
    """A text file object appending to `path` (created if absent), opened as `open_nofollow` does."""
    return os.fdopen(open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a")


def read_text(path: str | Path, max_bytes: int, what: str) -> str:
    data = read_regular(path, max_bytes, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise KaecError(f"{path}: not a UTF-8 text file (expected {what})") from None


def check_depth(obj: Any, source: str, limit: int = MAX_DEPTH) -> None:
    """Refuse data nested deeper than `limit` lists or mappings (walked without recursion)."""
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            raise KaecError(f"{source}: nested more than {limit} levels deep")
        stack.extend((child, depth + 1) for child in children)


def too_deep(source: str, limit: int = MAX_DEPTH) -> KaecError:
    """The error for a parser that ran out of stack (RecursionError) on deeply nested input."""
    return KaecError(f"{source}: nested more than {limit} levels deep")


def parse_json(data: bytes | str, source: str, what: str = "JSON") -> Any:
    """JSON text, at most MAX_DEPTH levels deep."""
    try:
        obj = json.loads(data)
    except RecursionError:
        raise too_deep(source) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise KaecError(f"{source}: not valid {what} ({str(e).splitlines()[0]})") from None
    check_depth(obj, source)
    return obj


def read_json(path: str | Path, max_bytes: int, what: str, follow: bool = True) -> Any:
    """A JSON file: a regular file within its cap (`read_regular`), parsed as `parse_json` does."""
    return parse_json(read_regular(path, max_bytes, what, follow), str(path), what)


def public_mode(path: Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create private files; give them the permissions a plain open() would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        public_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno:  # name the file the user asked for, not the temp file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Strict JSON: NaN and infinities (not JSON) are written as null."""
    atomic_write_text(path, json.dumps(finite(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj
