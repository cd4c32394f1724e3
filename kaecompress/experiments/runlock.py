"""One trainer per run: a kernel file lock plus a heartbeat lease, both in the run folder.

    RUN/.lock         flock()ed (through filelock) for as long as a process trains the run
    RUN/.lease.json   who holds it: node, host, pid, token, acquired_at, heartbeat_at (seconds since the epoch)

The kernel drops a flock the moment its process dies, so on one machine a `kill -9`ed trainer never blocks a
run. A whole node that dies is different: on a shared filesystem its locks may linger (NFS servers reclaim
them only after their own lease) or may never have been visible to other nodes at all. The lease covers
that: its holder rewrites `heartbeat_at` every `expiry_s / 4` seconds, and a lease is *expired* once no
heartbeat came for `expiry_s` seconds (default 60, `$KAEC_LOCK_EXPIRY_S`; the holder writes its own
value into the lease, and waiters honour that one), or at once when its holder is a
process of this same node that no longer exists. A run is free when its flock can be taken and its lease is
absent, ours or expired.

A node is `hostname:boot-id`; `$KAEC_NODE_ID` overrides it (containers that share a hostname and a boot id
must set it; tests use it to play a second node).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from kaecompress import fileio

from kaecompress.experiments import runs

LOCK = runs.LOCK
LEASE = runs.LEASE
DEFAULT_EXPIRY_S = 60.0


def node_id() -> str:
    if os.environ.get("KAEC_NODE_ID"):
        return os.environ["KAEC_NODE_ID"]
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "?"
    return f"{socket.gethostname()}:{boot}"


def expiry_s() -> float:
    try:
        value = float(os.environ.get("KAEC_LOCK_EXPIRY_S", DEFAULT_EXPIRY_S))
    except ValueError:
        value = DEFAULT_EXPIRY_S
    return value if value > 0 else DEFAULT_EXPIRY_S


class RunBusy(Exception):
    """The run is trained by another process; `holder` is its lease (or None when only its flock shows)."""

    def __init__(self, run_dir: Path, holder: dict | None) -> None:
        self.run_dir, self.holder = run_dir, holder
        super().__init__(f"{run_dir}: being trained by {describe(holder)}")


def describe(holder: dict | None) -> str:
    """Who holds a run, its heartbeat's age as of when the lease was read (`read_at`), not of now."""
    if not holder:
        return "another process"
    try:
        age = float(holder.get("read_at", time.time())) - float(holder.get("heartbeat_at", 0))
    except (TypeError, ValueError):  # a lease damaged by hand
        return f"pid {holder.get('pid')} on {holder.get('host')}"
    return f"pid {holder.get('pid')} on {holder.get('host')} (last heartbeat {age:.0f} s ago)"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def lease_expired(lease: dict, expiry: float | None = None) -> bool:
    """No heartbeat for the lease's own `expiry_s` (else `expiry`, else the default) seconds, or its holder
    was a process of this node that is gone."""
    try:
        limit = float(lease.get("expiry_s") or expiry or expiry_s())
        if time.time() - float(lease["heartbeat_at"]) > limit:
            return True
        return lease["node"] == node_id() and not _pid_alive(int(lease["pid"]))
    except (KeyError, TypeError, ValueError):  # a lease we cannot read protects nothing
        return True


def read_lease(run_dir: Path) -> dict | None:
    """The lease as written, plus `read_at`: when it was read (what `describe` counts its heartbeat's age to)."""
    lease = runs.read_json(Path(run_dir) / LEASE)
    return {**lease, "read_at": time.time()} if isinstance(lease, dict) else None


def holder(run_dir: Path) -> dict | None:
    """The live holder's lease if someone trains this run now, else None (read-only: takes no lock)."""
    lease = read_lease(run_dir)
    if lease is None or lease_expired(lease):
        return None
    return lease


class RunLock:
    """`acquire()` / `release()`, or `with RunLock(dir).acquire(wait_s=...)`. While held, a daemon thread
    renews the lease; `lost` turns true if another node took the run over (our heartbeats had stopped for
    longer than the expiry, e.g. a frozen or partitioned node)."""

    def __init__(self, run_dir: str | Path, expiry: float | None = None) -> None:
        import filelock

        self.run_dir = Path(run_dir)
        self.expiry = expiry or expiry_s()
        self.token = uuid.uuid4().hex
        self._flock = filelock.UnixFileLock(str(self.run_dir / LOCK), thread_local=False, fallback_to_soft=False)
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.lost = False
        self.held = False

    def try_acquire(self) -> dict | None:
        """Take the run if it is free and return None; else return the holder's lease (None inside it when
        only the flock shows) without waiting."""
        import filelock

        self.run_dir.mkdir(parents=True, exist_ok=True)
        _touch_nofollow(self.run_dir / LOCK)
        try:
            self._flock.acquire(timeout=0)
        except filelock.Timeout:
            return {"busy": True, **(read_lease(self.run_dir) or {})}
        lease = read_lease(self.run_dir)
        if lease is not None and lease.get("token") != self.token and not lease_expired(lease, self.expiry):
            self._flock.release()  # held from another node, whose flock this filesystem does not show us
            return {"busy": True, **lease}
        now = time.time()
        self._lease = {"node": node_id(), "host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                       "acquired_at": now, "heartbeat_at": now, "expiry_s": self.expiry}
        if lease is not None and lease.get("token") != self.token:
            self._lease["took_over"] = {k: lease.get(k) for k in ("node", "host", "pid", "heartbeat_at")}
        try:
            runs.atomic_write_json(self.run_dir / LEASE, self._lease)
        except BaseException:
            self._flock.release()
            raise
        self.held = True
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lease {self.run_dir.name}", daemon=True)
        self._beat.start()
        return None

    def acquire(self, wait_s: float = 0.0, poll_s: float = 0.5) -> "RunLock":
        """Take the run, waiting up to `wait_s` seconds for its holder to finish or its lease to expire;
        RunBusy after that."""
        deadline = time.monotonic() + wait_s
        while True:
            busy = self.try_acquire()
            if busy is None:
                return self
            if time.monotonic() >= deadline:
                busy.pop("busy", None)
                raise RunBusy(self.run_dir, busy or None)
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.expiry / 4):
            current = read_lease(self.run_dir)
            if current is not None and current.get("token") != self.token:
                self.lost = True  # another node took over after our heartbeats stopped
                return
            self._lease["heartbeat_at"] = time.time()
            try:
                runs.atomic_write_json(self.run_dir / LEASE, self._lease)
            except OSError:
                pass  # a full disk or a vanished folder: the next beat tries again

    def stop_heartbeat(self) -> None:
        """No more lease renewals (e.g. before the run folder is deleted under the lock)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None

    def release(self) -> None:
        if not self.held:
            return
        self.stop_heartbeat()
        current = read_lease(self.run_dir)
        if current is not None and current.get("token") == self.token:
            (self.run_dir / LEASE).unlink(missing_ok=True)
        self._flock.release()
        self.held = False

    def __enter__(self) -> "RunLock":
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _touch_nofollow(path: Path) -> None:
    os.close(fileio.open_nofollow(path, os.O_WRONLY | os.O_CREAT))  # filelock's own open would follow a link


def attempt_log(run_dir: Path, record: dict) -> None:
    """Append one line to RUN/attempts.jsonl: who trained the run, from how many inputs (called under the lock)."""
    with fileio.open_append(Path(run_dir) / runs.ATTEMPTS) as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
