"""One intra-op thread for the suite and every process it starts.

With a busy neighbour on a 2-core machine, torch's second thread shares a core with it and each
parallel region waits for it: `test_mup_optimum_moves_less_than_standard` took 179 s against
12 s with one thread (11.5 s with two, unloaded), and a loaded suite 23 minutes. The models here
are too small for a second thread to pay. Set OMP_NUM_THREADS to choose otherwise.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the CLI, benchmark and worker processes

import torch  # after the variable: torch reads it when it starts its thread pool

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
