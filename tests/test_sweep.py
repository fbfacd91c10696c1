"""The proxy sweep: config checks, search, pruning per shape, divergence, workers, kills, resume."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch

import mutransfer
from mutransfer.cli import main
from mutransfer.errors import MutransferError
from mutransfer.sweep import Range, SweepConfig, load_config, runner, sweep
from mutransfer.sweep.config import ConfigError
from mutransfer.sweep.runner import SameShapePruner, open_study
from mutransfer.sweep.space import grid_points
from mutransfer.sweep.status import status
from sweep_helpers import mlp_config

GRID_LRS = [2.0**k for k in range(-9, -2)]


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def sigint_default() -> None:
    """For a child that must feel Ctrl-C: a suite started in the background (``cmd &``) has
    SIGINT ignored, and a child inherits that; a terminal gives it the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mutransfer", *args],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=sigint_default,
        **kwargs,
    )


# ---- the description ---------------------------------------------------------------------------
MLP_TOML = """
factory = "mutransfer.models:MLP"
data = "digits"
proxy = {{ width = 32 }}
target = {{ width = 256 }}
steps = {steps}
eval_batches = 4
sampler = "grid"
pruner = "none"
{extra}
[space]
lr = {{ low = 0.001953125, high = 0.125, log = true, points = 7 }}
"""


def test_config_file_and_python_describe_the_same_sweep(tmp_path):
    path = write_toml(tmp_path / "mlp.toml", MLP_TOML.format(steps=60, extra=""))
    from_file = load_config(path)
    assert from_file.study == "mlp" and from_file.storage_url == "mlp.journal"
    assert grid_points(from_file.space) == [{"lr": lr} for lr in GRID_LRS]
    in_python = SweepConfig(
        factory="mutransfer.models:MLP",
        data="digits",
        proxy={"width": 32},
        target={"width": 256},
        steps=60,
        eval_batches=4,
        sampler="grid",
        pruner="none",
        study="mlp",
        space={"lr": Range(2.0**-9, 2.0**-3, log=True, points=7)},
    )
    assert in_python == from_file
    yaml = tmp_path / "mlp.yaml"
    yaml.write_text(
        "factory: mutransfer.models:MLP\ndata: digits\nproxy: {width: 32}\ntarget: {width: 256}\n"
        "steps: 60\neval_batches: 4\nsampler: grid\npruner: none\n"
        "space:\n  lr: {low: 0.001953125, high: 0.125, log: true, points: 7}\n"
    )
    assert load_config(yaml) == in_python


@pytest.mark.parametrize(
    "text, key",
    [
        ("stepz = 10", "stepz: unknown key; did you mean 'steps'?"),
        ("[space]\nlr = { low = 0.1, high = 0.01 }", "space.lr: empty range"),
        ("[space]\nlr = []", "space.lr: empty list of choices"),
        ('storage = "redis://localhost/0"', "storage: unknown scheme 'redis'"),
        ('storage = "sqlite:///x.db"', "storage: SQLite fails under parallel workers"),
        ("[space]\nlr = 0.01\nmomentum = [0.9, 0.99]", "space.momentum: not a hyperparameter"),
        ('sampler = "grid"\n[space]\nlr = { low = 0.001, high = 0.1, log = true }', "grid search needs"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, key):
    base = 'factory = "mutransfer.models:MLP"\ndata = "digits"\n'
    base += "proxy = { width = 32 }\ntarget = { width = 256 }\n"
    if "[space]" not in text:
        text += "\n[space]\nlr = { low = 0.001, high = 0.1, log = true }"
    path = write_toml(tmp_path / "bad.toml", base + text)
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("(", r"\(")):
        load_config(path)


def test_bad_config_reports_every_problem_and_trains_nothing(tmp_path, capsys):
    path = write_toml(
        tmp_path / "bad.toml",
        'factory = "mutransfer.models:NoSuchModel"\nproxy = { width = 32 }\ntarget = { width = 256 }\n'
        'trails = 4\nstorage = "mysql://db/x"\n[space]\nlr = { low = 1, high = 1 }\n',
    )
    os.chdir(tmp_path)
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    for problem in (
        "trails: unknown key; did you mean 'trials'?",
        "factory: module 'mutransfer.models' has no attribute 'NoSuchModel'",
        "storage: unknown scheme 'mysql'",
        "space.lr: empty range",
    ):
        assert problem in err
    assert not list(tmp_path.glob("*.journal"))  # failed before opening any storage


def test_missing_factory_is_named(tmp_path):
    path = write_toml(tmp_path / "x.toml", "proxy = { width = 32 }\ntarget = { width = 64 }\n")
    with pytest.raises(ConfigError, match="factory: required"):
        load_config(path)


# ---- one worker ----------------------------------------------------------------------------
def test_sweep_finds_a_good_lr_and_resumes_with_a_larger_budget(tmp_path):
    config = mlp_config(tmp_path, pruner="none")
    seen = []
    first = sweep(config, progress=seen.append)
    assert first.complete == 6 and first.finished == 6 and first.best_value < 1.0
    assert [s.finished for s in seen] == [1, 2, 3, 4, 5, 6]
    again = sweep(config)  # nothing left to do
    assert again.finished == 6
    more = sweep(config.with_overrides(trials=8))
    assert more.finished == 8
    assert len(open_study(config).get_trials()) == 8  # the first six were not re-run


def test_a_changed_protocol_is_refused(tmp_path):
    sweep(mlp_config(tmp_path, trials=2, pruner="none"))
    with pytest.raises(Exception, match="steps: saved 60, now 61"):
        sweep(mlp_config(tmp_path, trials=2, pruner="none", steps=61))


def test_a_diverged_trial_is_recorded_not_fatal(tmp_path):
    config = mlp_config(tmp_path, sampler="grid", pruner="none", optimizer="sgd", space={"lr": [1e4, 0.1]})
    s = sweep(config)
    assert s.diverged == 1 and s.complete == 1 and s.best_params == {"lr": 0.1}
    (bad,) = [t for t in open_study(config).get_trials() if t.params["lr"] == 1e4]
    assert bad.value == math.inf and "loss" in bad.user_attrs["diverged"]


def test_a_grid_queued_twice_still_runs_each_point_once(tmp_path):
    """Two launchers starting at once can both queue the grid; the second copy is skipped."""
    config = mlp_config(tmp_path, sampler="grid", pruner="none", steps=20, space={"lr": [0.01, 0.03, 0.1]})
    study = open_study(config)
    for point in grid_points(config.space):
        study.enqueue_trial(point)  # the other launcher's copy, no skip_if_exists
    s = sweep(config)
    trials = study.get_trials()
    done = sorted(t.params["lr"] for t in trials if t.state.name == "COMPLETE")
    assert done == [0.01, 0.03, 0.1] and s.finished == 3
    strays = [t for t in trials if t.user_attrs.get("stray")]
    assert len(strays) == 3 and all("queued twice" in t.user_attrs["stray"] for t in strays)


def test_pruning_compares_trials_of_the_same_shape_only():
    """A narrow trial reporting a loss no wide trial would beat is kept when it is the best of
    its width, and pruned when pooled with the wide ones."""

    def run(pruner) -> optuna.trial.TrialState:
        study = optuna.create_study(pruner=pruner)
        for value in (0.1, 0.2, 0.3, 0.4):  # wide models: low loss
            t = study.ask()
            t.set_user_attr("shape", "wide")
            t.report(value, 1)
            t.should_prune()
            study.tell(t, value)
        t = study.ask()
        t.set_user_attr("shape", "narrow")
        t.report(1.0, 1)
        return t.should_prune()

    halving = dict(min_resource=1, reduction_factor=2)
    assert run(optuna.pruners.SuccessiveHalvingPruner(**halving)) is True
    assert run(SameShapePruner(optuna.pruners.SuccessiveHalvingPruner(**halving))) is False


def test_searched_width_is_a_shape_and_pruning_keeps_each_widths_best(tmp_path):
    space = {"width": [16, 64], "lr": Range(2.0**-9, 2.0**-3, log=True, points=4)}
    config = mlp_config(tmp_path, sampler="grid", space=space, steps=90, min_steps=10)
    s = sweep(config)
    trials = open_study(config).get_trials()
    assert s.finished == 8 and s.pruned >= 1
    for width in (16, 64):
        mine = [t for t in trials if t.params["width"] == width]
        assert {t.user_attrs["shape"] for t in mine} == {
            f'{{"in_features": 64, "out_features": 10, "width": {width}}}'
        }
        assert any(t.state.name == "COMPLETE" for t in mine)  # every width keeps at least its best


def test_your_own_training_function(tmp_path):
    config = mlp_config(
        tmp_path,
        train="sweep_helpers:quadratic",
        data=None,
        sampler="grid",
        pruner="none",
        space={"lr": [0.01, 0.1], "target_norm": [1.0, 2.0]},
    )
    s = sweep(config)
    assert s.finished == 4 and s.best_params["target_norm"] == 1.0
    t = mutransfer.transfer(config)  # your own loop: values carried, FLOPs unknown (no data)
    assert t.hparams == {"lr": 0.01, "target_norm": 1.0}
    t.save(tmp_path / "target.json")
    assert mutransfer.load_transfer(tmp_path / "target.json").cost.proxy_seconds > 0


def test_an_error_in_a_trial_stops_the_sweep_and_a_rerun_tries_it_again(tmp_path, monkeypatch, capsys):
    config = mlp_config(
        tmp_path,
        train="sweep_helpers:breaks_when_told",
        data=None,
        sampler="grid",
        pruner="none",
        space={"lr": [0.01, 0.1], "target_norm": 1.0},
    )
    monkeypatch.setenv("MUTRANSFER_TEST_BREAK", "1")
    with pytest.raises(MutransferError, match=r"RuntimeError\('told to break'\).*tried again"):
        sweep(config)
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("MUTRANSFER_TEST_BREAK")
    s = sweep(config)
    assert s.finished == 2 and s.failed == 0 and s.lost == 1


# ---- workers, kills and interrupts ----------------------------------------------------------------
def test_workers_asking_at_once_never_overshoot_the_budget(tmp_path, monkeypatch):
    """Two workers both see room for the last trial and ask at the same moment: one trains, the
    other's trial is a stray. Before the budget was claimed with the ask, both trained."""
    config = mlp_config(
        tmp_path,
        train="sweep_helpers:quadratic",
        data=None,
        trials=1,
        pruner="none",
        space={"lr": Range(1e-3, 0.1, log=True), "target_norm": 1.0},
    )
    open_study(config)
    gate, first_look = threading.Barrier(2, timeout=60), set()

    def status_then_meet(study, total):
        s = status(study, total)
        if threading.get_ident() not in first_look:  # both workers have seen an empty study
            first_look.add(threading.get_ident())
            gate.wait()
        return s

    monkeypatch.setattr(runner, "status", status_then_meet)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            runner.run_worker(config, parallel=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    trials = open_study(config).get_trials()
    assert status(open_study(config), 1).finished == 1
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "FAIL"]
    (stray,) = [t for t in trials if t.user_attrs.get("stray")]
    assert "budget of 1 trials was taken" in stray.user_attrs["stray"] and not stray.params


HOLD_LOCK = """
import sys, time
from mutransfer.sweep.storage import open_storage
open_storage(sys.argv[1])._backend._lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_the_journal_lock_keeps_writers_apart_and_dies_with_its_holder(tmp_path):
    """While a worker holds the journal's lock, no other writes; the kernel drops the flock with
    its holder. Optuna's default lock file stayed
    behind and every other worker waited 30 s (measured: 30.05 s) before breaking it."""
    config = mlp_config(tmp_path)
    study = open_study(config)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, config.storage_url], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    writer = threading.Thread(target=study.set_user_attr, args=("after", 1), daemon=True)
    writer.start()
    writer.join(timeout=1.0)  # a write takes a few ms: one that finishes here ignored the lock
    assert writer.is_alive(), "a write went through while another worker held the journal lock"
    holder.kill()
    holder.wait()
    writer.join(timeout=20)  # far below the old 30 s grace period, far above a write's few ms
    assert not writer.is_alive(), "a write still waits for the dead worker's lock"
    assert open_study(config).user_attrs["after"] == 1


SLOW_TOML = MLP_TOML.format(steps=1500, extra="heartbeat = 1\n")


def _trials(config: SweepConfig) -> list:
    return open_study(config, queue_grid=False).get_trials()  # look only: the launcher queues


def _wait_for_running(config: SweepConfig, timeout: float = 90) -> optuna.trial.FrozenTrial:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if Path(config.storage_url).exists() or "://" in config.storage_url:
            running = [t for t in _trials(config) if t.state.name == "RUNNING" and "worker" in t.user_attrs]
            # a trial in its first second or so is surely mid-training when killed
            if running:
                time.sleep(0.5)
                return running[0]
        time.sleep(0.2)
    raise AssertionError("no trial started")


def _assert_accounted(config: SweepConfig, total: int) -> None:
    """Each grid point finished exactly once; every lost trial was re-queued exactly once."""
    trials = _trials(config)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert sorted(t.params["lr"] for t in finished) == pytest.approx(GRID_LRS)
    assert len(finished) == total
    lost = [t for t in trials if t.state.name == "FAIL" and not t.user_attrs.get("stray")]
    for t in lost:
        retries = [r for r in trials if r.system_attrs.get("failed_trial") == t.number]
        assert len(retries) == 1 and retries[0].params == t.params
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]


@pytest.mark.slow
def test_two_workers_complete_and_a_killed_worker_loses_nothing(tmp_path):
    path = write_toml(tmp_path / "slow.toml", SLOW_TOML)
    config = load_config(path).with_overrides(storage=str(tmp_path / "slow.journal"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mutransfer",
            "sweep",
            str(path),
            "--workers",
            "2",
            "--storage",
            config.storage_url,
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    victim = _wait_for_running(config)
    os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "stopped with signal 9" in err
    s = status(open_study(config, queue_grid=False), 7)
    assert s.lost == 1 and s.finished == 7
    # a rerun finds nothing to do and changes nothing
    rerun = cli("sweep", str(path), "--storage", config.storage_url, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    _assert_accounted(config, 7)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(tmp_path):
    path = write_toml(tmp_path / "slow.toml", SLOW_TOML)
    config = load_config(path).with_overrides(storage=str(tmp_path / "slow.journal"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mutransfer", "sweep", str(path), "--storage", config.storage_url],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        preexec_fn=sigint_default,
    )
    _wait_for_running(config)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "rerun to resume" in err and "Traceback" not in err
    queued = [t for t in _trials(config) if t.state.name == "WAITING"]
    assert len(queued) >= 1  # the interrupted trial is back in the queue
    rerun = cli("sweep", str(path), "--storage", config.storage_url, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    _assert_accounted(config, 7)


def test_ctrl_c_inside_exec_still_exits_130(tmp_path):
    """Where a Ctrl-C lands decides nothing: one that passes out of an exec() of a string (the
    rare case above, forced here) used to end the handled command by SIGINT (-2)."""
    path = write_toml(
        tmp_path / "x.toml", MLP_TOML.format(steps=5, extra='train = "sweep_helpers:interrupted_inside_exec"')
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    done = cli("sweep", str(path), cwd=tmp_path, env=env)
    assert done.returncode == 130, done.stderr
    assert "rerun to resume" in done.stderr and "Traceback" not in done.stderr
    config = load_config(path).with_overrides(storage=str(tmp_path / "x.journal"))
    states = [t.state.name for t in _trials(config)]
    assert states.count("FAIL") == 1 and states.count("WAITING") == 7  # the 7 grid points, one of them again


# ---- PostgreSQL: many machines -------------------------------------------------------------------
@pytest.fixture(scope="module")
def postgres_url():
    """The server .ci/run started (MUTRANSFER_TEST_POSTGRES), else one started here."""
    url = os.environ.get("MUTRANSFER_TEST_POSTGRES")
    if not url:
        script = Path(__file__).resolve().parents[1] / "scripts" / "postgres-up"
        try:
            done = subprocess.run([str(script)], capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            done = subprocess.CompletedProcess([], 1, "", str(exc))
        if done.returncode != 0:
            reason = f"no PostgreSQL server could be started: {done.stderr.strip()[-300:]}"
            print(reason, file=sys.stderr)
            pytest.skip(reason)
        url = done.stdout.strip()
    return url


@pytest.mark.slow
def test_postgres_workers_share_a_study_and_a_killed_one_loses_nothing(tmp_path, postgres_url):
    path = write_toml(tmp_path / "slow.toml", SLOW_TOML)
    study = f"test-{os.getpid()}-{time.time_ns()}"
    config = load_config(path).with_overrides(storage=postgres_url, study=study)
    args = ["worker", str(path), "--storage", postgres_url, "--study", study]
    open_study(config)  # created (and its grid queued) before the workers join
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "mutransfer", *args], cwd=tmp_path, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    victim = _wait_for_running(config)
    pid = victim.user_attrs["worker"]["pid"]
    os.kill(pid, signal.SIGKILL)
    survivor = next(w for w in workers if w.pid != pid)
    _, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err
    next(w for w in workers if w.pid == pid).wait()
    s = status(open_study(config, queue_grid=False), 7)
    assert s.lost == 1 and s.finished == 7
    _assert_accounted(config, 7)


# ---- the multipliers are real -----------------------------------------------------------------
def test_an_absorbed_output_multiplier_trains_like_a_forward_one():
    """Under Adam, logits = a * W x trains the same as W' = a * W with LR a * lr: the sweep's
    output_mult changes nothing in the forward pass and still means what it says."""
    from mutransfer.axis import width_plan
    from mutransfer.setup import ModelSetup, TrainSetup
    from sweep_helpers import mlp_without_readout_bias as MLP

    a, lr, shape = 4.0, 1e-2, {"width": 32, "in_features": 8, "out_features": 3}
    plan = width_plan(MLP, shape, "width", 32, 32)  # identity: standard parametrization
    x, y = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)), torch.arange(64) % 3

    def losses(model, opt, scale):
        out = []
        for _ in range(20):
            loss = torch.nn.functional.cross_entropy(scale * model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        return out

    torch.manual_seed(0)
    forward = MLP(**shape)
    groups = plan.param_groups(forward, lr=lr, eps=1e-12)
    reference = losses(forward, torch.optim.Adam(groups), a)
    absorbed, opt = ModelSetup(factory=MLP, multipliers={"output_mult": a}).build(
        shape, tuned=True, plan=plan, lr=lr, training=TrainSetup(data=None), seed=0
    )
    for g in opt.param_groups:
        g["eps"] = 1e-12  # eps is the one place the two forms differ
    assert losses(absorbed, opt, 1.0) == pytest.approx(reference, rel=1e-4)
