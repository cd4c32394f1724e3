import pytest

from kaecompress import KaecError
from kaecompress.experiments.config import load_experiment

STUDY = "tests/data/study-cnn-kae-01.yml"


def test_the_study_format_gives_the_same_runs_as_our_native_file():
    study, native = load_experiment(STUDY), load_experiment("experiments/cnn-kae-01.yml")
    assert len(study.runs) == 256
    assert [(r.model, r.train, r.data, r.trial) for r in study.runs] == \
        [(r.model, r.train, r.data, r.trial) for r in native.runs]
    first = study.runs[0]
    assert first.matrix_slug == "trial:1_bs:64_lr:0.0003_opt:Adam_ch:[32]_ks:3_enckae:0_deckae:0_act:relu_outact:None"
    assert first.matrix == {"trial": 1, "bs": 64, "lr": 0.0003, "opt": "Adam", "ch": [32], "ks": 3, "enckae": 0,
                            "deckae": 0, "act": "relu", "outact": None}
    assert first.train.lr == 3e-4 and first.train.max_inputs == 300_000
    assert study.runs[-1].matrix_id == "256"


def variant(tmp_path, old, new):
    text = open(STUDY).read()
    assert old in text
    path = tmp_path / "study.yml"
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize("old,new,message", [
    ("  CNNKAE(\n", "  __import__('os').system('echo pwned')\n  CNNKAE(\n",
     r"study.yml:\d+: model: expected import lines and one call of CNNKAE"),
    ("activation=${act},", "activation=print('x'),", r"study.yml:50: model: only literals and globals"),
    ("latent_dim=CODE_SIZE", "latent_dim=CODE", r"study.yml:45: model: unknown name 'CODE'"),
    ("  mnist_dataset(shape=SHAPE, train=True)", "  open('/etc/passwd')",
     r"study.yml:\d+: train_set: 'open' is not allowed"),
    ("loss_function: l2", "loss_function: l1", r"study.yml:65: loss_function: only l2"),
    ("feature_loss_weight: 0.", "feature_loss_weight: 0.5", r"feature_loss_weight: only 0"),
    ("#scheduler: torch", "scheduler: torch", r"study.yml:62: unknown key 'scheduler'"),
    ("kernel_size=${ks},", "kernel_size=${ks}, dropout=0.1,", r"unknown CNNKAE argument 'dropout'"),
    ("kernel_size=${ks},", "kernel_size=${ks}, kernel_size=3,", r"study.yml:\d+: model: keyword 'kernel_size' given twice"),
])
def test_anything_but_the_whitelisted_forms_is_refused_with_file_and_line(tmp_path, old, new, message):
    with pytest.raises(KaecError, match=message):
        load_experiment(variant(tmp_path, old, new))


def test_refused_code_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = variant(tmp_path, "  CNNKAE(\n", f"  open({str(marker)!r}, 'w')\n  CNNKAE(\n")
    with pytest.raises(KaecError):
        load_experiment(path)
    assert not marker.exists()
