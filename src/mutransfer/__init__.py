"""mutransfer: zero-shot hyperparameter transfer (muP) for any PyTorch model.

plan = mutransfer.plan(make_model, base={"width": 64}, target={"width": 1024})
model = make_model(width=1024)
plan.init_(model)
optimizer = torch.optim.AdamW(plan.param_groups(model, lr=3e-3, weight_decay=0.1))
result = mutransfer.coord_check(make_model, widths=[64, 128, 256, 512], data=mutransfer.data.stdlib())
grid = mutransfer.grid(make_model, widths=[64, 256, 1024], lrs=[2**k for k in range(-12, -4)], data=...)
steps = mutransfer.grid(make_model, shape={"width": 64}, steps=[100, 200, 400, 800], lrs=..., data=...)
mutransfer.fit(steps).predict(20000)                                  # the best LR at 20000 steps
mutransfer.sweep(mutransfer.load_config("sweep.toml"), workers=2)   # tune the proxy (Optuna)
target = mutransfer.transfer(config); target.save("target.json")     # its settings at full size
"""

from mutransfer import data, models, testing  # noqa: F401  (subpackages: mutransfer.data.stdlib())
from mutransfer.coord import CoordCheck, coord_check
from mutransfer.errors import MutransferError
from mutransfer.fit import PowerLaw, fit
from mutransfer.forecast import Forecasts, forecast
from mutransfer.grid import Grid, grid
from mutransfer.monitor import Monitor
from mutransfer.plot import plot_coord_check, plot_grid
from mutransfer.scaling import (
    AttentionLogits,
    ParamRole,
    Plan,
    Role,
    attention_scale,
    load_plan,
    plan,
    plan_from_model,
)
from mutransfer.sweep import ProxyRun, Range, SweepConfig, load_config, sweep
from mutransfer.transfer import Transfer, load_transfer, transfer

__all__ = [
    "AttentionLogits",
    "CoordCheck",
    "Forecasts",
    "Grid",
    "Monitor",
    "MutransferError",
    "ParamRole",
    "Plan",
    "PowerLaw",
    "ProxyRun",
    "Range",
    "Role",
    "SweepConfig",
    "Transfer",
    "attention_scale",
    "coord_check",
    "fit",
    "forecast",
    "grid",
    "load_config",
    "load_plan",
    "load_transfer",
    "plan",
    "plan_from_model",
    "plot_coord_check",
    "plot_grid",
    "sweep",
    "transfer",
]
__version__ = "0.1.0"
