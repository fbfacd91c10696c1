"""The command line is a thin adapter over the public API."""

from __future__ import annotations

import subprocess
import sys

import mutransfer
from mutransfer.cli import main


def test_plan_command_prints_summary_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    code = main(
        [
            "plan",
            "mutransfer.models:GPT",
            "--base",
            "width=32",
            "tie_embeddings=True",
            "--target",
            "width=128",
            "tie_embeddings=True",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "width x4" in text and "wte.weight = lm_head.weight" in text
    want = mutransfer.plan(
        mutransfer.models.GPT,
        base={"width": 32, "tie_embeddings": True},
        target={"width": 128, "tie_embeddings": True},
    )
    assert mutransfer.load_plan(out) == want


def test_plan_command_reports_errors_without_traceback(capsys):
    assert main(["plan", "mutransfer.models:Nope", "--base", "width=32", "--target", "width=64"]) == 2
    assert "has no attribute 'Nope'" in capsys.readouterr().err
    assert main(["plan", "mutransfer.models:MLP", "--base", "width", "--target", "width=64"]) == 2
    assert "must look like key=value" in capsys.readouterr().err


def test_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "mutransfer", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "plan" in proc.stdout


def test_coord_check_command_exits_0_on_pass_and_writes_plot_and_json(tmp_path, capsys):
    png, js = tmp_path / "coord.png", tmp_path / "coord.json"
    args = ["coord-check", "mutransfer.models:MLP", "--data", "mnist-5k", "--batch-size", "32"]
    args += ["--steps", "2", "--seeds", "2", "--compare-sp", "--out", str(png), "--json", str(js)]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "PASSED" in out.out and "FAILED" in out.out  # muP passes, standard fails
    assert "16/16 runs" in out.err  # progress went to stderr, counted over both parametrizations
    assert png.stat().st_size > 10_000
    assert (tmp_path / "coord-sp.json").exists() and (tmp_path / "coord-mup.json").exists()


def test_coord_check_command_exits_1_when_a_module_grows(capsys):
    # muP plan, but a model whose attention keeps SDPA's 1/sqrt(d_head) in its code: the check fails
    args = ["coord-check", "foreign:Transformer", "--widths", "32", "64", "128", "--steps", "1"]
    assert main([*args, "--seeds", "1", "--block-size", "16", "--set", "block_size=16"]) == 1
    assert "attn.sdpa" in capsys.readouterr().out


def test_coord_check_command_reports_bad_data_name(capsys):
    assert main(["coord-check", "mutransfer.models:MLP", "--data", "imagenet"]) == 2
    assert "choose one of" in capsys.readouterr().err


def test_depth_flags_reach_the_plan_and_the_check(tmp_path, capsys):
    args = [
        "plan",
        "mutransfer.models:GPT",
        "--base",
        "width=32",
        "depth=2",
        "--target",
        "width=64",
        "depth=4",
    ]
    assert main([*args, "--depth", "depth", "--residual", "blocks.*proj", "--optimizer-family", "muon"]) == 0
    text = capsys.readouterr().out
    assert "depth: depth 2 -> 4 blocks (m_L 2), alpha 1: branch multiplier 0.5" in text
    assert "hidden (muon)" in text
    png = tmp_path / "depth.png"
    check = ["coord-check", "mutransfer.models:GPT", "--depths", "2", "4", "8", "--residual", "blocks.*proj"]
    check += ["--set", "width=16", "--block-size", "16", "--steps", "2", "--seeds", "2", "--out", str(png)]
    assert main(check) == 0
    assert "exponent s of depth**s" in capsys.readouterr().out and png.stat().st_size > 10_000
    assert main([*check, "--widths", "16", "32", "64"]) == 2
    assert "give --widths or --depths, not both" in capsys.readouterr().err


def _actions(command: str) -> dict[str, object]:
    """The subcommand's flags: dest -> argparse action (old spellings left out)."""
    from mutransfer.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {a.dest: a for a in sub._actions if a.help != "==SUPPRESS==" and a.option_strings}


def test_flags_that_name_a_parameter_default_to_the_functions_own_default():
    import inspect

    from mutransfer.cli import demo as demo_command

    commands = {"coord-check": mutransfer.coord_check, "grid": mutransfer.grid, "plan": mutransfer.plan,
                "demo": demo_command.demo.run}  # fmt: skip
    for command, function in commands.items():
        parameters = inspect.signature(function).parameters
        mirrored = 0
        for dest, action in _actions(command).items():
            if dest not in parameters or parameters[dest].default is inspect.Parameter.empty:
                continue
            default = parameters[dest].default
            if dest == "path":  # the grid command keeps its results in grid.json unless told otherwise
                continue
            want = list(default) if isinstance(default, tuple) else default
            if action.nargs == "+" and want is not None and not isinstance(want, list):
                want = [want]  # a flag that may list several values of a scalar parameter
            if dest not in ("shape", "sp_shape", "overrides"):  # KEY=VALUE lists, parsed into the mapping
                assert action.default == want, (command, dest, action.default, want)
            mirrored += 1
        assert mirrored >= {"coord-check": 15, "grid": 15, "plan": 4, "demo": 5}[command], (command, mirrored)


def test_old_flag_spellings_still_work_and_name_the_new_one(capsys):
    from mutransfer.cli import build_parser

    parser = build_parser()
    old = parser.parse_args(["coord-check", "m:f", "--set", "a=1", "--sp-set", "b=2", "--compare-sp"])
    new = parser.parse_args(["coord-check", "m:f", "--shape", "a=1", "--sp-shape", "b=2",
                             "--parametrizations", "sp", "mup"])  # fmt: skip
    assert vars(old) == vars(new)
    err = capsys.readouterr().err
    for was, now in (
        ("--set", "--shape"),
        ("--sp-set", "--sp-shape"),
        ("--compare-sp", "--parametrizations"),
    ):
        assert f"{was} is now {now}" in err
    assert parser.parse_args(["grid", "m:f", "--json", "g.json"]).path == "g.json"
    assert "--json is now --path" in capsys.readouterr().err
    assert parser.parse_args(["grid", "m:f"]).path == "grid.json"


def test_compare_sp_is_the_apis_parametrizations(tmp_path, capsys):
    """Both results, standard first, from one coord_check call; the exit status judges muP's."""
    args = ["coord-check", "mutransfer.models:MLP", "--data", "digits", "--widths", "32", "64", "128", "256",
            "--steps", "3", "--seeds", "2", "--parametrizations", "sp", "mup",
            "--json", str(tmp_path / "c.json")]  # fmt: skip
    assert main(args) == 0
    sp = mutransfer.CoordCheck.load(tmp_path / "c-sp.json")
    mup = mutransfer.CoordCheck.load(tmp_path / "c-mup.json")
    assert (sp.parametrization, mup.parametrization) == ("sp", "mup")
    assert not sp.passed and mup.passed
