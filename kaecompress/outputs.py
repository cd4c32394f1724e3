"""Several output files written as one group: all of them land, or none does.

Each file is first written in full to a temporary file beside its target (and synced); only once every one
is on disk are they renamed into place. A write that fails (a full disk, a read-only folder) removes the
temporary files, so the targets are untouched. Renames within a folder need no space; should one fail
anyway, the error names the outputs already in place.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from kaecompress.errors import KaecError
from kaecompress.fileio import public_mode


def write_all(files: list[tuple[Path, bytes]]) -> None:
    temps: list[tuple[str, Path]] = []
    current = files[0][0] if files else None
    try:
        for path, data in files:
            current = path
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            public_mode(Path(tmp))
    except BaseException as e:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            why = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
            raise KaecError(f"{current}: {why} while writing; none of the {len(files)} output"
                            f"{'s' if len(files) != 1 else ''} written") from None
        raise
    done: list[Path] = []
    try:
        for tmp, path in temps:
            os.replace(tmp, path)
            done.append(path)
    except OSError as e:
        for tmp, _ in temps[len(done):]:
            Path(tmp).unlink(missing_ok=True)
        landed = ", ".join(map(str, done)) or "none"
        raise KaecError(f"{temps[len(done)][1]}: {e.strerror or e} while renaming into place; written: {landed}; "
                        f"the other {len(temps) - len(done)} not written") from None


def replace_folder(complete: Path, target: Path) -> None:
    """Move the folder `complete` (written beside `target`) to `target`. An existing `target` is set aside
    first and deleted last, so that one of the two is always whole at that path's place."""
    old = None
    if target.exists():
        old = target.with_name(f"{complete.name}.old")
        target.rename(old)
    complete.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
