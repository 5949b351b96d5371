"""Freed host memory stays in the process after ``retain_freed_host_memory`` (glibc only)."""

import platform
import subprocess
import sys

import pytest

PROBE = """
import os, torch
from mtl.engine.host_memory import retain_freed_host_memory

def released_bytes():
    # how much the resident size drops when a 16 MiB tensor (every page touched) is freed
    tensor = torch.ones(4 * 1024 * 1024)
    held = int(open("/proc/self/statm").read().split()[1])
    del tensor
    return (held - int(open("/proc/self/statm").read().split()[1])) * os.sysconf("SC_PAGE_SIZE")

print(released_bytes())
assert retain_freed_host_memory()
print(released_bytes())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt's thresholds are glibc's")
def test_a_freed_block_goes_back_to_the_system_by_default_and_stays_when_retained():
    output = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    by_default, retained = (int(line) for line in output.split())
    assert by_default > 12 * 1024 * 1024
    assert retained < 1024 * 1024
