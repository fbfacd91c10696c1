"""The benchmarks behind the coordinate check's claims, in their quick modes, run as a user runs
them: the threshold, the planted bugs, microsoft/mup step by step and the transformers zoo."""

from __future__ import annotations

import importlib.util

import pytest

from quick_benchmarks import run_quick


def test_thresholds_separate_correct_mup_from_every_fault(tmp_path):
    record, _ = run_quick("coord_thresholds", tmp_path)
    (summary,) = record["summary"].values()
    assert summary["false_failures"] == 0 and summary["faults_missed"] == 0
    assert summary["correct_largest_growth"] < record["threshold"]


def test_planted_bugs_are_caught(tmp_path):
    record, _ = run_quick("verdict", tmp_path)
    assert record["bugs"] and all(b["caught"] and b["located"] for b in record["bugs"])
    assert all(c["false_failures"] == 0 for c in record["correct"])


@pytest.mark.skipif(importlib.util.find_spec("mup") is None, reason="microsoft/mup not installed")
def test_microsoft_mup_and_mutransfer_train_alike(tmp_path):
    record, _ = run_quick("equivalence", tmp_path)
    matched = [r for r in record["rows"] if r["eps_as_mup"] or r["optimizer"] == "sgd"]
    assert matched and all(r["max_relative_difference"] < 1e-5 for r in matched)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed")
def test_the_zoo_finds_no_silently_wrong_family(tmp_path):
    record, _ = run_quick("zoo", tmp_path)
    assert record["counts"]["muP passes"] >= 1 and record["counts"]["silently wrong"] == 0
