"""u-muP's independent search: lr alone, each other key alone at the best lr, the bests combined;
resumable, and the plan fixes the budget."""

from __future__ import annotations

import math

import optuna
import pytest

from mutransfer.errors import MutransferError
from mutransfer.sweep import Range, SweepConfig, sweep
from mutransfer.sweep.config import ConfigError
from mutransfer.sweep.independent import IndependentSampler, plan_of
from mutransfer.sweep.runner import budget, open_study
from mutransfer.sweep.space import suggest
from mutransfer.sweep.storage import open_storage, requeue

optuna.logging.set_verbosity(optuna.logging.ERROR)

LRS = [2.0**k for k in range(-9, -1)]  # 8 points; the middle one (2**-5) is not the best
ALPHAS = [0.25, 0.5, 1.0, 2.0, 4.0]
SPACE = {
    "lr": Range(2**-9, 2**-2, log=True),  # points: 8 by default
    "a": Range(2**-2, 2**2, log=True),  # points: 5 by default
    "b": Range(2**-2, 2**2, log=True),
    "c": [0.5, 1.0, 2.0],
    "warmup": 0.1,  # fixed: not searched
}
BEST = {"lr": 2.0**-6, "a": 2.0, "b": 0.5, "c": 1.0}
SIZE = 8 + 4 + 4 + 2 + 1


def bowl(params) -> float:
    """Separable in log2 space, its minimum (0) at BEST."""
    return sum((math.log2(params[k]) - math.log2(v)) ** 2 for k, v in BEST.items())


def objective(trial) -> float:
    return bowl(suggest(trial, SPACE))  # as the runner asks: one suggest_* per searched key


def run(study, n: int, fn=objective) -> list:
    study.optimize(fn, n_trials=n)
    return study.get_trials()


def searched(t) -> dict:
    return {k: t.params[k] for k in ("lr", "a", "b", "c")}


def test_the_plan_lays_out_the_phases_and_fixes_the_budget(tmp_path):
    plan = plan_of(SPACE)
    assert list(plan.lrs) == LRS
    assert plan.defaults == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert plan.sweeps == {"a": (0.25, 0.5, 2.0, 4.0), "b": (0.25, 0.5, 2.0, 4.0), "c": (0.5, 2.0)}
    assert len(plan) == SIZE and [s.phase for s in plan.slots][-2:] == ["c", "combined"]
    assert "independent search, 19 trials" in plan.lines()[0]
    # no 1 in the range or the choices: the middle (geometric when log), the first choice
    other = plan_of(
        {"lr": Range(1e-3, 1e-1, log=True, points=3), "x": Range(2.0, 8.0, log=True, points=3),
         "y": Range(2.0, 6.0), "z": ["relu", "gelu"], "n": Range(0, 8, points=3)}
    )  # fmt: skip
    assert other.defaults == {"x": 4.0, "y": 4.0, "z": "relu", "n": 1}
    assert other.sweeps["x"] == (2.0, 8.0) and other.sweeps["z"] == ("gelu",)
    assert other.sweeps["n"] == (0, 4, 8) and len(other.sweeps["y"]) == 4  # 1 is not on n's grid
    # one key besides lr: the combination would repeat a point already run, so none is planned
    assert [s.phase for s in plan_of({"lr": SPACE["lr"], "a": SPACE["a"]}).slots][-1] == "a"
    config = SweepConfig(
        factory="mutransfer.models:MLP", data="digits", proxy={"width": 32}, target={"width": 256},
        sampler="independent", trials=3, storage=str(tmp_path / "s.journal"),
        space={"lr": SPACE["lr"], "output_mult": SPACE["a"], "input_mult": SPACE["c"]},
    )  # fmt: skip
    assert budget(config) == 8 + 4 + 2 + 1  # trials ignored, as by grid search


def test_phase_one_sweeps_lr_alone_with_the_others_at_their_default():
    trials = run(optuna.create_study(sampler=IndependentSampler(SPACE)), 8)
    assert [t.params["lr"] for t in trials] == LRS
    assert all((t.params["a"], t.params["b"], t.params["c"]) == (1.0, 1.0, 1.0) for t in trials)
    assert {t.user_attrs["phase"] for t in trials} == {"lr"}


def test_phase_two_sweeps_each_key_alone_at_phase_ones_best_lr():
    trials = run(optuna.create_study(sampler=IndependentSampler(SPACE)), SIZE - 1)[8:]
    assert all(t.params["lr"] == BEST["lr"] for t in trials)  # not the middle of the grid, 2**-5
    for key, values in (("a", [0.25, 0.5, 2.0, 4.0]), ("b", [0.25, 0.5, 2.0, 4.0]), ("c", [0.5, 2.0])):
        mine = [t for t in trials if t.user_attrs["phase"] == key]
        assert [t.params[key] for t in mine] == values  # the default, 1, was phase 1's
        others = {k for k in ("a", "b", "c") if k != key}
        assert all(t.params[k] == 1.0 for t in mine for k in others)


def test_the_combined_trial_takes_each_keys_best():
    study = optuna.create_study(sampler=IndependentSampler(SPACE))
    trials = run(study, SIZE)
    last = trials[-1]
    assert last.user_attrs["phase"] == "combined"
    assert searched(last) == BEST  # c's best is its default: phase 1's best trial stood for it
    assert study.best_trial.number == last.number and last.value == 0.0
    points = [tuple(sorted(searched(t).items())) for t in trials]
    assert len(set(points)) == SIZE  # no point run twice


def test_a_killed_sweep_resumes_the_plan_without_repeating_points(tmp_path):
    whole = run(optuna.create_study(sampler=IndependentSampler(SPACE)), SIZE)
    storage = open_storage(str(tmp_path / "s.journal"))
    first = optuna.create_study(study_name="s", storage=storage, sampler=IndependentSampler(SPACE))
    run(first, 11)
    killed = first.ask()  # slot 11, the last of a's sweep: its worker dies mid-trial
    objective(killed)
    # a new process: another sampler over the same storage fails and re-queues the lost trial
    again = optuna.load_study(study_name="s", storage=storage, sampler=IndependentSampler(SPACE))
    again.tell(killed.number, state=optuna.trial.TrialState.FAIL)
    requeue(again, killed.number)
    trials = run(again, SIZE - 11)  # the retry (keeping slot 11, not taking b's first) and the rest
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert [searched(t) for t in done] == [searched(t) for t in whole]
    assert [t.user_attrs["phase"] for t in done] == [t.user_attrs["phase"] for t in whole]
    retry = trials[killed.number + 1]
    assert retry.system_attrs["failed_trial"] == killed.number and searched(retry) == killed.params


def test_pruned_trials_are_done_but_never_best():
    def prune_the_best_lr(trial):
        params = suggest(trial, SPACE)
        if params["lr"] == BEST["lr"]:
            raise optuna.TrialPruned()
        return bowl(params)

    trials = run(optuna.create_study(sampler=IndependentSampler(SPACE)), SIZE, prune_the_best_lr)
    assert [t.state.name for t in trials].count("PRUNED") == 1
    assert [t.params["lr"] for t in trials[:8]] == LRS  # the pruned lr is not run again
    lrs = {t.params["lr"] for t in trials[8:]}
    assert len(lrs) == 1 and lrs <= {2.0**-7, 2.0**-5}  # the best complete phase-1 lr


def test_a_phase_two_trial_started_before_phase_one_ends_takes_the_best_lr_so_far():
    """Parallel workers: phase 1's last trials still run when a worker starts phase 2."""
    study = optuna.create_study(sampler=IndependentSampler(SPACE))
    phase1 = [study.ask() for _ in range(8)]
    early = study.ask()  # nothing complete: the middle of the lr grid
    assert suggest(early, SPACE)["lr"] == LRS[4]
    for t in phase1[:2]:  # 2**-9 and 2**-8 complete; the rest still run
        study.tell(t, bowl(suggest(t, SPACE)))
    later = study.ask()
    assert suggest(later, SPACE) == {"lr": 2.0**-8, "a": 0.5, "b": 1.0, "c": 1.0, "warmup": 0.1}


@pytest.mark.parametrize(
    "lr, match", [([0.01, 0.1], r"got \[0\.01, 0\.1\]"), (0.01, "got 0.01"), (None, "it is missing")]
)
def test_a_space_without_an_lr_range_is_refused(lr, match):
    space = {"a": SPACE["a"]} | ({} if lr is None else {"lr": lr})
    with pytest.raises(MutransferError, match=r"space\.lr: independent search .* over a range; " + match):
        plan_of(space)
    if lr is not None:  # a config without lr says so already
        with pytest.raises(ConfigError, match=r"space\.lr: independent search sweeps the learning rate"):
            SweepConfig(factory="mutransfer.models:MLP", data="digits", proxy={"width": 32},
                        target={"width": 256}, sampler="independent", space=space)  # fmt: skip


def test_a_sweep_runs_the_plan_end_to_end_and_a_rerun_adds_nothing(tmp_path):
    space = {
        "lr": Range(2**-9, 2**-3, log=True, points=3),
        "output_mult": Range(0.5, 2.0, log=True, points=3),
        "input_mult": [0.5, 1.0],
    }
    config = SweepConfig(
        factory="mutransfer.models:MLP", data="digits", proxy={"width": 32}, target={"width": 256},
        steps=20, eval_batches=2, sampler="independent", pruner="none", space=space,
        storage=str(tmp_path / "sweep.journal"),
    )  # fmt: skip
    s = sweep(config)
    assert s.trials == 3 + 2 + 1 + 1 and s.finished == s.trials and s.done
    trials = open_study(config).get_trials()
    phases = ["lr"] * 3 + ["output_mult"] * 2 + ["input_mult", "combined"]
    assert [t.user_attrs["phase"] for t in trials] == phases
    top = min(trials[:3], key=lambda t: t.value)
    assert all(t.params["lr"] == top.params["lr"] for t in trials[3:])
    for key in ("output_mult", "input_mult"):
        mine = [top] + [t for t in trials if t.user_attrs["phase"] == key]
        assert trials[-1].params[key] == min(mine, key=lambda t: t.value).params[key]
    assert sweep(config).finished == s.trials and len(open_study(config).get_trials()) == s.trials
