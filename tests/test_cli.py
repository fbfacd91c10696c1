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
