"""Assertions for users' own test suites.

def test_my_model_is_mup():
    mutransfer.testing.assert_coord_check(MyModel, widths=[32, 64, 128, 256], data=my_batches)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from mutransfer.coord import CoordCheck, coord_check

__all__ = ["assert_coord_check"]


def assert_coord_check(make_model: Callable[..., nn.Module], **kwargs: Any) -> CoordCheck:
    """Run ``mutransfer.coord_check`` and raise ``AssertionError`` with its table if it fails."""
    result = coord_check(make_model, **kwargs)
    if not result.passed:
        raise AssertionError("coordinate check failed\n" + result.table())
    return result
