"""Random-access batches: batch ``i`` of seed ``s`` is a pure function of ``(s, split, i)``.

    data = mutransfer.data.stdlib(block_size=64)
    x, y = data.batch(700, batch_size=32, seed=1)   # (32, 64) int64 each; y[:, :-1] == x[:, 1:]

No iterator state, so any step of any run can be reproduced or resumed on its own: a sweep trial
that is re-run, or resumed at step 700, sees exactly the batches it saw before.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from mutransfer.errors import MutransferError

__all__ = ["Batches", "ImageData", "TokenData", "digest", "fetch"]

SPLITS = ("train", "val")


@runtime_checkable
class Batches(Protocol):
    """Anything a sweep can train on: a name, a fingerprint of its contents, and random-access batches."""

    name: str
    fingerprint: str

    def batch(
        self, index: int, batch_size: int, *, seed: int = 0, split: str = "train"
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def fetch(
    data: Batches,
    index: int,
    batch_size: int,
    *,
    seed: int,
    split: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``data.batch(...)`` on ``device``, checked: an empty batch (a user's source with nothing
    in it) would train on a loss of nan over no examples, silently. ``split=None`` leaves the
    source's default (the training split)."""
    kwargs = {"seed": seed} if split is None else {"seed": seed, "split": split}
    got = data.batch(index, batch_size, **kwargs)
    if not (
        isinstance(got, tuple | list) and len(got) == 2 and all(isinstance(t, torch.Tensor) for t in got)
    ):
        raise MutransferError(
            f"data: {_name(data)}.batch() must return (inputs, targets), two tensors; "
            f"got {type(got).__name__}."
        )
    x, y = got
    if x.shape[0] == 0 or y.shape[0] == 0 or x.numel() == 0:
        raise MutransferError(
            f"data: batch {index} of {_name(data)} ({split or 'train'} split) is empty: inputs "
            f"{tuple(x.shape)}, targets {tuple(y.shape)}. Fix: a source must return batch_size "
            "examples for every index; check that it found its files."
        )
    return x.to(device), y.to(device)


def _name(data: Batches) -> str:
    return getattr(data, "name", None) or type(data).__name__


def digest(*parts: bytes | str) -> str:
    """16 hex characters identifying ``parts``; stable across processes and machines (unlike ``hash``)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _generator(seed: int, split: str, index: int, batch_size: int) -> torch.Generator:
    """A fresh generator per (seed, split, index), so no batch depends on the ones drawn before it.

    ``batch_size`` is only checked, not mixed in: a smaller batch is a prefix of a larger one.
    """
    for label, value in (("index", index), ("batch_size", batch_size), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise MutransferError(f"batch(): {label} must be an int, got {value!r} ({type(value).__name__}).")
    if index < 0:
        raise MutransferError(f"batch(): index must be >= 0, got {index}.")
    if batch_size < 1:
        raise MutransferError(f"batch(): batch_size must be >= 1, got {batch_size}.")
    if split not in SPLITS:
        raise MutransferError(f"batch(): split must be one of {list(SPLITS)}, got {split!r}.")
    key = hashlib.blake2b(f"{seed}/{split}/{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(key, "big") >> 1)  # 63 bits: always a valid seed


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


@dataclass(frozen=True, eq=False)
class TokenData:
    """A byte-level corpus: batches are random windows of ``block_size`` bytes and their next bytes.

    ``train``/``val`` are 1-D uint8 tensors (the files of each split, concatenated). Splitting by
    file keeps the validation text unseen, not just the validation windows.
    """

    name: str
    train: torch.Tensor
    val: torch.Tensor
    fingerprint: str
    block_size: int = 128
    vocab_size: int = 256

    def __post_init__(self) -> None:
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise MutransferError(f"{self.name}: block_size must be an int >= 1, got {self.block_size!r}.")
        if not 1 <= self.vocab_size <= 256:
            raise MutransferError(
                f"{self.name}: vocab_size must be in 1..256 for uint8 tokens, got {self.vocab_size}."
            )
        for split in SPLITS:
            t = getattr(self, split)
            if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 1:
                got = (
                    f"{t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t)
                )
                raise MutransferError(f"{self.name}: {split} must be a 1-D uint8 tensor, got {got}.")
            if t.numel() < self.block_size + 1:
                raise MutransferError(
                    f"{self.name}: the {split} split has {t.numel()} tokens but block_size={self.block_size} "
                    f"needs at least {self.block_size + 1}; pass a smaller block_size."
                )

    def batch(
        self, index: int, batch_size: int, *, seed: int = 0, split: str = "train"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``, both int64 ``(batch_size, block_size)``, with ``y[:, t] == x[:, t + 1]``."""
        g = _generator(seed, split, index, batch_size)
        data = self.train if split == "train" else self.val
        starts = torch.randint(0, data.numel() - self.block_size, (batch_size,), generator=g)
        windows = data[starts[:, None] + torch.arange(self.block_size + 1)].long()  # (B, T + 1)
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def with_block_size(self, block_size: int) -> TokenData:
        """The same corpus cut into windows of another length (shares the tensors)."""
        return dataclasses.replace(self, block_size=block_size)

    def describe(self) -> str:
        return (
            f"{self.name}: train {_mb(self.train.numel())}, val {_mb(self.val.numel())}, "
            f"block_size {self.block_size}, fingerprint {self.fingerprint}"
        )

    def __repr__(self) -> str:
        return f"TokenData({self.describe()})"


@dataclass(frozen=True, eq=False)
class ImageData:
    """Labelled images already normalised with the train split's per-channel mean and std.

    ``*_x`` are float32 ``(N, C, H, W)``, ``*_y`` int64 ``(N,)`` in ``0..num_classes-1``.
    Batches draw ``batch_size`` images with replacement, so every index is valid.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    fingerprint: str
    num_classes: int

    def __post_init__(self) -> None:
        for split in SPLITS:
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
                raise MutransferError(f"{self.name}: {split}_x and {split}_y must be torch tensors.")
            if x.dtype != torch.float32 or x.dim() != 4:
                raise MutransferError(
                    f"{self.name}: {split}_x must be float32 (N, C, H, W), got {x.dtype} {tuple(x.shape)}."
                )
            if y.dtype != torch.int64 or y.shape != x.shape[:1] or len(y) == 0:
                raise MutransferError(
                    f"{self.name}: {split}_y must be int64 ({len(x)},) to match {split}_x, "
                    f"got {y.dtype} {tuple(y.shape)}."
                )
            if y.min() < 0 or y.max() >= self.num_classes:
                raise MutransferError(
                    f"{self.name}: {split}_y holds labels {int(y.min())}..{int(y.max())}, "
                    f"expected 0..{self.num_classes - 1} (num_classes={self.num_classes})."
                )
        if self.train_x.shape[1:] != self.val_x.shape[1:]:
            raise MutransferError(
                f"{self.name}: train and val images differ in shape: "
                f"{tuple(self.train_x.shape[1:])} vs {tuple(self.val_x.shape[1:])}."
            )

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def in_features(self) -> int:
        """C*H*W: the input width of an MLP on flattened images."""
        return self.train_x[0].numel()

    def batch(
        self, index: int, batch_size: int, *, seed: int = 0, split: str = "train"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: float32 ``(batch_size, C, H, W)`` and int64 ``(batch_size,)``."""
        g = _generator(seed, split, index, batch_size)
        x, y = (self.train_x, self.train_y) if split == "train" else (self.val_x, self.val_y)
        rows = torch.randint(0, len(y), (batch_size,), generator=g)
        return x[rows], y[rows]

    def describe(self) -> str:
        c, h, w = self.train_x.shape[1:]
        return (
            f"{self.name}: train {len(self.train_y)}, val {len(self.val_y)} images of {c}x{h}x{w}, "
            f"{self.num_classes} classes, fingerprint {self.fingerprint}"
        )

    def __repr__(self) -> str:
        return f"ImageData({self.describe()})"
