import pytest
import yaml

from kaecompress import KaecError
from kaecompress.experiments.config import build_run, expand, load_experiment

from conftest import TINY


def raw(**overrides):
    data = yaml.safe_load(TINY)
    for dotted, value in overrides.items():
        section, _, key = dotted.partition("__")
        if key:
            data[section][key] = value
        else:
            data[section] = value
    return data


def test_quickstart_and_reference_experiments_load():
    exp = load_experiment("experiments/quickstart.yml")
    (run,) = exp.runs
    assert run.model.decoder_kae_order == 3 and run.model.channels == (32,)
    assert run.train.lr == pytest.approx(3e-4) and run.train.max_inputs == 60_000
    ref = load_experiment("experiments/mnist-reference.yml")
    assert [r.matrix_slug for r in ref.runs] == ["trial:1_opt:AdamW_deckae:3", "trial:1_opt:Adam_deckae:0"]
    assert [r.train.optimizer for r in ref.runs] == ["AdamW", "Adam"]
    assert [r.model.decoder_kae_order for r in ref.runs] == [3, 0]


def test_matrix_order_slugs_ids_and_typed_substitution():
    data = raw(model__kernel_size="${ks}", train__batch_size="${bs}")
    data["experiment_name"] = "grid-${ks}"
    data["matrix"] = {"trial": [1, 2], "bs": [64, 128], "ks": [3, 7]}
    data["exclude"] = [{"trial": 2, "ks": 3}]
    _, runs = expand(data, "grid.yml")
    assert [r.matrix_slug for r in runs][:3] == ["trial:1_bs:64_ks:3", "trial:1_bs:64_ks:7", "trial:1_bs:128_ks:3"]
    assert len(runs) == 6 and all(not (r.trial == 2 and r.model.kernel_size == 3) for r in runs)
    assert [r.matrix_id for r in runs] == ["1", "2", "3", "4", "5", "6"]
    assert runs[0].model.kernel_size == 3 and isinstance(runs[0].train.batch_size, int)
    assert runs[1].experiment_name == "grid-7"
    assert runs[4].trial == 2 and runs[4].seed != runs[0].seed


def test_ids_are_zero_padded():
    data = raw()
    data["matrix"] = {"trial": list(range(12))}
    _, runs = expand(data, "x.yml")
    assert runs[0].matrix_id == "01" and runs[-1].matrix_id == "12"


@pytest.mark.parametrize("change,message", [
    ({"train__lrr": 0.1}, r"x.yml: train.lrr: unknown key \(expected one of: batch_size"),
    ({"train__batch_size": "many"}, r"x.yml: train.batch_size: expected an integer, got 'many'"),
    ({"model__channels": "wide"}, r"x.yml: model.channels: expected a list"),
    ({"model__activation": "swish2"}, r"x.yml: model.activation: unknown activation 'swish2'"),
    ({"data__dataset": "imagenet"}, r"x.yml: data.dataset: unknown dataset 'imagenet'"),
    ({"train__lr": -1.0}, r"x.yml: train.lr: expected a positive value"),
    ({"train__device": "tpu"}, r"x.yml: train.device: expected auto, cpu or cuda"),
    ({"model__decoder_kae_order": -2}, r"x.yml: model.decoder_kae_order: expected an order >= 0"),
])
def test_bad_values_name_file_and_key(change, message):
    with pytest.raises(KaecError, match=message):
        build_run(raw(**change), "x.yml")


def test_missing_keys_are_named():
    data = raw()
    del data["train"]["max_inputs"]
    with pytest.raises(KaecError, match=r"x.yml: train.max_inputs: missing required key"):
        build_run(data, "x.yml")
    del data["model"]
    with pytest.raises(KaecError, match=r"x.yml: missing required key 'model'"):
        build_run(data, "x.yml")


def test_unknown_matrix_variable():
    data = raw(model__kernel_size="${kernel}")
    data["matrix"] = {"ks": [3]}
    with pytest.raises(KaecError, match=r"\$\{kernel\} names no matrix key"):
        expand(data, "x.yml")


def test_invalid_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("experiment_name: x\ndata: {dataset: mnist\nmodel: 3\n")
    with pytest.raises(KaecError, match=r"bad.yml: line \d+ invalid YAML"):
        load_experiment(bad)
    with pytest.raises(KaecError, match="cannot read an experiment file"):
        load_experiment(tmp_path / "missing.yml")


def test_yaml_tags_are_not_executed(tmp_path):
    bad = tmp_path / "evil.yml"
    bad.write_text("experiment_name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(KaecError, match="invalid YAML"):
        load_experiment(bad)


def test_run_folders_never_collide_or_escape():
    data = raw(train__optimizer="${opt}")
    data["matrix"] = {"opt": ["Adam", "Adam "]}
    with pytest.raises(KaecError, match="give the same run folder name 'opt:Adam'"):
        expand(data, "x.yml")
    data["matrix"] = {"../up": ["Adam"]}
    with pytest.raises(KaecError, match=r"matrix key '../up': use letters"):
        expand(data, "x.yml")


def test_a_key_given_twice_is_refused_not_silently_overwritten(tmp_path):
    text = open("experiments/quickstart.yml").read()
    dup = tmp_path / "dup.yml"
    dup.write_text(text.replace("train:\n", "train:\n  lr: 5\n", 1))
    with pytest.raises(KaecError, match=r"dup.yml: line \d+ invalid YAML \(key 'lr' given twice\)"):
        load_experiment(dup)
    binary = tmp_path / "bin.yml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(KaecError, match="bin.yml: not a UTF-8 text file"):
        load_experiment(binary)


def test_yaml_merge_keys_still_work(tmp_path):
    cfg = tmp_path / "merge.yml"
    cfg.write_text(TINY.replace("  batch_size: 32\n", "  <<: {batch_size: 16, lr: 5.0}\n"))
    run = load_experiment(cfg).runs[0]
    assert run.train.batch_size == 16 and run.train.lr == 1.0e-3  # merged, and the explicit key wins
