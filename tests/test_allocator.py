"""keep_freed_memory: buffers freed by one training step serve the next without
page faults. Each check runs in a fresh process, since malloc settings are
per process and the setting is made once."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the thresholds are glibc's",
)

# Allocates and frees a step's worth of activation-sized buffers (8 MB and
# 2 MB, as the masker's) again and again, and counts the page faults of each
# step once the heap has settled: with freed memory kept, a step reuses mapped
# pages. The heap may still grow by a 2 MiB chunk (512 faults) in a step now
# and then; that is not the failure, which faults every step.
STEPS = """
import json, resource, sys
import torch
from benchmark.allocator import keep_freed_memory

kept = keep_freed_memory()

def step():
    buffers = [torch.ones(128, 16, 32, 32) for _ in range(6)]
    buffers += [torch.ones(128, 16, 16, 16) for _ in range(6)]
    return sum(float(b[0, 0, 0, 0]) for b in buffers)

for _ in range(5):
    step()  # the heap grows to the step's peak over the first few
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
json.dump({"kept": kept, "faults": faults}, sys.stdout)
"""


def run_steps(env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    env.update(env_extra)
    out = subprocess.run(
        [sys.executable, "-c", STEPS],
        check=False,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_kept_memory_serves_the_next_step_without_page_faults():
    result = run_steps({})
    assert result["kept"] is True
    # the buffers span 15,360 pages; with glibc's defaults some processes
    # fault nearly all of them in again every step (12,256 a step on an AVX2
    # machine, in one or two of six processes; none in the others)
    assert statistics.median(result["faults"]) < 100, result["faults"]


def test_a_users_own_malloc_settings_stand():
    result = run_steps({"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert result["kept"] is False
