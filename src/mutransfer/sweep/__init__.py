"""The proxy sweep: tune hyperparameters on a small model with Optuna, resumably.

    from mutransfer.sweep import Range, SweepConfig, sweep
    config = SweepConfig(factory="mutransfer.models:MLP", data="digits",
                         proxy={"width": 64}, target={"width": 1024},
                         space={"lr": Range(1e-4, 1e-1, log=True), "output_mult": [0.5, 1, 2]})
    status = sweep(config, workers=2)   # results in sweep.journal; a rerun resumes

Optuna is imported only when a sweep runs, so ``import mutransfer`` stays fast.
"""

from mutransfer.sweep.config import HPARAMS, ConfigError, SweepConfig, load_config
from mutransfer.sweep.experiment import ProxyRun
from mutransfer.sweep.runner import open_study, run_worker, sweep
from mutransfer.sweep.space import Range
from mutransfer.sweep.status import Status, leaderboard, status

__all__ = [
    "HPARAMS",
    "ConfigError",
    "ProxyRun",
    "Range",
    "Status",
    "SweepConfig",
    "leaderboard",
    "load_config",
    "open_study",
    "run_worker",
    "status",
    "sweep",
]
