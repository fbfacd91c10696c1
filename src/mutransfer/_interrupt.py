"""Ctrl-C that a command can handle and still exit with the status it chose (130).

CPython remembers a plain ``KeyboardInterrupt`` that passed out of any ``exec()`` of a string
(``dataclasses`` builds its methods that way, so a lazy import during training does it), and at
exit of ``python -m ...`` kills the process with SIGINT even after the program handled the
interrupt and returned 130 (pythonrun.c, ``run_eval_code_obj``). The test is on the exact type,
so ``Interrupted``, a subclass, is caught by every ``except KeyboardInterrupt`` and leaves the
flag alone. Measured before this: 1 Ctrl-C in about 12 ended as death by SIGINT (-2).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["ctrl_c_raises_interrupted"]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, raised by mutransfer's own SIGINT handler."""


def _raise(signum: int, frame: object) -> None:
    raise Interrupted()


@contextlib.contextmanager
def ctrl_c_raises_interrupted() -> Iterator[None]:
    """Within the block, SIGINT raises ``Interrupted``; outside it, whatever it did before."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield  # started with Ctrl-C ignored (nohup, a background job): keep it so
        return
    previous = signal.signal(signal.SIGINT, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
