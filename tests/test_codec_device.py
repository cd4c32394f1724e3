"""`kaec encode` / `kaec decode --device`: where the networks run. A .kae file decodes to the same latents on
any device (the entropy coding is integer work on the CPU); pixels may differ by one level between devices."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import kaec


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def digits(tmp_path_factory, mnist_val):
    folder = tmp_path_factory.mktemp("digits")
    for i, x in enumerate(mnist_val[:300]):
        Image.fromarray(np.rint(x[0].numpy() * 255).astype(np.uint8), "L").save(folder / f"{i:03d}.png")
    return folder


@pytest.mark.skipif(_cuda(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("verb", ["encode", "decode"])
def test_device_cuda_without_a_gpu_is_refused(verb, digits, tmp_path):
    src = digits / "000.png"
    if verb == "decode":
        assert kaec("encode", src, "-o", tmp_path / "a.kae").returncode == 0
        src = tmp_path / "a.kae"
    r = kaec(verb, src, "-o", tmp_path / "out", "--device", "cuda")
    assert r.returncode == 2 and r.stderr == "error: --device cuda: no CUDA device is usable here " \
                                            "(torch.cuda.is_available() is False)\n"
    assert not (tmp_path / "out").exists()


def test_an_unknown_device_is_refused(digits, tmp_path):
    r = kaec("encode", digits / "000.png", "-o", tmp_path / "a.kae", "--device", "tpu")
    assert r.returncode == 2 and r.stderr == ("error: Invalid value for '--device': 'tpu' is not one of 'cpu', "
                                              "'cuda', 'auto'. (see: kaec encode --help)\n")
    assert not (tmp_path / "a.kae").exists()


def test_device_auto_runs_where_it_can(digits, tmp_path):
    """`auto` is the CPU on a machine without CUDA: the same files as --device cpu, byte for byte. On a GPU
    (mnist-q4 on an H200: 48 of 10,000 files differ, a latent rounded the other way) nearly all of them."""
    for device in ("cpu", "auto"):
        r = kaec("encode", digits, "-o", tmp_path / device, "--device", device, "-q", "4")
        assert r.returncode == 0, r.stderr
    cpu = sorted((tmp_path / "cpu").iterdir())
    assert len(cpu) == 300
    same = [f.read_bytes() == (tmp_path / "auto" / f.name).read_bytes() for f in cpu]
    assert all(same) if not _cuda() else sum(same) >= 290


def _decode(folder, out, device):
    r = kaec("decode", folder, "-o", out, "--device", device, "--json")
    assert r.returncode == 0, r.stderr
    return {row["input"].rsplit("/", 1)[-1]: np.asarray(Image.open(row["output"]), np.int16)
            for row in json.loads(r.stdout)}


@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_cuda_and_cpu_agree_on_files(digits, tmp_path):
    """Files made on either device decode on the other within one level of the same device's pixels; files
    made on CUDA are, but for rare latents rounded the other way, the CPU's bytes."""
    for device in ("cpu", "cuda"):
        r = kaec("encode", digits, "-o", tmp_path / f"z-{device}", "--device", device, "-q", "5")
        assert r.returncode == 0, r.stderr
    names = sorted(f.name for f in (tmp_path / "z-cpu").iterdir())
    identical = sum((tmp_path / "z-cpu" / n).read_bytes() == (tmp_path / "z-cuda" / n).read_bytes() for n in names)
    assert identical >= 0.95 * len(names)
    for made in ("cpu", "cuda"):
        on_cpu = _decode(tmp_path / f"z-{made}", tmp_path / f"cpu-{made}", "cpu")
        on_cuda = _decode(tmp_path / f"z-{made}", tmp_path / f"cuda-{made}", "cuda")
        assert on_cpu.keys() == on_cuda.keys() and len(on_cpu) == 300
        assert max(int(np.abs(on_cpu[k] - on_cuda[k]).max()) for k in on_cpu) <= 1
