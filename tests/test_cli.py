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
    assert "8/8 runs" in out.err  # progress went to stderr
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
