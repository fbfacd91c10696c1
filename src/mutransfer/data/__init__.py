"""Offline data with random-access, reproducible batches: ``batch(index, batch_size, seed=, split=)``.

    data = mutransfer.data.load("stdlib", block_size=128)
    x, y = data.batch(0, batch_size=32, seed=0)          # (32, 128) int64 inputs and next-byte targets

Every source is read from disk (the Python install, a pip package or a Debian package); nothing
is ever downloaded. Each carries a ``fingerprint`` of its contents for run records.
"""

from mutransfer.data.batches import Batches, ImageData, TokenData, fetch
from mutransfer.data.images import digits, fashion_mnist, mnist_5k
from mutransfer.data.sources import SOURCES, factory_keywords, load, load_for_training
from mutransfer.data.text import shakespeare, stdlib

__all__ = [
    "SOURCES",
    "Batches",
    "ImageData",
    "TokenData",
    "digits",
    "factory_keywords",
    "fashion_mnist",
    "fetch",
    "load",
    "load_for_training",
    "mnist_5k",
    "shakespeare",
    "stdlib",
]
