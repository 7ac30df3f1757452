"""``benchmarks/bench_train.py`` when a step does not fit in device memory: a finding in the table and the JSON,
not a traceback that loses the steps that did fit (as it did for batch 32 on an H200)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from bench_modules import load_bench

bench = load_bench("bench_train")
MESSAGE = "CUDA out of memory. Tried to allocate 32.00 GiB. GPU 0 has a total capacity of 139.80 GiB"


def fake_step(method: str, fp32: bool) -> dict:
    """What a child reports for a step that ran (the fields main() prints)."""
    step = {"sup_only": 0.06, "cps": 0.21}[method] * (2 if fp32 else 1)
    return {
        "step_s": step, "best_s": step, "scans_per_s": 4 / step, "peak_memory_mib": 1000.0,
        "step_excess_mib": 900.0, "trained_nets": 1 if method == "sup_only" else 2, "nets": 2,
        "load_average_1min": [0.5, 0.5],
        "precision": {"amp": "off" if fp32 else "bfloat16", "channels_last": not fp32, "reason": "test"},
    }  # fmt: skip


def test_a_child_reports_an_out_of_memory_step_as_its_result(monkeypatch, capsys) -> None:
    def too_big(*_args):
        raise torch.OutOfMemoryError(MESSAGE)

    monkeypatch.setattr(bench, "time_steps", too_big)
    monkeypatch.setattr(sys, "argv", ["bench_train.py", "--only", "cps"])
    assert bench.main() == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(bench.RESULT_TAG)
    assert json.loads(line[len(bench.RESULT_TAG) :]) == {bench.OOM: "CUDA out of memory"}


@pytest.mark.parametrize("oom", [{"cps"}, {"cps, float32"}, {"sup_only, float32"}])
def test_steps_that_do_not_fit_are_listed_and_the_rest_kept(monkeypatch, capsys, tmp_path, oom) -> None:
    def child(method, _args, fp32_nchw=False, fidnet_reference=False):
        name = method + (", float32" if fp32_nchw else "")
        return {bench.OOM: "CUDA out of memory"} if name in oom else fake_step(method, fp32_nchw)

    monkeypatch.setattr(bench, "time_in_child", child)
    out_json = tmp_path / "train.json"
    monkeypatch.setattr(sys, "argv", ["bench_train.py", "--methods", "cps", "--json", str(out_json)])
    assert bench.main() == 0
    printed = capsys.readouterr().out
    written = json.loads(out_json.read_text())
    ran = {"sup_only", "cps"} - oom
    assert set(written["results"]) == ran | {"sup_only"}
    assert set(written["fp32_channels_first"]) == {
        m for m in ("sup_only", "cps") if m in ran and f"{m}, float32" not in oom
    }
    listed = {name.replace(" channels-first", "") for name in written["out_of_memory"]}
    assert listed == oom
    for name in written["out_of_memory"]:
        assert f"{name}: does not fit at batch 1 (CUDA out of memory)" in printed


def test_sup_only_not_fitting_is_a_one_line_error(monkeypatch, capsys) -> None:
    monkeypatch.setattr(bench, "time_in_child", lambda *a, **k: {bench.OOM: "CUDA out of memory"})
    monkeypatch.setattr(sys, "argv", ["bench_train.py", "--methods", "cps", "--batch", "32"])
    assert bench.main() == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: sup_only does not fit at batch 32 on cpu: CUDA out of memory"]
