import io
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from kaecompress import KaecError
from kaecompress.experiments.data import _NumpyOnlyUnpickler, load_images, prepare


def test_mnist_is_prepared_offline_in_the_torchvision_layout(mnist_root, mnist_train, mnist_val):
    raw = mnist_root / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == [
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    assert mnist_train.shape == (60000, 1, 28, 28) and mnist_val.shape == (10000, 1, 28, 28)
    assert mnist_train.dtype == torch.float32
    assert mnist_train.min() == 0 and mnist_train.max() == 1
    # pixels are bytes / 255
    assert torch.equal(torch.round(mnist_val[:100] * 255) / 255, mnist_val[:100])
    import torchvision

    labels = torchvision.datasets.MNIST(str(mnist_root), train=True).targets
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the original training order
    assert torchvision.datasets.MNIST(str(mnist_root), train=False).targets[:5].tolist() == [7, 2, 1, 0, 4]


def test_data_pickles_cannot_run_code():
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        _NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(_NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(arr))).load(), arr)


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
def test_fashion_mnist_from_the_debian_package(tmp_path):
    test = load_images("fashion-mnist", False, tmp_path)
    assert test.shape == (10000, 1, 28, 28) and 0 <= test.min() and test.max() <= 1
    assert (tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KAEC_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(KaecError, match="fashion-mnist data not found.*apt-get install dataset-fashion-mnist"):
        load_images("fashion-mnist", True, tmp_path / "root")


def test_corrupt_data_file_is_a_clear_error(tmp_path, mnist_root):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (mnist_root / "MNIST" / "raw").iterdir():
        data = f.read_bytes()
        (raw / f.name).write_bytes(data[: len(data) // 2] if f.name.startswith("train-images") else data)
    with pytest.raises(KaecError, match="corrupt mnist data"):
        load_images("mnist", True, tmp_path)


def test_prepare_is_idempotent(tmp_path):
    raw = prepare("mnist", tmp_path)
    first = (raw / "t10k-images-idx3-ubyte").read_bytes()
    prepare("mnist", tmp_path)
    assert (raw / "t10k-images-idx3-ubyte").read_bytes() == first
    assert not [p for p in raw.iterdir() if p.name.endswith(".tmp")]


def test_folder_of_user_images(tmp_path, mnist_val):
    digits = (mnist_val[:20, 0] * 255).round().byte().numpy()
    for i, d in enumerate(digits):
        im = Image.fromarray(d)
        if i % 3 == 1:
            im = im.convert("RGB").resize((56, 40))  # colour, another size
        im.save(tmp_path / f"img{i:02d}.{'png' if i % 2 else 'bmp'}")
    (tmp_path / "notes.txt").write_text("not an image")
    train = load_images(f"folder:{tmp_path}", True, shape=(1, 28, 28))
    val = load_images(f"folder:{tmp_path}", False, shape=(1, 28, 28))
    assert train.shape == (18, 1, 28, 28) and val.shape == (2, 1, 28, 28)
    # a grayscale 28x28 PNG comes back exactly
    torch.testing.assert_close(val[0], mnist_val[9])
    rgb = load_images(f"folder:{tmp_path}", True, shape=(3, 32, 32))
    assert rgb.shape == (18, 3, 32, 32)


def test_unknown_dataset_name():
    with pytest.raises(KaecError, match="unknown dataset 'cifar'"):
        load_images("cifar", True)


def test_a_split_loads_without_the_other(tmp_path, mnist_root):
    """The test set alone is enough to load it: nothing of the training set is read or prepared."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (mnist_root / "MNIST" / "raw").glob("t10k-*"):
        (raw / f.name).write_bytes(f.read_bytes())
    images = load_images("mnist", False, tmp_path)
    assert images.shape == (10000, 1, 28, 28) and torch.equal(images, load_images("mnist", False, mnist_root))
    assert sorted(p.name for p in raw.iterdir()) == ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def test_a_foreign_header_is_refused(tmp_path, mnist_root):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (mnist_root / "MNIST" / "raw").glob("t10k-*"):
        data = f.read_bytes()
        (raw / f.name).write_bytes(data[:4] + (9999).to_bytes(4, "big") + data[8:] if "images" in f.name else data)
    with pytest.raises(KaecError, match=r"corrupt mnist data \(t10k-images-idx3-ubyte has header \(2051, 9999, 28"):
        load_images("mnist", False, tmp_path)
