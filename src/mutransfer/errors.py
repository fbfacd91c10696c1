"""The one exception type users need to catch."""

__all__ = ["MutransferError"]


class MutransferError(ValueError):
    """Raised for bad input or an inconsistent model/plan.

    Messages say what was received, what was expected, and how to fix it.
    """
