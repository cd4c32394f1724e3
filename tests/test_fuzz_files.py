"""Property-based fuzzing of the readers of user files: experiment YAML (both formats), model cards,
safetensors headers and `kaec rd --from-json` results. Every input ends in a result or a KaecError; any
other exception, a case over 5 s or over 500 MB of memory growth fails (tests/fuzzing.py). Inputs that
ever crashed a reader are kept in tests/data/crashers/<reader>/ and replayed below."""

from __future__ import annotations

import atexit
import json
import math
import re
import shutil
import struct
import tempfile
import warnings
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import FUZZ, bounded, peak_mb
from kaecompress import KaecError
from kaecompress.experiments.config import load_experiment
from kaecompress.evaluation.rd import Curve, Point, RDResult, compare, load_json, to_json
from kaecompress.zoo import cards, check_card, safetensors_header, trained_dir
from kaecompress.experiments.loading import _check_sizes

CRASHERS = Path(__file__).parent / "data" / "crashers"
STUDY = Path(__file__).parent / "data" / "study-cnn-kae-01.yml"
QUICKSTART = Path(__file__).parent.parent / "experiments" / "quickstart.yml"
CARD = "mnist-q2"  # a codec model's card: the most keys (family, codec metrics, context)
WORK = Path(tempfile.mkdtemp(prefix="kaec-fuzz-files-"))
atexit.register(shutil.rmtree, WORK, True)


def small_study() -> bytes:
    """The study's own file with its 256-run matrix cut to 2 runs: each case expands it in milliseconds."""
    text = STUDY.read_text()
    text = re.sub(r"(?m)^  (trial|bs|opt|ks|enckae|deckae):\n    - (\S+)\n(?:    - \S+\n)+", r"  \1:\n    - \2\n", text)
    assert len(load_experiment_text(text.encode(), "study").runs) == 2
    return text.encode()


def put(path: Path, data: bytes) -> Path:
    path.unlink(missing_ok=True)  # a new file: truncating one in place can cost milliseconds (ext4 flushes it)
    path.write_bytes(data)
    return path


def load_experiment_text(data: bytes, name: str):
    return load_experiment(put(WORK / f"{name}.yml", data))


SMALL_STUDY = small_study()


# ---- mutations ------------------------------------------------------------------------------------------

YAML_TOKENS = [b"[", b"]", b"{", b"}", b"- ", b"\n- ", b": ", b"&a ", b"*a", b"<<: ", b"!!python/name:os.system ",
               b"!!binary ", b"!!timestamp ", b"2001-13-45", b"1e309", b".nan", b"-.inf", b"~", b"null", b"${",
               b"${matrix_slug}", b"${trial}", b"'", b'"', b"|\n", b"\t", b"#", b"0x", b"9" * 400, b"-", b"(",
               b")", b"CNNKAE(", b"**", b"lambda", b"\xff", b"\x00", b"/", b"..", b"a" * 300]
JSON_TOKENS = [b"[", b"]", b"{", b"}", b",", b":", b'"', b"null", b"true", b"-", b"1e999", b"NaN", b"Infinity",
               b"0", b"-1", b"9" * 400, b"-Infinity", b"9" * 5000, b"\\u0000", b"\\ud800", b"\xff", b" ", b'"shape"', b'"data_offsets"',
               b'"dtype"', b'"F32"', b'"model"', b'"quality"', b'"results"', b'"bytes"', b'"kind"']


@st.composite
def mutated(draw, seed: bytes, tokens: list[bytes]) -> bytes:
    """`seed` with 1 to 4 edits: bit flips, cuts, random or format-specific bytes, repeats."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "token", "repeat", "truncate"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[min(pos, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "token":
            data[pos:pos] = draw(st.sampled_from(tokens)) * draw(st.sampled_from([1, 1, 2, 3, 150]))
        elif op == "repeat":
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 64))] * draw(st.integers(2, 40))
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


SCALARS = [None, True, False, 0, 1, -1, 3, 2 ** 70, -2 ** 63, 0.5, 1e308, -0.0, math.inf, math.nan, "", "x", "a\nb",
           "${trial}", "${matrix_slug}", "${nope}", "mnist", "relu", "Adam", "cosine", "cuda:0", "CNNKAE(latent_dim=1)",
           "(1, 28, 28)", "'relu'", "None", "-" * 300, "é", "F32", "codec", "2001-13-45"]
KEYS = st.sampled_from(["", "a", "trial", "model", "a\nb", "lambda", "shape", "dtype", "name", 1, 0, -1])


@st.composite
def values(draw, depth: int = 0):
    """A value as a parsed file may hold one: a scalar of interest, any number, or a small list or mapping of
    them (a hand-written strategy: Hypothesis's recursive ones cost several times more per case)."""
    kind = draw(st.integers(0, 9 if depth < 3 else 7))
    if kind <= 5:
        return draw(st.sampled_from(SCALARS))
    if kind == 6:
        return draw(st.floats())
    if kind == 7:
        return draw(st.integers())
    items = range(draw(st.integers(0, 3)))
    if kind == 8:
        return [draw(values(depth + 1)) for _ in items]
    return {draw(KEYS): draw(values(depth + 1)) for _ in items}


def replace_at(obj, path: list, value):
    """A copy of nested data with the value at `path` (keys or list indices, clamped) replaced."""
    if not path:
        return value
    if isinstance(obj, dict):
        key = path[0] if path[0] in obj or not obj else list(obj)[hash(str(path[0])) % len(obj)]
        return {**obj, key: replace_at(obj.get(key), path[1:], value)}
    if isinstance(obj, list) and obj:
        i = path[0] % len(obj) if isinstance(path[0], int) else 0
        return [*obj[:i], replace_at(obj[i], path[1:], value), *obj[i + 1:]]
    return value


paths = st.lists(st.sampled_from(["experiment_name", "matrix", "exclude", "data", "model", "train", "codec",
                                  "globals", "learnrate", "batch_size", "latent_dim", "channels", "trial", "lr",
                                  "shape", "resources", "dataset", "optimizer", 0, 1, 2]), min_size=1, max_size=3)


def ends_well(read, baseline: float):
    """One case: a result or a KaecError, within the time and memory bounds."""
    with bounded(baseline), warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be a second line on stderr
        try:
            return read()
        except KaecError as e:
            assert "\n" not in str(e), str(e)


# ---- experiment files -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def baseline():
    return peak_mb()


@FUZZ
@given(data=st.data())
def test_experiment_files_in_both_formats_end_in_runs_or_one_error(baseline, data):
    """Mutated bytes of the quickstart file and of the study's file, or their data with generated values
    put in (a string where a mapping belongs, a matrix of nested lists, ...)."""
    seed = data.draw(st.sampled_from([QUICKSTART.read_bytes(), SMALL_STUDY]))
    if data.draw(st.booleans()):
        text = data.draw(mutated(seed, YAML_TOKENS))
    else:
        raw = yaml.safe_load(seed)
        for _ in range(data.draw(st.integers(1, 3))):
            raw = replace_at(raw, data.draw(paths), data.draw(values()))
        text = yaml.safe_dump(raw, allow_unicode=data.draw(st.booleans())).encode()
    ends_well(lambda: load_experiment_text(text, "fuzzed"), baseline)


# ---- model cards and safetensors headers ----------------------------------------------------------------

CARD_BYTES = (trained_dir() / f"{CARD}.json").read_bytes()
WEIGHTS = (trained_dir() / f"{CARD}.safetensors").read_bytes()
HEADER_SIZE = struct.unpack("<Q", WEIGHTS[:8])[0]


def read_cards(data: bytes) -> None:
    """What `kaec models` and a model's loader do before torch: list the folder's cards, check each, and
    check the card's config against the real weights' header."""
    folder = WORK / "trained"
    folder.mkdir(exist_ok=True)
    put(folder / f"{CARD}.json", data)
    for name, card in cards(folder).items():
        check_card(card, folder / f"{name}.json")
        _check_sizes(WEIGHTS, folder / card["weights_file"], card["config"]["model"])


@FUZZ
@given(data=st.data())
def test_mutated_model_cards_end_in_a_card_or_one_error(baseline, data):
    if data.draw(st.booleans()):
        card = data.draw(mutated(CARD_BYTES, JSON_TOKENS))
    else:
        card = replace_at(json.loads(CARD_BYTES), data.draw(st.lists(st.sampled_from(
            ["config", "model", "metrics", "weights_file", "params", "name", "channels", "shape", "kernel_size",
             "latent_dim", "decoder_kae_order", "mse", "psnr_db", 0]), min_size=1, max_size=3)), data.draw(values()))
        card = json.dumps(card).encode()
    ends_well(lambda: read_cards(card), baseline)


@FUZZ
@given(data=st.data())
def test_mutated_safetensors_headers_end_in_shapes_or_one_error(baseline, data):
    header, body = WEIGHTS[8:8 + HEADER_SIZE], WEIGHTS[8 + HEADER_SIZE:]
    if data.draw(st.booleans()):
        header = data.draw(mutated(header, JSON_TOKENS))
    size = data.draw(st.sampled_from(["true", "true", "small", "any", "huge"]))
    size = {"true": len(header), "small": max(0, len(header) + data.draw(st.integers(-64, 64))),
            "any": data.draw(st.integers(0, 2 ** 64 - 1)), "huge": 2 ** 64 - 1}[size]
    file = struct.pack("<Q", size) + header + body
    if data.draw(st.integers(0, 9)) == 0:
        file = file[:data.draw(st.integers(0, len(file)))]
    model = json.loads(CARD_BYTES)["config"]["model"]
    path = WORK / f"{CARD}.safetensors"
    ends_well(lambda: (safetensors_header(file, path), _check_sizes(file, path, model)), baseline)


# ---- `kaec rd --from-json` ----------------------------------------------------------------------------------

def small_rd_json() -> bytes:
    """A `kaec rd --json-file` file as the library writes it: two codec curves, a lossless one, a model family
    long enough for BD figures and a single model (compared at its PSNR)."""
    def curve(name, kind, settings, rates, psnrs):
        points = [Point(s, r, r - 20 if kind == "codec" else r - 3, r * 8 / 784, p, 0.5 + min(p, 50) / 100, 1e-3, 2e-3,
                        0, q if kind == "model" else None)
                  for q, (s, r, p) in enumerate(zip(settings, rates, psnrs))]
        return Curve(name, kind, f"{name} curve", 20, points, {"effort": 6} if kind == "codec" else {})
    result = RDResult("mnist", 20, [
        curve("JPEG", "codec", [10, 30, 50, 75, 95], [230.0, 280.0, 315.0, 370.0, 510.0],
              [24.0, 28.5, 30.8, 35.2, 47.5]),
        curve("WebP", "codec", [0, 20, 50, 90], [90.0, 140.0, 170.0, 276.0], [23.7, 32.7, 37.0, 47.4]),
        curve("PNG", "codec", [None], [246.0], [float("inf")]),
        curve("mnist", "model", ["mnist-q0", "mnist-q2", "mnist-q4", "mnist-q7"], [4.7, 7.3, 14.3, 49.0],
              [17.5, 21.8, 26.3, 31.6]),
        curve("mnist-kae-dec3", "model", ["mnist-kae-dec3"], [59.0], [20.7]),
    ])
    compare(result)
    return json.dumps(to_json(result)).encode()


RD_JSON = small_rd_json()


def read_rd(data: bytes):
    return load_json(put(WORK / "rd.json", data))


@FUZZ
@given(data=st.data())
def test_mutated_rd_results_end_in_a_result_or_one_error(baseline, data):
    if data.draw(st.booleans()):
        text = data.draw(mutated(RD_JSON, JSON_TOKENS))
    else:
        objs = json.loads(RD_JSON)
        for _ in range(data.draw(st.integers(1, 3))):
            objs = replace_at(objs, data.draw(st.lists(st.sampled_from(
                ["results", "kind", "name", "images", "dataset", "settings", "comparisons", "bytes", "psnr", "ssim",
                 "quality", "model", "exact_images", "payload_bytes", "bd_method", 0, 1, 2, 3, 4]),
                min_size=1, max_size=4)), data.draw(values()))
        text = json.dumps(objs).encode()
    ends_well(lambda: read_rd(text), baseline)


def test_the_seeds_themselves_are_read():
    """The fuzzers mutate inputs that are read whole: a seed already refused would test only the refusal."""
    assert len(load_experiment_text(QUICKSTART.read_bytes(), "seed").runs) == 1
    read_cards(CARD_BYTES)
    assert sum(map(len, safetensors_header(WEIGHTS, Path("w")).values())) > 0
    result = read_rd(RD_JSON)
    assert [c.name for c in result.curves] == ["JPEG", "WebP", "PNG", "mnist", "mnist-kae-dec3"]
    assert result.model_curves()[0].comparisons[0]["bd_rate"] is not None


# ---- the corpus of inputs that once crashed a reader ------------------------------------------------------

READERS = {"experiment": lambda data: load_experiment_text(data, "crasher"), "card": read_cards,
           "safetensors": lambda data: safetensors_header(data, Path("crasher.safetensors")), "rd": read_rd}
CORPUS = sorted((reader, path) for reader in READERS for path in (CRASHERS / reader).glob("*")
                if path.is_file())


@pytest.mark.parametrize("reader, path", CORPUS, ids=[f"{r}/{p.name}" for r, p in CORPUS])
def test_inputs_that_once_crashed_a_reader_end_in_one_error(reader, path):
    with pytest.raises(KaecError) as refused:
        READERS[reader](path.read_bytes())
    assert "\n" not in str(refused.value)

