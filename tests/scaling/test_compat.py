"""A muP plan keeps its numbers through torch.compile, deepcopy, checkpoints and DDP.

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

DDP_SCRIPT = """
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
    del ddp  # release DDP's reducer before the group goes, or gloo may abort at exit
    dist.barrier()
    dist.destroy_process_group()
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(mlp_plan, tmp_path):
    """DDP-wrapped names carry `module.`; two gloo ranks on half batches must train like one on all."""
    steps = 5
    model = make_mlp(mlp_plan)
    x, y = mlp_batch(32)
    torch.save(
        {"init": model.state_dict(), "x": x, "y": y, "lr": LR, "wd": WD, "steps": steps}, tmp_path / "data.pt"
    )
    mlp_plan.save(tmp_path / "plan.json")

    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": "2",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(DDP_SCRIPT), str(tmp_path)],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
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

    opt = torch.optim.AdamW(mlp_plan.param_groups(model, lr=LR, weight_decay=WD))
    losses = train(model, opt, x, y, steps)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["lrs"] == [g["lr"] for g in opt.param_groups]
    torch.testing.assert_close(ranks[0]["losses"], torch.tensor(losses), rtol=1e-5, atol=1e-6)
    for name, ref in model.state_dict().items():
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name]), name
        torch.testing.assert_close(ranks[0]["state"][name], ref, rtol=0, atol=1e-5, msg=name)
