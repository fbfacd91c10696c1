"""Width x learning-rate grid: does the best learning rate stay put as the model widens?

    >>> import mutransfer
    >>> from mutransfer.models import MLP
    >>> result = mutransfer.grid(
    ...     MLP, widths=[64, 128, 256], lrs=[2**k for k in range(-11, -4)],
    ...     data=mutransfer.data.digits(), shape={"in_features": 64}, steps=100, batch_size=64,
    ... )
    >>> print(result.table())                          # doctest: +SKIP
    >>> result.summary("mup").drift < result.summary("sp").drift   # doctest: +SKIP
    True

The same grid over depths (``depths=[2, 4, 8], residual=GPT.residual``) checks CompleteP's
claim that the best learning rate also stays put as the model deepens.

Every cell trains ``make_model(**shape, width=w)`` from the same seed on the same batches with
learning rate ``lr`` (warmup, then cosine decay) and records its validation loss; a diverged
cell is recorded with its reason. Per width, the optimal log2 LR is the vertex of the parabola
through the grid minimum and its two neighbours (the minimum itself at the grid's edge). The
claim of muTransfer (Tensor Programs V, Figure 1) is measured two ways:

- ``drift``: how far the optimum moves across the widths, max minus min, in log2 units;
- ``regret``: the relative loss increase at the widest width when it trains with the
  narrowest width's optimal LR (one extra run) instead of its own best grid LR.

With ``path``, the results are saved after every cell and a rerun with the same protocol
skips the cells already there, so a killed grid resumes where it stopped.
"""

from mutransfer.grid.cells import GridProgress, grid, run
from mutransfer.grid.result import Cell, Grid, Optimum, Summary, fit_optimum, transfer_lr

__all__ = ["Cell", "Grid", "GridProgress", "Optimum", "Summary", "fit_optimum", "grid", "run", "transfer_lr"]
