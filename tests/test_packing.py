"""Packed training (kaecompress.experiments.packing): a packed run must be the run trained alone."""

import dataclasses
import json
import math

import pytest
import torch
import yaml

from kaecompress import KaecError
from kaecompress.experiments import packing, runs
from kaecompress.experiments.config import build_run
from kaecompress.experiments.packing import PackedModel, pack_key, parse_pack, train_pack
from kaecompress.experiments.train import build_model, load_checkpoint, train_run

from conftest import TINY, StopAt, kaec, write_config

REL = 1e-5


def tiny(trial=1, **train):
    cfg = build_run(yaml.safe_load(TINY), "tiny.yml", trial=trial)
    cfg = dataclasses.replace(cfg, matrix_slug=f"t{trial}")
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))


def members(max_inputs=640, kind="mixed"):
    """Three runs that differ in trial (seed and data order), optimizer and learning rate ("mixed": each
    optimizer steps on its own), in trial and log interval only ("trials": one group of StackedOptimizers),
    or both ("groups")."""
    if kind == "trials":
        return [tiny(1, max_inputs=max_inputs), tiny(2, max_inputs=max_inputs),
                tiny(3, max_inputs=max_inputs, log_every=96)]
    if kind == "groups":  # the first and last step alike: side by side in the pack, stepped as one
        return [tiny(1, max_inputs=max_inputs), tiny(2, optimizer="SGD", lr=0.5, max_inputs=max_inputs),
                tiny(3, max_inputs=max_inputs, log_every=96)]
    return [tiny(1, max_inputs=max_inputs), tiny(2, optimizer="AdamW", lr=3e-3, max_inputs=max_inputs),
            tiny(3, optimizer="SGD", lr=0.5, max_inputs=max_inputs, log_every=96)]


@pytest.fixture
def stacked_steps(monkeypatch):
    """The members each step of a pack stepped in groups (StackedOptimizers), one list per step."""
    calls = []
    step = packing.StackedOptimizers.step
    monkeypatch.setattr(packing.StackedOptimizers, "step", lambda self, inputs: (
        calls.append([(start, stop) for start, stop, _ in self.groups]), step(self, inputs))[1])
    return calls


@pytest.fixture
def data(mnist_train, mnist_val):
    return {"train_images": mnist_train[:256], "val_images": mnist_val[:200]}


def max_rel(a_dir, b_dir):
    """The largest relative difference between two runs' logged losses; their rows must line up."""
    a, b = runs.read_metrics(a_dir), runs.read_metrics(b_dir)

    def shape(rows):  # which row logs what, at which input, and which are None
        return [{k: v for k, v in r.items() if k == "inputs" or v is None} | {"keys": sorted(r)} for r in rows]

    assert shape(a) == shape(b)
    return max(abs(x[k] - y[k]) / abs(x[k]) for x, y in zip(a, b) for k in x if k != "inputs" and x[k] is not None)


def test_the_grouped_forward_is_each_members_own_model():
    cfg = tiny()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, encoder_kae_order=3, channels=[3, 2]))
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(build_model(cfg))
    x = torch.rand(3, 5, 1, 28, 28)
    alone = torch.stack([m(x[i]) for i, m in enumerate(models)])
    packed = PackedModel(models)
    torch.testing.assert_close(packed.forward(x), alone, rtol=1e-5, atol=1e-6)
    # the members' own parameters are slices of the stacked ones: an update of either is seen by both
    with torch.no_grad():
        models[1].decoder[0].coeffs.add_(1.0)
    assert torch.equal(packed.stacked["decoder.0.coeffs"][1], models[1].decoder[0].coeffs)


@pytest.mark.parametrize("kind", ["mixed", "trials", "groups"])
def test_a_packed_run_equals_the_run_trained_alone(tmp_path, data, kind, stacked_steps):
    cfgs = members(kind=kind)
    alone = [train_run(c, tmp_path / f"alone{i}", **data) for i, c in enumerate(cfgs)]
    packed = train_pack(cfgs, [tmp_path / f"pack{i}" for i in range(3)], **data)
    assert stacked_steps == [{"mixed": [], "trials": [(0, 3)], "groups": [(0, 2)]}[kind]] * (640 // 32)
    for i, (a, p) in enumerate(zip(alone, packed)):
        assert a["status"] == p["status"] == "finished" and p["inputs"] == 640
        assert set(a) == set(p)
        assert sorted(f.name for f in (tmp_path / f"alone{i}").iterdir()) == \
            sorted(f.name for f in (tmp_path / f"pack{i}").iterdir())
        assert max_rel(tmp_path / f"alone{i}", tmp_path / f"pack{i}") < REL
        assert p["final_val_loss"] == pytest.approx(a["final_val_loss"], rel=REL)
        assert p["params"] == a["params"]
        # the checkpoint is the member's own: its keys, its optimizer state, one member's weights only
        ca, cp = (load_checkpoint(tmp_path / d / runs.CHECKPOINT) for d in (f"alone{i}", f"pack{i}"))
        assert ca.keys() == cp.keys() and ca["model"].keys() == cp["model"].keys()
        assert ca["optimizer"]["param_groups"] == cp["optimizer"]["param_groups"]
        for k, v in ca["model"].items():
            torch.testing.assert_close(cp["model"][k], v, rtol=1e-3, atol=5e-5)  # Adam magnifies 1e-7 grads
        sizes = [(tmp_path / d / runs.CHECKPOINT).stat().st_size for d in (f"alone{i}", f"pack{i}")]
        assert sizes[1] < 1.2 * sizes[0]
    # a finished pack is not trained again
    assert train_pack(cfgs, [tmp_path / f"pack{i}" for i in range(3)], **data) == \
        [json.loads(json.dumps(p)) for p in packed]


@pytest.mark.parametrize("kind", ["mixed", "trials"])
def test_an_interrupted_pack_resumes_every_member_from_its_checkpoint(tmp_path, data, kind):
    cfgs = members(kind=kind)
    whole = train_pack(cfgs, [tmp_path / f"whole{i}" for i in range(3)], **data)
    dirs = [tmp_path / f"split{i}" for i in range(3)]
    with pytest.raises(KeyboardInterrupt):
        train_pack(cfgs, dirs, progresses=[StopAt(384), None, None], **data)
    for d in dirs:
        assert runs.run_status(d) == "interrupted" and not (d / runs.SUMMARY).exists()
        assert load_checkpoint(d / runs.CHECKPOINT)["inputs"] == 384
    resumed = train_pack(cfgs, dirs, **data)
    for i, (w, r) in enumerate(zip(whole, resumed)):
        assert r["status"] == "finished" and r["inputs"] == 640
        assert r["final_val_loss"] == pytest.approx(w["final_val_loss"], rel=REL)
        assert max_rel(tmp_path / f"whole{i}", dirs[i]) < REL
        logged = [m["inputs"] for m in runs.read_metrics(dirs[i]) if "train_loss" in m]
        assert logged == sorted(set(logged))


def test_members_at_different_points_train_apart_and_still_finish(tmp_path, data):
    cfgs = members()[:2]
    with pytest.raises(KeyboardInterrupt):
        train_run(cfgs[0], tmp_path / "a", progress=StopAt(64), **data)
    out = train_pack(cfgs, [tmp_path / "a", tmp_path / "b"], **data)
    assert [s["status"] for s in out] == ["finished", "finished"]


def test_a_diverging_member_is_marked_diverged_while_the_others_finish(tmp_path, data):
    cfgs = members()
    cfgs[1] = tiny(2, optimizer="SGD", lr=1e12, max_inputs=640)
    packed = train_pack(cfgs, [tmp_path / f"pack{i}" for i in range(3)], **data)
    assert [s["status"] for s in packed] == ["finished", "diverged", "finished"]
    assert runs.run_status(tmp_path / "pack1") == "diverged"
    alone = train_run(cfgs[1], tmp_path / "alone1", **data)
    assert alone["status"] == "diverged" and alone["inputs"] == packed[1]["inputs"]
    for i in (0, 2):  # the others are untouched by their diverged neighbour
        train_run(cfgs[i], tmp_path / f"alone{i}", **data)
        assert max_rel(tmp_path / f"alone{i}", tmp_path / f"pack{i}") < REL


def test_a_member_diverging_in_a_stacked_step_leaves_the_others_their_own(tmp_path, data, monkeypatch,
                                                                           stacked_steps):
    """Members stepping as one (trials of one setting): when one diverges, the others go on one by one,
    each on its own optimizer state, and still end as they would alone."""
    cfgs = members(kind="trials")
    losses, calls = PackedModel.losses, []

    def second_turns_nan(self, x, seeds):
        out = losses(self, x, seeds)
        calls.append(1)
        return out * torch.tensor([1.0, math.nan if len(calls) > 4 else 1.0, 1.0]) if len(out) == 3 else out

    monkeypatch.setattr(PackedModel, "losses", second_turns_nan)
    packed = train_pack(cfgs, [tmp_path / f"pack{i}" for i in range(3)], **data)
    assert [s["status"] for s in packed] == ["finished", "diverged", "finished"]
    assert 4 <= len(stacked_steps) < 640 // 32  # stacked until the divergence, one by one after it
    assert stacked_steps[0] == [(0, 3)]
    monkeypatch.undo()
    for i in (0, 2):
        train_run(cfgs[i], tmp_path / f"alone{i}", **data)
        assert max_rel(tmp_path / f"alone{i}", tmp_path / f"pack{i}") < REL


def test_what_packs_together():
    from kaecompress.experiments.packing import pack_limit

    cpu = torch.device("cpu")
    a, b = tiny(1), tiny(2, optimizer="SGD", lr=0.1, log_every=7)
    assert pack_key(a, cpu) == pack_key(b, cpu)
    assert pack_key(a, cpu) != pack_key(tiny(1, batch_size=16), cpu)
    assert pack_key(a, cpu) != pack_key(tiny(1, max_inputs=64), cpu)
    other = dataclasses.replace(a, model=dataclasses.replace(a.model, latent_dim=4))
    assert pack_key(a, cpu) != pack_key(other, cpu)
    assert pack_limit("auto", cpu) == 1 and pack_limit("auto", torch.device("cuda")) == packing.AUTO_PACK_CUDA
    assert pack_limit(3, cpu) == 3 and pack_limit("off", cpu) == 1
    assert parse_pack("auto") == "auto" and parse_pack("off") == "off" and parse_pack("4") == 4
    assert parse_pack("1") == "off"
    for bad in ("0", "-2", "many", "2.5"):
        with pytest.raises(KaecError, match="--pack"):
            parse_pack(bad)


def test_a_sweep_packs_its_runs(tmp_path, mnist_root):
    from kaecompress.experiments.sweep import run_dir, run_sweep

    cfgs = [dataclasses.replace(c, train=dataclasses.replace(c.train, max_inputs=320)) for c in members()]
    report = run_sweep(cfgs, tmp_path / "runs", data_root=mnist_root, pack=2)
    assert [s["status"] for s in report.summaries] == ["finished"] * 3
    attempts = [json.loads((run_dir(tmp_path / "runs", c) / "attempts.jsonl").read_text().splitlines()[0])
                for c in cfgs]
    assert [a.get("packed_with") for a in attempts] == [2, 2, None]  # two packed, the third alone
    again = run_sweep(cfgs, tmp_path / "runs", data_root=mnist_root, pack=2)
    assert again.skipped == [c.matrix_slug for c in cfgs]


def test_the_cli_checks_pack_first(tmp_path):
    cfg = write_config(tmp_path / "t.yml", TINY)
    bad = kaec("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--pack", "lots")
    assert bad.returncode == 2 and "--pack: expected auto, off or a number" in bad.stderr
    assert not (tmp_path / "runs").exists()
    assert "auto|N|off" in kaec("train", "--help").stdout


def test_codec_runs_at_several_lambdas_pack_with_the_losses_of_runs_alone(tmp_path, data):
    from test_codec_models import codec_config

    # a codec family: one recipe at three lambdas, trials (seeds) and optimizers apart
    cfgs = [dataclasses.replace(c, matrix_slug=f"c{i}") for i, c in enumerate([
        codec_config(1e-4, max_inputs=640, log_every=96),
        codec_config(1e-3, max_inputs=640, log_every=96, optimizer="Adam", seed=1),
        codec_config(1e-2, max_inputs=640, log_every=128, seed=2)])]
    cpu = torch.device("cpu")
    assert pack_key(cfgs[0], cpu) == pack_key(cfgs[2], cpu) != pack_key(tiny(), cpu)
    alone = [train_run(c, tmp_path / f"alone{i}", **data) for i, c in enumerate(cfgs)]
    packed = train_pack(cfgs, [tmp_path / f"pack{i}" for i in range(3)], **data)
    for i, (a, p) in enumerate(zip(alone, packed)):
        assert a["status"] == p["status"] == "finished" and set(a) == set(p)
        # every logged loss (rate + lambda * distortion: a member given another's lambda would be far off)
        assert max_rel(tmp_path / f"alone{i}", tmp_path / f"pack{i}") < REL
        for key in ("final_val_loss", "bytes_per_image", "psnr"):  # the codec figures measured at the end
            assert p[key] == pytest.approx(a[key], rel=REL), key
        ca, cp = (load_checkpoint(tmp_path / d / runs.CHECKPOINT)["model"] for d in (f"alone{i}", f"pack{i}"))
        assert ca.keys() == cp.keys()
        # the same integer tables, up to a count of 1 in 65,536 where float rounding tips a quantised mass
        assert torch.equal(ca["prior.table_offsets"], cp["prior.table_offsets"])
        step = (ca["prior.table_freqs"] - cp["prior.table_freqs"]).abs()
        assert step.max() <= 1 and (step > 0).float().mean() < 0.01


def test_a_member_whose_measurement_fails_is_failed_alone_with_its_weights_kept(tmp_path, data, monkeypatch):
    """The bytes of a codec run are measured after its last checkpoint: one member's measurement failing
    marks that member failed (its trained weights kept, so a rerun only measures) and ends no other."""
    from kaecompress.experiments import codecstats
    from test_codec_models import codec_config

    cfgs = [dataclasses.replace(codec_config(lmbda, max_inputs=256, log_every=128), matrix_slug=f"c{i}")
            for i, lmbda in enumerate((1e-4, 1e-3, 1e-2))]
    measure, calls = codecstats.measure, []

    def first_fails(model, images):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("measurement broke")
        return measure(model, images)

    monkeypatch.setattr(codecstats, "measure", first_fails)
    packed = train_pack(cfgs, [tmp_path / f"pack{i}" for i in range(3)], **data)
    assert len(calls) == 3
    assert [s["status"] for s in packed] == ["failed", "finished", "finished"]
    assert packed[0]["error"] == "RuntimeError: measurement broke" and "measurement broke" in packed[0]["traceback"]
    assert runs.read_json(tmp_path / "pack0" / runs.SUMMARY) == packed[0]
    for i in range(3):  # every member's last checkpoint is its whole budget
        assert load_checkpoint(tmp_path / f"pack{i}" / runs.CHECKPOINT)["inputs"] == 256
    assert "bytes_per_image" in packed[1] and "bytes_per_image" in packed[2]
