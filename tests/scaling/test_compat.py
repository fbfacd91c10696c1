"""A muP plan keeps its numbers through torch.compile, deepcopy, checkpoints, DDP and FSDP2.

The plan acts only through init, param groups and one forward pre-hook (tied readouts), so
each wrapper or round trip below must reproduce what a plain eager model does.
"""

import copy
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

import mutransfer
from mutransfer import MutransferError
from mutransfer.models import GPT, MLP
from mutransfer.scaling.forward import ScaleInput, readout_hooks
from training import classification_batch, cross_entropy, train

MLP_KW = {"depth": 3, "in_features": 8, "out_features": 4}
GPT_KW = {"depth": 1, "tie_embeddings": True, "block_size": 16}
BASE, TARGET = 16, 64
LR, WD = 1e-2, 0.1


@pytest.fixture(scope="module")
def mlp_plan():
    return mutransfer.plan(MLP, base={"width": BASE, **MLP_KW}, target={"width": TARGET, **MLP_KW})


@pytest.fixture(scope="module")
def gpt_plan():
    plan = mutransfer.plan(GPT, base={"width": BASE, **GPT_KW}, target={"width": TARGET, **GPT_KW})
    assert plan.tied_readouts == ("lm_head",)
    return plan


def make_mlp(plan, seed=0):
    torch.manual_seed(seed)
    return plan.init_(MLP(width=TARGET, **MLP_KW))


def make_gpt(plan, seed=0):
    torch.manual_seed(seed)
    # "constant" rescales the hidden tensors, so a second init would visibly change them.
    return plan.init_(GPT(width=TARGET, **GPT_KW), init_law="constant")


def mlp_batch(n=32):
    return classification_batch(n, MLP_KW["in_features"], 4, seed=1)


def gpt_batch(n=4):
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(0, 256, (n, GPT_KW["block_size"] + 1), generator=g)
    return idx[:, :-1], idx[:, 1:]


def snapshot(model):
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


def assert_unchanged(model, before):
    changed = [n for n, t in model.state_dict().items() if not torch.equal(t, before[n])]
    assert not changed, f"tensors modified: {changed}"


def run_script(code, *args, env=None, timeout=120):
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


# ---- torch.compile ------------------------------------------------------------------------------


def test_param_groups_accept_compiled_module(mlp_plan, gpt_plan):
    """Compiled names carry `_orig_mod.`; the plan must strip it and give the same groups."""
    model = make_mlp(mlp_plan)
    compiled = torch.compile(model)  # lazy: nothing is compiled until the first call
    assert all(n.startswith("_orig_mod.") for n, _ in compiled.named_parameters())
    eager_groups = mlp_plan.param_groups(model, lr=LR, weight_decay=WD)
    compiled_groups = mlp_plan.param_groups(compiled, lr=LR, weight_decay=WD)
    assert len(compiled_groups) == len(eager_groups) > 1
    for gc, ge in zip(compiled_groups, eager_groups, strict=True):
        assert [id(p) for p in gc["params"]] == [id(p) for p in ge["params"]]
        for key in ("lr", "weight_decay", "eps"):
            assert gc[key] == ge[key], key
    # The wrapper is the same model to the plan's guards.
    with pytest.raises(MutransferError):
        mlp_plan.init_(compiled)
    with pytest.raises(MutransferError):
        gpt_plan.attach_(torch.compile(make_gpt(gpt_plan)))


@pytest.mark.slow
def test_compiled_mlp_trains_like_eager(mlp_plan):
    """fullgraph compile of a muP model, optimised through the compiled wrapper, matches eager."""
    eager = make_mlp(mlp_plan)
    compiled = torch.compile(copy.deepcopy(eager), fullgraph=True)
    opt_e = torch.optim.AdamW(mlp_plan.param_groups(eager, lr=LR, weight_decay=WD))
    opt_c = torch.optim.AdamW(mlp_plan.param_groups(compiled, lr=LR, weight_decay=WD))
    x, y = mlp_batch()
    losses_e = train(eager, opt_e, x, y, 5)
    losses_c = train(compiled, opt_c, x, y, 5)
    assert losses_e[-1] < losses_e[0]
    torch.testing.assert_close(torch.tensor(losses_c), torch.tensor(losses_e), rtol=1e-4, atol=1e-6)
    for (n, pc), pe in zip(compiled.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(pc, pe, rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.slow
def test_compiled_tied_gpt_keeps_readout_hook(gpt_plan):
    """The tied-readout pre-hook must be traced into a fullgraph compile (else logits are m x too big)."""
    model = make_gpt(gpt_plan)
    compiled = torch.compile(model, fullgraph=True)
    assert [n for n, _ in readout_hooks(compiled)] == ["_orig_mod.lm_head"]
    x, _ = gpt_batch()
    with torch.no_grad():
        out_e, out_c = model(x), compiled(x)
    torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-5)


# ---- deepcopy -----------------------------------------------------------------------------------


def test_deepcopy_keeps_outputs_tie_and_one_hook(gpt_plan):
    """deepcopy is how people clone models (EMA, sweeps): same logits, tie kept, hook copied once."""
    model = make_gpt(gpt_plan)
    clone = copy.deepcopy(model)
    x, _ = gpt_batch()
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))
    assert clone.lm_head.weight is clone.wte.weight
    assert clone.wte.weight is not model.wte.weight
    for m in (model, clone):
        hooks = readout_hooks(m)
        assert [n for n, _ in hooks] == ["lm_head"]
        assert isinstance(hooks[0][1], ScaleInput) and hooks[0][1].scale == pytest.approx(BASE / TARGET)
    with pytest.raises(MutransferError):
        gpt_plan.attach_(clone)
    assert len(readout_hooks(clone)) == 1


def test_init_on_deepcopy_of_initialised_model_raises(mlp_plan):
    """A deepcopy of an initialised model is not fresh: init_ on it would scale the readout twice."""
    clone = copy.deepcopy(make_mlp(mlp_plan))
    before = snapshot(clone)
    with pytest.raises(MutransferError, match="already"):
        mlp_plan.init_(clone)
    assert_unchanged(clone, before)


@pytest.mark.parametrize("how", ["deepcopy", "attached"])
def test_failed_init_leaves_tied_model_untouched(gpt_plan, how):
    """init_ that refuses (hook already there) must refuse before rescaling any tensor."""
    if how == "deepcopy":
        model = copy.deepcopy(make_gpt(gpt_plan))
    else:  # the checkpoint flow (attach_), then init_ by mistake
        torch.manual_seed(0)
        model = gpt_plan.attach_(GPT(width=TARGET, **GPT_KW))
    before = snapshot(model)
    with pytest.raises(MutransferError):
        gpt_plan.init_(model, init_law="constant")
    assert len(readout_hooks(model)) == 1
    assert_unchanged(model, before)


# ---- checkpoints --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mlp", "tied_gpt"])
def test_second_init_raises_and_changes_nothing(mlp_plan, gpt_plan, kind):
    """Calling init_ twice on one model would square the muP factors; it must be refused."""
    plan, model = (mlp_plan, make_mlp(mlp_plan)) if kind == "mlp" else (gpt_plan, make_gpt(gpt_plan))
    before = snapshot(model)
    with pytest.raises(MutransferError, match="already initialised"):
        plan.init_(model)
    assert_unchanged(model, before)


RESUME_SCRIPT = """
    import json, sys
    import torch
    from torch.nn import functional as F
    import mutransfer
    from mutransfer.models import GPT

    d = sys.argv[1]
    plan = mutransfer.load_plan(f"{d}/plan.json")
    model = GPT(**plan.target)
    model.load_state_dict(torch.load(f"{d}/model.pt"))
    data = torch.load(f"{d}/data.pt")
    x, y = data["x"], data["y"]

    def loss_fn():
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    with torch.no_grad():
        unhooked = loss_fn().item()
    plan.attach_(model)
    groups = plan.param_groups(model, lr=data["lr"], weight_decay=data["wd"])
    fresh = [[g["lr"], g["weight_decay"], g["eps"], len(g["params"])] for g in groups]
    opt = torch.optim.AdamW(groups)
    opt.load_state_dict(torch.load(f"{d}/optim.pt"))
    loss = loss_fn()
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = loss_fn().item()
    print(json.dumps({"unhooked": unhooked, "losses": [loss.item(), after], "groups": fresh}))
"""


@pytest.mark.slow
def test_checkpoint_resumes_in_fresh_process(gpt_plan, tmp_path):
    """Saved plan + state_dict + optimizer state resume a tied muP model exactly, without the factory."""
    model = make_gpt(gpt_plan)
    opt = torch.optim.AdamW(gpt_plan.param_groups(model, lr=LR, weight_decay=WD))
    x, y = gpt_batch()
    train(model, opt, x, y, 3, loss_fn=cross_entropy)

    torch.save(model.state_dict(), tmp_path / "model.pt")
    torch.save(opt.state_dict(), tmp_path / "optim.pt")
    torch.save({"x": x, "y": y, "lr": LR, "wd": WD}, tmp_path / "data.pt")
    gpt_plan.save(tmp_path / "plan.json")
    assert mutransfer.load_plan(tmp_path / "plan.json") == gpt_plan
    groups = [[g["lr"], g["weight_decay"], g["eps"], len(g["params"])] for g in opt.param_groups]

    expected = train(model, opt, x, y, 1, loss_fn=cross_entropy)
    with torch.no_grad():
        expected.append(cross_entropy(model, x, y).item())

    got = json.loads(run_script(RESUME_SCRIPT, tmp_path))
    assert got["groups"] == groups  # floats survive JSON exactly
    assert got["losses"] == pytest.approx(expected, rel=1e-6, abs=1e-7)
    # Without attach_ the resumed logits are m times too large: the hook is what makes this pass.
    assert got["unhooked"] != pytest.approx(expected[0], rel=1e-3)


# ---- DistributedDataParallel --------------------------------------------------------------------

# Every rank script ends in EXIT_NOW, not in the interpreter's own exit. A gloo worker thread
# frees a finished collective (it holds the tensors, Python-owned) only after the caller's wait()
# has returned; when the main thread is already finalizing the interpreter by then, the worker's
# GIL request ends the thread by pthread_exit, whose unwind through a noexcept destructor calls
# std::terminate: "terminate called without an active exception", SIGABRT (-6). A core dump of
# one such rank showed the main thread in Py_FinalizeEx and the worker in
# ProcessGroupGloo::runLoop -> ~AsyncAllreduceWork -> TensorImpl::decref_pyobject -> take_gil.
# It hit about 1 run in 25 on a loaded 2-core machine. The results are on disk by then, so
# os._exit ends the process before finalization, and the worker with it.
EXIT_NOW = """
    def exit_now():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
"""

DDP_SCRIPT = (
    EXIT_NOW
    + """
    import os, sys
    import torch
    torch.set_num_threads(1)
    import torch.distributed as dist
    from torch.nn import functional as F
    from torch.nn.parallel import DistributedDataParallel
    import mutransfer
    from mutransfer.models import MLP

    d = sys.argv[1]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    data = torch.load(f"{d}/data.pt")
    plan = mutransfer.load_plan(f"{d}/plan.json")
    model = MLP(**plan.target)
    model.load_state_dict(data["init"])
    ddp = DistributedDataParallel(model)
    assert all(n.startswith("module.") for n, _ in ddp.named_parameters())
    opt = torch.optim.AdamW(plan.param_groups(ddp, lr=data["lr"], weight_decay=data["wd"]))
    x, y = data["x"].chunk(world)[rank], data["y"].chunk(world)[rank]
    losses = []
    for _ in range(data["steps"]):
        loss = F.cross_entropy(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    mean_losses = torch.tensor(losses)
    dist.all_reduce(mean_losses)
    torch.save({"losses": mean_losses / world, "state": model.state_dict(),
                "lrs": [g["lr"] for g in opt.param_groups]}, f"{d}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    exit_now()
"""
)


def run_ranks(script: str, folder, world: int = 2) -> None:
    """Run ``script`` (its argument: ``folder``) as ``world`` gloo ranks on this machine."""
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": str(world),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), str(folder)],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    try:
        outputs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-4000:]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_ranks_and_one_process(script: str, plan, folder, steps: int = 5):
    """Train the muP MLP for ``steps`` steps on two gloo ranks (``script``, half the batch each)
    and here on the whole batch; return this process's model, optimizer and losses, and what
    each rank saved."""
    model = make_mlp(plan)
    x, y = mlp_batch(32)
    data = {"init": model.state_dict(), "x": x, "y": y, "lr": LR, "wd": WD, "steps": steps}
    torch.save(data, folder / "data.pt")
    plan.save(folder / "plan.json")
    run_ranks(script, folder)
    opt = torch.optim.AdamW(plan.param_groups(model, lr=LR, weight_decay=WD))
    losses = train(model, opt, x, y, steps)
    return model, opt, losses, [torch.load(folder / f"rank{r}.pt") for r in range(2)]


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(mlp_plan, tmp_path):
    """DDP-wrapped names carry `module.`; two gloo ranks on half batches must train like one on all."""
    model, opt, losses, ranks = two_ranks_and_one_process(DDP_SCRIPT, mlp_plan, tmp_path)
    assert ranks[0]["lrs"] == [g["lr"] for g in opt.param_groups]
    torch.testing.assert_close(ranks[0]["losses"], torch.tensor(losses), rtol=1e-5, atol=1e-6)
    for name, ref in model.state_dict().items():
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name]), name
        torch.testing.assert_close(ranks[0]["state"][name], ref, rtol=0, atol=1e-5, msg=name)


# ---- FSDP2 (fully_shard) ---------------------------------------------------------------------------
# FSDP2 shards each parameter in place as a DTensor: names stay the plain model's names (no wrapper
# segment) and named_parameters() reports the full logical shapes, so the plan finds every tensor by
# name and shape, and its param groups hold the DTensors themselves. Measured on torch 2.13 CPU/gloo.

FSDP_SCRIPT = (
    EXIT_NOW
    + """
    import os, sys
    import torch
    torch.set_num_threads(1)
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard
    from torch.nn import functional as F
    import mutransfer
    from mutransfer.models import MLP

    d = sys.argv[1]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    data = torch.load(f"{d}/data.pt")
    plan = mutransfer.load_plan(f"{d}/plan.json")
    model = MLP(**plan.target)
    model.load_state_dict(data["init"])
    names = [n for n, _ in model.named_parameters()]
    for layer in model.hidden:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)

    # FSDP2 keeps the names and reports full logical shapes; only the local shard is split.
    params = dict(model.named_parameters())
    assert list(params) == names, list(params)
    for n, p in params.items():
        assert isinstance(p, DTensor) and p.placements == (Shard(0),), n
        assert tuple(p.shape) == tuple(data["init"][n].shape), n
        assert p.to_local().shape[0] == p.shape[0] // world, n

    groups = plan.param_groups(model, lr=data["lr"], weight_decay=data["wd"])
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(map(id, params.values()))
    opt = torch.optim.AdamW(groups)
    x, y = data["x"].chunk(world)[rank], data["y"].chunk(world)[rank]
    losses = []
    for _ in range(data["steps"]):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    mean_losses = torch.tensor(losses)
    dist.all_reduce(mean_losses)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    state = {n: t.detach().clone() for n, t in state.items()}
    torch.save({"losses": mean_losses / world, "state": state,
                "lrs": [g["lr"] for g in opt.param_groups],
                "eps": [g["eps"] for g in opt.param_groups],
                "wds": [g["weight_decay"] for g in opt.param_groups],
                "sizes": [len(g["params"]) for g in opt.param_groups]}, f"{d}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    exit_now()
"""
)


@pytest.mark.slow
def test_fsdp2_two_processes_match_single_process(mlp_plan, tmp_path):
    """fully_shard on two gloo ranks, half a batch each, with plan param groups trains like one process."""
    model, opt, losses, ranks = two_ranks_and_one_process(FSDP_SCRIPT, mlp_plan, tmp_path)
    for key, group_key in (("lrs", "lr"), ("eps", "eps"), ("wds", "weight_decay")):
        assert ranks[0][key] == [g[group_key] for g in opt.param_groups], key
    assert ranks[0]["sizes"] == [len(g["params"]) for g in opt.param_groups]
    assert len(ranks[0]["lrs"]) > 1 and len(set(ranks[0]["lrs"])) > 1  # muP groups, not one lr
    torch.testing.assert_close(ranks[0]["losses"], torch.tensor(losses), rtol=1e-5, atol=1e-6)
    assert losses[-1] < losses[0]
    for name, ref in model.state_dict().items():
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name]), name
        torch.testing.assert_close(ranks[0]["state"][name], ref, rtol=0, atol=1e-5, msg=name)


# ---- depth plans (CompleteP) and Muon -------------------------------------------------------------

DEPTH_BASE = {"width": BASE, "depth": 1, "block_size": 16}
DEPTH_TARGET = {"width": TARGET, "depth": 3, "block_size": 16}
# the attention branch as a whole module: its multiplier needs the forward hook, the MLP's is absorbed
HOOKED = ("blocks.*.attn", "blocks.*.fc_proj")


@pytest.fixture(scope="module")
def depth_plan():
    plan = mutransfer.plan(GPT, base=DEPTH_BASE, target=DEPTH_TARGET, depth="depth", residual=HOOKED)
    assert plan.depth.hooked == ("blocks.0.attn", "blocks.1.attn", "blocks.2.attn")
    return plan


def make_deep_gpt(plan, seed=0):
    torch.manual_seed(seed)
    return plan.init_(GPT(**DEPTH_TARGET))


@pytest.mark.slow
def test_compiled_depth_plan_keeps_branch_hooks(depth_plan):
    """The branch multiplier's forward hook must be traced into a fullgraph compile."""
    model = make_deep_gpt(depth_plan)
    compiled = torch.compile(model, fullgraph=True)
    x, _ = gpt_batch()
    unhooked = GPT(**DEPTH_TARGET)  # the same weights without the plan's hooks
    unhooked.load_state_dict(model.state_dict())
    with torch.no_grad():
        out = compiled(x)
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(unhooked(x), out, atol=1e-3)  # so the hooks are in the graph


DEPTH_RESUME_SCRIPT = """
    import json, sys
    import torch
    from torch.nn import functional as F
    import mutransfer
    from mutransfer.models import GPT

    d = sys.argv[1]
    plan = mutransfer.load_plan(f"{d}/plan.json")
    model = GPT(**plan.target)
    model.load_state_dict(torch.load(f"{d}/model.pt"))
    plan.attach_(model)
    data = torch.load(f"{d}/data.pt")
    opt = plan.optimizer(model, "muon", lr=data["lr"], weight_decay=data["wd"])
    opt.load_state_dict(torch.load(f"{d}/optim.pt"))
    x, y = data["x"], data["y"]
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    print(json.dumps({"losses": [loss.item(), after]}))
"""


@pytest.mark.slow
def test_depth_plan_with_muon_resumes_in_fresh_process(depth_plan, tmp_path):
    """Plan (with depth), weights and Muon+AdamW state saved; a fresh process continues exactly."""
    model = make_deep_gpt(depth_plan)
    opt = depth_plan.optimizer(model, "muon", lr=LR, weight_decay=WD)
    x, y = gpt_batch()
    train(model, opt, x, y, 3, loss_fn=cross_entropy)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    torch.save(opt.state_dict(), tmp_path / "optim.pt")
    torch.save({"x": x, "y": y, "lr": LR, "wd": WD}, tmp_path / "data.pt")
    depth_plan.save(tmp_path / "plan.json")
    expected = train(model, opt, x, y, 1, loss_fn=cross_entropy)
    with torch.no_grad():
        expected.append(cross_entropy(model, x, y).item())
    got = json.loads(run_script(DEPTH_RESUME_SCRIPT, tmp_path))
    assert got["losses"] == pytest.approx(expected, rel=1e-6, abs=1e-7)
