"""What needs PyTorch is refused in the runtime install: one line on stderr naming the training install,
exit 2, nothing written."""

import pytest

from .conftest import EXAMPLES, GOLDEN, TRAINING, TRAINING_EXTRA, kaec

pytestmark = pytest.mark.skipif(TRAINING, reason="runtime install only: here PyTorch runs these")

DIGIT = EXAMPLES / "mnist-7.png"
GOOD = GOLDEN / "shipped" / "mnist-q2-0.kae"
COMMANDS = [("train", "study.yml"), ("results", "runs"), ("plot", "runs"), ("export", "mnist-q2", "-o", "out"),
            ("promote", "run", "--name", "mine"), ("rd",),
            ("encode", DIGIT, "-o", "out.kae", "--backend", "torch"),
            ("decode", GOOD, "-o", "out.png", "--backend", "torch"),
            ("encode", DIGIT, "-o", "out.kae", "--model", "run"),                    # a run folder
            ("encode", DIGIT, "-o", "out.kae", "--model", "run/checkpoint.pt"),      # a checkpoint
            ("decode", GOOD, "-o", "out.png", "--model", "run")]


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a for a in c if isinstance(a, str)) for c in COMMANDS])
def test_training_only_work_is_refused_in_one_line(args, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    r = kaec(*args, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and TRAINING_EXTRA in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing written, no cache either
