"""Width muP as data: roles from shapes, rules as tables, a plan applied by init and param groups."""

from mutransfer.scaling.attention import AttentionLogits, attention_scale
from mutransfer.scaling.plan import Plan, load_plan
from mutransfer.scaling.planning import plan, plan_from_model
from mutransfer.scaling.roles import ParamRole, Role

__all__ = [
    "AttentionLogits",
    "ParamRole",
    "Plan",
    "Role",
    "attention_scale",
    "load_plan",
    "plan",
    "plan_from_model",
]
