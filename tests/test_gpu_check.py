"""benchmarks/gpu_check.sh --dry-run: every stage runs on the CPU and prints its numbers."""
import os
import re
import subprocess

import pytest

from conftest import REPO_ROOT

NUMBER = r"[0-9]+(?:\.[0-9]+)?"


def test_gpu_check_dry_run_prints_every_stage_with_numbers():
    script = os.path.join(REPO_ROOT, "benchmarks", "gpu_check.sh")
    proc = subprocess.run([script, "--dry-run"], capture_output=True, text=True, timeout=300,
                          cwd=REPO_ROOT)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "FAILED" not in out
    assert re.search(r"^\[env\] dry run .*torch", out, re.M)
    for model in ("dense-clip", "drseg"):
        for precision in ("fp32", "fp16", "bf16"):
            line = re.search(rf"^\[{model}\] {precision}: (\d+)×(\d+) px in ({NUMBER}) s, "
                             rf"({NUMBER}) Mpx/s .*peak (?:GPU memory|RSS) ({NUMBER}) MB$", out, re.M)
            assert line, (model, precision, out)
            width, height, seconds, mpx_s, _ = map(float, line.groups())
            assert seconds > 0 and mpx_s == pytest.approx(width * height / 1e6 / seconds, rel=0.1)
        for precision in ("fp16", "bf16"):
            line = re.search(rf"^\[agreement\] {model} {precision} vs fp32: ({NUMBER})% ", out, re.M)
            assert line, (model, precision, out)
            assert 90.0 <= float(line.group(1)) <= 100.0  # half precision rarely flips a class
    refer = re.search(rf"^\[refer\] .*first query ({NUMBER}) s .*cached queries ({NUMBER})-"
                      rf"({NUMBER}) s", out, re.M)
    assert refer, out
    assert float(refer.group(2)) <= float(refer.group(3))
    prompter = re.search(rf"^\[prompter\] .*training step ({NUMBER}) s for 1 image.*inference "
                         rf"({NUMBER}) s per image$", out, re.M)
    assert prompter and float(prompter.group(1)) > 0 and float(prompter.group(2)) > 0, out
    assert re.search(r"^\[sam3\] (skipped: .+|.*tile .*s)", out, re.M)
    assert re.search(rf"^\[done\] {NUMBER} s$", out, re.M)
