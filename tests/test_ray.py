"""`kaec train --ray ADDRESS` on a real Ray cluster on loopback: a head that runs no runs and two one-CPU
worker nodes, each started by `ray start` in its own session. A worker node is killed (every process of its
session) while it trains a run: Ray retries the task on the other node, which resumes from the checkpoint,
and every run finishes once with the losses of a local sweep.

The clusters keep to Ray state of their own (temp dir, HOME, token authentication), so that whatever Ray
has left on this machine (~/.ray/auth_token, /tmp/ray/ray_current_cluster) changes nothing, and they leave
nothing behind."""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import kaec, write_config
from test_lock import attempts, check_metrics_complete, start_kaec, wait_for
from test_workers import GRID, INPUTS, SLUGS, same_losses

pytest.importorskip("ray")
RAY = shutil.which("ray")


def session_pids(sid: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session
            if int(fields[3]) == sid:
                pids.append(int(d.name))
    return pids


def session_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[3])


def kill_session(sid: int) -> None:
    """A node dies: every process of the session its `ray start` began (raylet, agents, task workers)."""
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free once closed


USER_RAY_SETTINGS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")  # set at all, Ray reads them


@pytest.fixture(scope="module")
def ray_env():
    """Ray state of the tests' own, for `ray start` and `kaec`: a temp dir (sockets, logs, the record of the
    current cluster; short, for socket paths) and a HOME whose ~/.ray/auth_token the clusters require, as
    one does with RAY_AUTH_MODE=token. The user's RAY_ADDRESS and tokens are set aside meanwhile."""
    root = tempfile.mkdtemp(prefix="kaec-ray-")
    (Path(root) / "home" / ".ray").mkdir(parents=True)
    (Path(root) / "home" / ".ray" / "auth_token").write_text(os.urandom(32).hex())
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in USER_RAY_SETTINGS:
                mp.delenv(name, raising=False)
            yield {"RAY_TMPDIR": root, "HOME": str(Path(root) / "home"), "RAY_AUTH_MODE": "token"}
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(ray_env):
    port = free_port()
    env = {**os.environ, **ray_env, "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4",
           "RAY_health_check_initial_delay_ms": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    nodes = []  # session ids: the daemons a `ray start` leaves behind stay in its session, whose id is its pid
    try:
        for args in (["--head", "--port", str(port), "--num-cpus", "0", "--include-dashboard=false"],
                     ["--address", f"127.0.0.1:{port}", "--num-cpus", "1"],
                     ["--address", f"127.0.0.1:{port}", "--num-cpus", "1"]):
            p = subprocess.Popen([RAY, "start", *args, *common], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)
            nodes.append(p.pid)
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0, out[-2000:]
        assert (Path(ray_env["RAY_TMPDIR"]) / "ray" / "ray_current_cluster").is_file()  # in our temp dir
        yield f"127.0.0.1:{port}", nodes[1:], env
    finally:
        for sid in reversed(nodes):  # the temp dir with its record of this cluster goes with ray_env
            kill_session(sid)


LONG_INPUTS = 4 * INPUTS  # ~6 s a run: Ctrl-C after the first checkpoint lands mid-run even on a loaded machine


def test_ctrl_c_on_the_driver_cancels_then_a_rerun_resumes(tmp_path, mnist_root, cluster):
    address, _, env = cluster
    cfg = write_config(tmp_path / "grid.yml", GRID.replace(f"max_inputs: {INPUTS}\n", f"max_inputs: {LONG_INPUTS}\n"))
    runs = tmp_path / "runs" / "wgrid"
    args = ("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--data-root", mnist_root, "--ray", address)
    driver = start_kaec(*args, env=env)
    try:
        wait_for(lambda: any((runs / s / "checkpoint.pt").is_file() for s in SLUGS), timeout=180,
                 what="a checkpoint")
        os.killpg(driver.pid, signal.SIGINT)  # the driver alone: the tasks run in the nodes' own sessions
        _, err = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("error: interrupted")
    cut = [s for s in SLUGS if (runs / s / "attempts.jsonl").is_file() and not (runs / s / "summary.json").is_file()]
    assert cut
    wait_for(lambda: not any((runs / s / ".lease.json").exists() for s in cut), timeout=60,
             what="the cancelled tasks to let go of their runs")
    # a task cancelled while it still loaded its data had no training to keep; one cut in its loop keeps it
    trained = [s for s in cut if (runs / s / "metrics.jsonl").is_file()]
    assert trained and all((runs / s / "checkpoint.pt").is_file() for s in trained)
    r = kaec(*args, "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert [s["status"] for s in json.loads(r.stdout)] == ["finished"] * 4
    for s in SLUGS:
        tries = attempts(runs / s)
        assert len(tries) == (2 if s in cut else 1), s
        if s in trained:
            assert tries[1]["resumed_from"] > 0
        check_metrics_complete(runs / s, max_inputs=LONG_INPUTS)


def test_a_killed_worker_node_s_run_resumes_elsewhere_once(tmp_path, mnist_root, cluster):
    address, workers, env = cluster
    cfg = write_config(tmp_path / "grid.yml", GRID.replace("  log_every: 320\n", "  log_every: 320\n  resources: {cpu: 1}\n"))
    runs = tmp_path / "runs" / "wgrid"
    driver = start_kaec("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--data-root", mnist_root,
                        "--ray", address, "--json", env=env)
    try:
        def a_run_in_progress():
            for s in SLUGS:
                lease = runs / s / ".lease.json"
                if (runs / s / "checkpoint.pt").is_file() and lease.is_file():
                    return s
            return None

        wait_for(lambda: a_run_in_progress() is not None, timeout=180, what="a run with a checkpoint")
        victim = a_run_in_progress()
        holder = json.loads((runs / victim / ".lease.json").read_text())["pid"]
        node = session_of(holder)
        assert node in workers  # a worker node, not the head (which has no CPUs for runs)
        t_kill = time.time()
        kill_session(node)
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, err
    summaries = {s["matrix_slug"]: s for s in json.loads(out)}
    # the losses of a local sweep (one process, one thread, like each one-CPU task)
    ref = kaec("train", "-c", cfg, "--runs-dir", tmp_path / "local", "--data-root", mnist_root, "--json",
               "--threads", "1")
    assert ref.returncode == 0, ref.stderr
    same_losses(summaries, {s["matrix_slug"]: s for s in json.loads(ref.stdout)})
    first, second = attempts(runs / victim)
    assert first["pid"] == holder and second["pid"] != holder
    assert second["resumed_from"] > 0 and second["started_at"] > t_kill
    assert session_of_alive(second["pid"]) != node
    for s in SLUGS:
        if s != victim:
            assert len(attempts(runs / s)) == 1, s
        check_metrics_complete(runs / s, max_inputs=INPUTS)


def session_of_alive(pid: int) -> int | None:
    try:
        return session_of(pid)
    except OSError:
        return None


def test_an_address_where_no_cluster_answers_is_one_line_exit_2(tmp_path, mnist_root):
    port = free_port()  # nothing listens there
    cfg = write_config(tmp_path / "grid.yml", GRID)
    t0 = time.monotonic()
    r = kaec("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--data-root", mnist_root, "--ray",
             f"127.0.0.1:{port}")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"error: --ray 127.0.0.1:{port}: no Ray cluster answers there")
    assert len(r.stderr.strip().splitlines()) == 1
    assert time.monotonic() - t0 < 120 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("where", ["ray_current_cluster", "RAY_ADDRESS"])
def test_a_stopped_cluster_found_by_discovery_is_one_line_exit_2(tmp_path, mnist_root, where):
    """`--ray` without an address joins what Ray finds: RAY_ADDRESS, else the cluster `ray start` last
    recorded in its temp dir. One that has stopped since is refused in seconds (Ray would wait minutes)."""
    dead = f"127.0.0.1:{free_port()}"
    record = tmp_path / "ray" / "ray_current_cluster"
    record.parent.mkdir()
    record.write_text(dead + "\n")
    env = {"RAY_TMPDIR": str(tmp_path), "HOME": str(tmp_path / "home"), "RAY_ADDRESS": ""}
    if where == "RAY_ADDRESS":
        record.unlink()
        env["RAY_ADDRESS"] = dead
    cfg = write_config(tmp_path / "grid.yml", GRID)
    t0 = time.monotonic()
    r = kaec("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--data-root", mnist_root, "--ray", env=env)
    assert r.returncode == 2, r.stderr
    assert time.monotonic() - t0 < 15
    assert len(r.stderr.strip().splitlines()) == 1 and dead in r.stderr, r.stderr
    if where == "RAY_ADDRESS":
        assert r.stderr.startswith(f"error: --ray: RAY_ADDRESS={dead}: no Ray cluster answers there")
    else:
        assert r.stderr.startswith(f"error: --ray: the Ray cluster recorded in {record} ({dead}) does not answer")
        assert "ray stop --force" in r.stderr and record.read_text() == dead + "\n"  # left for the user to remove
    assert not (tmp_path / "runs").exists() and not (tmp_path / "home").exists()


@pytest.mark.parametrize("temp", [{"RAY_TMPDIR": "/r", "TMPDIR": "/t"}, {"TMPDIR": "/t"}, {}])
def test_the_recorded_cluster_is_looked_for_where_ray_records_it(monkeypatch, temp):
    """The sweep finds `ray start`'s record without importing Ray (raysweep.address_file): the same path as
    Ray's own rule, whichever temp dir the environment names."""
    from ray._common.utils import get_ray_address_file

    from kaecompress.experiments.raysweep import address_file

    for name in ("RAY_TMPDIR", "TMPDIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in temp.items():
        monkeypatch.setenv(name, value)
    assert address_file() == Path(get_ray_address_file(None))


def test_a_cluster_of_its_own_leaves_no_token_in_home(tmp_path, mnist_root, monkeypatch):
    """With nothing to join, `--ray` starts a cluster on this machine; Ray would save that cluster's token as
    ~/.ray/auth_token, which later `ray start` heads would then require of every node."""
    cfg = write_config(tmp_path / "grid.yml", GRID)
    root = tempfile.mkdtemp(prefix="kaec-ray-")  # a short temp dir: Ray's socket paths live there
    home = tmp_path / "home"
    home.mkdir()
    for name in USER_RAY_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    try:
        r = kaec("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--data-root", mnist_root, "--ray",
                 "--only", SLUGS[0], "--json", env={"RAY_TMPDIR": root, "HOME": str(home)})
        assert r.returncode == 0, r.stderr
        assert [s["status"] for s in json.loads(r.stdout)] == ["finished"]
        assert not (home / ".ray").exists() and not (Path(root) / "ray" / "ray_current_cluster").exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_pack_is_one_ray_task(tmp_path, mnist_root, cluster):
    from test_workers import PACKS, same_packed_losses

    address, _, env = cluster
    cfg = write_config(tmp_path / "grid.yml", GRID.replace("  log_every: 320\n", "  log_every: 320\n  resources: {cpu: 1}\n"))
    runs = tmp_path / "runs" / "wgrid"
    r = kaec("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--data-root", mnist_root, "--ray", address,
             "--pack", "2", "--json", env=env)
    assert r.returncode == 0, r.stderr
    ref = kaec("train", "-c", cfg, "--runs-dir", tmp_path / "local", "--data-root", mnist_root, "--json",
               "--threads", "1")
    assert ref.returncode == 0, ref.stderr
    same_packed_losses({s["matrix_slug"]: s for s in json.loads(r.stdout)},
                       {s["matrix_slug"]: s for s in json.loads(ref.stdout)})
    for pack in PACKS:
        tries = [attempts(runs / slug) for slug in pack]
        assert all(len(t) == 1 and t[0]["packed_with"] == 2 for t in tries), tries
        assert tries[0][0]["pid"] == tries[1][0]["pid"]  # one task
        for slug in pack:
            check_metrics_complete(runs / slug, max_inputs=INPUTS)
