"""Issue 26, cases 1 and 2: `kaec train --reset` deletes nothing before every refusal is known, and no sweep
deletes, writes or appends through a symbolic link below the runs folder. Each refusal: exit 2, one line,
a finished run left byte for byte as it was, nothing written outside."""

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kaecompress import KaecError

from kaecompress.experiments import runs
from kaecompress.experiments.config import load_experiment
from kaecompress.experiments.runlock import LEASE, LOCK, RunLock, attempt_log, describe, read_lease
from kaecompress.experiments.sweep import plan

from conftest import TINY, kaec, kaec_bounded, write_config

WALL_S = 5.0  # the bound for a refusal, start-up and `import torch` included
HANG_S = 30.0  # wall time on a busy machine (the tests of five sessions share two cores here)
RUN = Path("tiny") / "run"  # TINY's one run folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_root):
    """A finished run of TINY, trained once through the CLI; each test works on its own copy."""
    home = tmp_path_factory.mktemp("trained")
    cfg = write_config(home / "tiny.yml", TINY)
    r = kaec("train", "-c", cfg, "--runs-dir", home / "runs", "--data-root", mnist_root)
    assert r.returncode == 0, r.stderr
    assert runs.run_status(home / "runs" / RUN) == "finished"
    return home / "runs"


@pytest.fixture
def finished(trained, tmp_path):
    """(config, runs folder holding the finished run) in this test's own folder."""
    shutil.copytree(trained, tmp_path / "runs", symlinks=True)
    return write_config(tmp_path / "tiny.yml", TINY), tmp_path / "runs"


def snapshot(top: Path) -> dict:
    """Every entry below `top`, links not followed: its kind, and a file's size, mtime and content or a
    link's target. (A folder's mtime is left out: --reset's lock writes a lease for a moment, then removes it.)"""
    seen = {}
    for folder, dirs, files in os.walk(top):
        for name in dirs + files:
            p = Path(folder) / name
            st = p.lstat()
            if p.is_symlink():
                seen[str(p.relative_to(top))] = ("link", os.readlink(p))
            elif p.is_dir():
                seen[str(p.relative_to(top))] = ("folder", st.st_mode)
            else:
                seen[str(p.relative_to(top))] = ("file", st.st_mode, st.st_size, st.st_mtime_ns, p.read_bytes())
    return seen


def refused(r, message: str, wall: float | None = None, cpu: float | None = None) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    if wall is not None:  # the 5 s is an idle machine's: its CPU time here, and no wait for long
        assert cpu < WALL_S and wall < HANG_S, f"took {wall:.1f} s, {cpu:.1f} s of CPU"


def timed_kaec(*args, env=None):
    """`kaec ARGS`: (CompletedProcess, wall s, CPU s of the command and its launcher, user and system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r, wall, _ = kaec_bounded(*args, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def closed_port() -> int:
    with socket.socket() as s:  # bound, never listening, then closed: nothing answers there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def no_ray(tmp_path_factory) -> dict:
    """The environment of a Python without Ray, whatever this one has: a sitecustomize on PYTHONPATH marks
    `ray` as absent, so `import ray` raises ImportError and `importlib.util.find_spec("ray")` is None."""
    folder = tmp_path_factory.mktemp("no-ray")
    (folder / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None\n")
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    r = subprocess.run([sys.executable, "-c", "import ray"], env={**os.environ, "PYTHONPATH": path},
                       capture_output=True, text=True)
    assert r.returncode != 0 and "import of ray halted" in r.stderr  # the simulation works
    return {"PYTHONPATH": path}


# ---- case 1: every refusal before --reset deletes anything ---------------------------------------------

def test_reset_with_ray_missing_deletes_nothing(finished, no_ray):
    cfg, root = finished
    before = snapshot(root)
    r, wall, cpu = timed_kaec("train", "-c", cfg, "--runs-dir", root, "--ray", "--reset", "--only", "run",
                              env=no_ray)
    refused(r, "--ray: Ray is not installed", wall, cpu)
    assert snapshot(root) == before


def test_reset_with_no_ray_cluster_at_the_address_deletes_nothing(finished):
    cfg, root = finished
    before = snapshot(root)
    address = f"127.0.0.1:{closed_port()}"
    r, wall, cpu = timed_kaec("train", "-c", cfg, "--runs-dir", root, "--ray", address, "--reset")
    refused(r, f"--ray {address}: ", wall, cpu)
    assert snapshot(root) == before


EXECUTORS = {"in-process": [], "workers": ["--workers", "2"], "ray": ["--ray"]}


def hold_lock(run: Path) -> subprocess.Popen:
    """Another process that holds the run's lock (and its lease) until it is killed."""
    code = ("import sys, time; from kaecompress.experiments.runlock import RunLock\n"
            "assert RunLock(sys.argv[1], expiry=3600).try_acquire() is None\nprint('held', flush=True)\ntime.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("refusal", ["device", "data", "lock", "lease"])
def test_reset_refused_for_any_reason_deletes_nothing(finished, tmp_path, executor, refusal):
    """Whichever executor would train: a device that is not here, a folder dataset that is not there, the
    run held by a live process, or leased by another node whose heartbeat is fresh. (Ray, when it is
    installed, passes its own checks: RAY_ADDRESS=local asks for a cluster of its own, which is never
    started.)"""
    if executor == "ray":
        pytest.importorskip("ray")
    cfg, root = finished
    args, env, holder = [], {"RAY_ADDRESS": "local"} if executor == "ray" else {}, None
    if refusal == "device":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is here")
        args, message = ["--device", "cuda"], "--device: cuda requested but no CUDA device is available"
    elif refusal == "data":
        write_config(cfg, TINY.replace("dataset: mnist", f"dataset: folder:{tmp_path / 'nowhere'}"))
        message = f"data.dataset: folder {tmp_path / 'nowhere'} does not exist"
    elif refusal == "lock":
        holder = hold_lock(root / RUN)
        message = f"{root / RUN}: being trained by pid {holder.pid} on "
    else:
        lease = {"node": "node-b", "host": "elsewhere", "pid": 4242, "token": "b", "acquired_at": time.time(),
                 "heartbeat_at": time.time(), "expiry_s": 600}
        (root / RUN / LEASE).write_text(json.dumps(lease))
        message = f"{root / RUN}: being trained by pid 4242 on elsewhere (last heartbeat "
    before = snapshot(root)
    try:
        r, wall, cpu = timed_kaec("train", "-c", cfg, "--runs-dir", root, "--reset", *EXECUTORS[executor], *args,
                                  env=env)
    finally:
        if holder:
            holder.kill()
            holder.wait()
    refused(r, message, wall, cpu)
    assert snapshot(root) == before


# ---- case 2: no link below the runs folder is followed ---------------------------------------------------

def linked_layout(finished, tmp_path, layout: str) -> tuple[Path, Path, Path]:
    """The finished run moved outside the runs folder, then linked back in as `layout` says:
    "experiment" (runs/tiny -> outside/tiny), "run" (runs/tiny/run -> outside/run) or "attempts"
    (a real run folder whose attempts.jsonl -> outside/attempts.jsonl). Returns (config, runs, outside)."""
    cfg, root = finished
    outside = tmp_path / "outside"
    outside.mkdir()
    if layout == "experiment":
        shutil.move(root / "tiny", outside / "tiny")
        (root / "tiny").symlink_to(Path("..") / "outside" / "tiny")
    elif layout == "run":
        shutil.move(root / RUN, outside / "run")
        (root / RUN).symlink_to(Path("..") / ".." / "outside" / "run")
    else:
        shutil.move(root / RUN / "attempts.jsonl", outside / "attempts.jsonl")
        (root / RUN / "attempts.jsonl").symlink_to(outside / "attempts.jsonl")
    return cfg, root, outside


LINKED = {"experiment": "tiny", "run": "tiny/run", "attempts": "tiny/run/attempts.jsonl"}


@pytest.mark.parametrize("mode", [["--reset"], [], ["--dry-run"], ["--reset", "--workers", "2"]],
                         ids=["reset", "plain", "dry-run", "reset-workers"])
@pytest.mark.parametrize("layout", LINKED)
def test_a_link_below_the_runs_folder_is_refused_never_followed(finished, tmp_path, layout, mode):
    cfg, root, outside = linked_layout(finished, tmp_path, layout)
    before, outside_before = snapshot(root), snapshot(outside)
    r, wall, cpu = timed_kaec("train", "-c", cfg, "--runs-dir", root, *mode)
    refused(r, f"{root / LINKED[layout]}: is a symbolic link; ", wall, cpu)
    assert snapshot(root) == before and snapshot(outside) == outside_before  # no .lock outside either


def test_an_interrupted_run_with_linked_files_is_refused_before_anything_is_read(finished, tmp_path):
    """Without a summary the sweep would resume: read the checkpoint, append to the metrics, write the
    lease. Each file a sweep touches, planted as a link to a file outside, is refused by name."""
    cfg, root = finished
    (root / RUN / runs.SUMMARY).unlink()
    outside = tmp_path / "outside"
    outside.mkdir()
    selected = load_experiment(cfg).runs
    assert plan(selected, root)[0][0] == "interrupted"
    for name in runs.RUN_ENTRIES:
        target, planted = outside / name, root / RUN / name
        saved = planted.with_name(name + ".saved")
        if planted.exists():
            planted.rename(saved)
        target.write_text("outside\n")
        planted.symlink_to(target)
        with pytest.raises(KaecError, match=f"^{planted}: is a symbolic link; "):
            plan(selected, root)
        planted.unlink()
        if saved.exists():
            saved.rename(planted)
        assert target.read_text() == "outside\n"
    assert plan(selected, root)[0][0] == "interrupted"


def test_a_linked_runs_folder_is_the_users_choice(finished, tmp_path, mnist_root):
    """runs -> elsewhere/runs: the link is the root, followed once; --reset retrains there."""
    cfg, real = finished
    (tmp_path / "elsewhere").mkdir()
    shutil.move(real, tmp_path / "elsewhere" / "runs")
    root = tmp_path / "runs"
    root.symlink_to(Path("elsewhere") / "runs")
    summary = tmp_path / "elsewhere" / "runs" / RUN / runs.SUMMARY
    stamp = summary.stat().st_mtime_ns
    r = kaec("train", "-c", cfg, "--runs-dir", root, "--data-root", mnist_root, "--dry-run", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["status"] == "finished", r.stderr
    r = kaec("train", "-c", cfg, "--runs-dir", root, "--data-root", mnist_root, "--reset", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["status"] == "finished" and summary.stat().st_mtime_ns != stamp
    assert root.is_symlink()


def test_appends_and_the_lock_file_never_follow_a_link(tmp_path):
    """Below the sweep's checks: attempts.jsonl is appended to, and .lock opened, without following a link."""
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.write_text("keep me\n")
    (run / runs.ATTEMPTS).symlink_to(outside)
    with pytest.raises(KaecError, match="attempts.jsonl: a symbolic link"):
        attempt_log(run, {"pid": 1})
    (run / LOCK).symlink_to(outside)
    with pytest.raises(KaecError, match=r"\.lock: a symbolic link"):
        RunLock(run).try_acquire()  # filelock itself would open it with O_TRUNC
    assert outside.read_text() == "keep me\n" and not (run / LEASE).exists()
    (run / runs.ATTEMPTS).unlink()
    attempt_log(run, {"pid": 1})
    attempt_log(run, {"pid": 2})
    assert [json.loads(line)["pid"] for line in (run / runs.ATTEMPTS).read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("path", ["tiny", "tiny/run", "tiny/run/checkpoint.pt"])
def test_check_inside(tmp_path, path):
    root = tmp_path / "runs"
    (root / "tiny" / "run").mkdir(parents=True)
    assert runs.check_inside(root, root / path) == (root / path).resolve()
    assert runs.check_run_dir(root, root / "tiny" / "run") == (root / "tiny" / "run").resolve()
    with pytest.raises(KaecError, match="not inside the runs folder"):
        runs.check_inside(root, tmp_path / "elsewhere")
    shutil.rmtree(root / "tiny")
    (tmp_path / "out").mkdir()
    (root / "tiny").symlink_to(tmp_path / "out")
    with pytest.raises(KaecError, match=f"^{root / 'tiny'}: is a symbolic link"):
        runs.check_inside(root, root / path)


# ---- case 5: the heartbeat's age is the one the lease had when read -----------------------------------

def test_the_heartbeat_age_is_taken_when_the_lease_is_read(tmp_path, monkeypatch):
    import kaecompress.experiments.runlock as runlock

    now = time.time()
    (tmp_path / LEASE).write_text(json.dumps({"pid": 7, "host": "h", "heartbeat_at": now - 12}))
    lease = read_lease(tmp_path)
    assert 12 <= lease["read_at"] - lease["heartbeat_at"] < 13
    monkeypatch.setattr(runlock.time, "time", lambda: now + 1000)  # printed much later
    assert describe(lease) == "pid 7 on h (last heartbeat 12 s ago)"
