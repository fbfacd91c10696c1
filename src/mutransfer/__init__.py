"""mutransfer: zero-shot hyperparameter transfer (muP) for any PyTorch model.

plan = mutransfer.plan(make_model, base={"width": 64}, target={"width": 1024})
model = make_model(width=1024)
plan.init_(model)
optimizer = torch.optim.AdamW(plan.param_groups(model, lr=3e-3, weight_decay=0.1))
"""

from mutransfer.errors import MutransferError
from mutransfer.scaling import ParamRole, Plan, Role, attention_scale, load_plan, plan, plan_from_model

__all__ = [
    "MutransferError",
    "ParamRole",
    "Plan",
    "Role",
    "attention_scale",
    "load_plan",
    "plan",
    "plan_from_model",
]
__version__ = "0.1.0"
