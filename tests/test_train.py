import dataclasses
import json
import math

import pytest
import torch
import yaml

from kaecompress import KaecError

from kaecompress.experiments import runs
from kaecompress.experiments.config import build_run
from kaecompress.experiments.train import evaluate, load_checkpoint, train_run

from conftest import TINY, StopAt


def tiny(**train):
    cfg = build_run(yaml.safe_load(TINY), "tiny.yml")
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))


@pytest.fixture
def data(mnist_train, mnist_val):
    return {"train_images": mnist_train[:256], "val_images": mnist_val[:200]}


def test_a_run_trains_logs_and_summarises(tmp_path, data):
    cfg = tiny(max_inputs=600)
    summary = train_run(cfg, tmp_path / "run", **data)
    assert summary["status"] == "finished" and summary["inputs"] == 600
    assert summary["params"] == sum(p.numel() for p in train_run.__globals__["build_model"](cfg).parameters())
    assert summary["compression_ratio"] == 784 / 8
    assert summary["throughput"] == pytest.approx(600 / summary["train_time_s"])
    metrics = runs.read_metrics(tmp_path / "run")
    vals = [m for m in metrics if "val_loss" in m]
    # 256 training images: epochs end at 256 and 512, and the budget at 600
    assert [m["inputs"] for m in vals] == [256, 512, 600]
    assert summary["final_val_loss"] == vals[-1]["val_loss"]
    assert summary["best_val_loss"] == min(m["val_loss"] for m in vals)
    train_losses = [m["train_loss"] for m in metrics if "train_loss" in m]
    assert train_losses[-1] < train_losses[0]
    # the validation loss is the mean squared error of the saved model on the validation images
    ckpt = load_checkpoint(tmp_path / "run" / runs.CHECKPOINT)
    model = train_run.__globals__["build_model"](cfg)
    model.load_state_dict(ckpt["model"])
    assert evaluate(model, data["val_images"], 64, torch.device("cpu")) == pytest.approx(summary["final_val_loss"])
    expected = torch.mean((model(data["val_images"]) - data["val_images"]) ** 2).item()
    assert summary["final_val_loss"] == pytest.approx(expected, rel=1e-5)
    assert yaml.safe_load((tmp_path / "run" / runs.CONFIG).read_text())["train"]["max_inputs"] == 600


def test_same_trial_same_numbers_other_trial_other_numbers(tmp_path, data):
    a = train_run(tiny(), tmp_path / "a", **data)
    b = train_run(tiny(), tmp_path / "b", **data)
    c = train_run(dataclasses.replace(tiny(), trial=2), tmp_path / "c", **data)
    assert a["final_val_loss"] == b["final_val_loss"]
    assert a["final_val_loss"] != c["final_val_loss"]


def test_an_interrupted_run_resumes_to_the_same_result(tmp_path, data):
    cfg = tiny(max_inputs=640)
    whole = train_run(cfg, tmp_path / "whole", **data)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path / "split", progress=StopAt(384), **data)
    assert runs.run_status(tmp_path / "split") == "interrupted"
    assert not (tmp_path / "split" / runs.SUMMARY).exists()
    ckpt = load_checkpoint(tmp_path / "split" / runs.CHECKPOINT)
    assert ckpt["inputs"] == 384 and ckpt["train_time"] > 0
    resumed = train_run(cfg, tmp_path / "split", **data)
    assert resumed["inputs"] == 640
    assert resumed["final_val_loss"] == whole["final_val_loss"]
    assert resumed["train_time_s"] > ckpt["train_time"]
    logged = [m["inputs"] for m in runs.read_metrics(tmp_path / "split") if "train_loss" in m]
    assert logged == sorted(set(logged))  # nothing logged twice


def test_a_finished_run_is_not_trained_again(tmp_path, data):
    first = train_run(tiny(), tmp_path / "run", **data)
    stamp = (tmp_path / "run" / runs.CHECKPOINT).stat().st_mtime_ns
    again = train_run(tiny(), tmp_path / "run", **data)
    assert again == json.loads(json.dumps(first))
    assert (tmp_path / "run" / runs.CHECKPOINT).stat().st_mtime_ns == stamp


def test_a_diverging_run_is_marked_diverged(tmp_path, data):
    cfg = tiny(optimizer="SGD", lr=1e12)
    summary = train_run(cfg, tmp_path / "run", **data)
    assert summary["status"] == "diverged"
    assert runs.run_status(tmp_path / "run") == "diverged"
    assert summary["inputs"] < cfg.train.max_inputs or not math.isfinite(summary["final_val_loss"] or math.nan)


def test_unknown_optimizer_writes_nothing(tmp_path, data):
    with pytest.raises(KaecError, match=r"unknown optimizer 'Adamm'.*AdamW"):
        train_run(tiny(optimizer="Adamm"), tmp_path / "run", **data)
    assert not (tmp_path / "run").exists()


def test_checkpoint_from_another_model_is_refused(tmp_path, data):
    with pytest.raises(KeyboardInterrupt):
        train_run(tiny(), tmp_path / "run", progress=StopAt(64), **data)
    other = tiny()
    other = dataclasses.replace(other, model=dataclasses.replace(other.model, latent_dim=4))
    with pytest.raises(KaecError, match=r"trained with other settings \(model.latent_dim\); use --reset"):
        train_run(other, tmp_path / "run", **data)
    # settings that leave the numbers alone may change between sessions
    moved = tiny(checkpoint_every_s=5.0)
    assert train_run(moved, tmp_path / "run", **data)["status"] == "finished"


def test_a_finished_run_trained_with_other_settings_is_stale_not_skipped(tmp_path, data):
    first = train_run(tiny(), tmp_path / "run", **data)
    changed = tiny(lr=0.01, max_inputs=128)
    assert runs.run_status(tmp_path / "run", changed.recipe()) == "stale"
    assert runs.run_status(tmp_path / "run", tiny().recipe()) == "finished"
    with pytest.raises(KaecError, match=r"other settings \(train.lr, train.max_inputs\)"):
        train_run(changed, tmp_path / "run", **data)
    assert runs.read_json(tmp_path / "run" / runs.SUMMARY) == first  # untouched


class CtrlCAt(StopAt):
    """Sends a real SIGINT to this process once `inputs` have been seen, as a user's Ctrl-C would."""

    def update(self, inputs, loss, throughput):
        if inputs == self.inputs:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_at_an_epoch_end_validates_first_and_resumes_to_the_same_result(tmp_path, data):
    cfg = tiny(max_inputs=640, log_every=32)
    whole = train_run(cfg, tmp_path / "whole", **data)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path / "split", progress=CtrlCAt(256), **data)  # 256 images: the first epoch end
    ckpt = load_checkpoint(tmp_path / "split" / runs.CHECKPOINT)
    assert ckpt["inputs"] == 256
    assert [m["inputs"] for m in runs.read_metrics(tmp_path / "split") if "val_loss" in m] == [256]
    resumed = train_run(cfg, tmp_path / "split", **data)
    assert resumed["final_val_loss"] == whole["final_val_loss"]
    vals = [m["inputs"] for m in runs.read_metrics(tmp_path / "split") if "val_loss" in m]
    assert vals == [256, 512, 640]


def test_optimizer_settings_it_refuses_are_a_clear_error(tmp_path, data):
    with pytest.raises(KaecError, match="refuses these settings"):
        train_run(tiny(weight_decay=-0.1), tmp_path / "run", **data)
    assert not (tmp_path / "run").exists()


def test_an_interrupted_run_under_other_settings_is_stale_before_anything_trains(tmp_path, data):
    from kaecompress.experiments.sweep import run_state

    with pytest.raises(KeyboardInterrupt):
        train_run(tiny(), tmp_path / "run", progress=StopAt(64), **data)
    assert run_state(tmp_path / "run", tiny()) == ("interrupted", [])
    assert run_state(tmp_path / "run", tiny(lr=0.5)) == ("stale", ["train.lr"])
    assert run_state(tmp_path / "run", tiny(device="cpu", log_every=7)) == ("interrupted", [])
