"""Freed memory is kept for reuse (abm.memory): repeated allocations touch no fresh pages."""

import platform
import subprocess
import sys

import pytest

PROGRAM = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from abm.memory import keep_freed_memory
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def tick():  # the temporaries of a tick: arrays of some megabytes, freed at its end
    arrays = [np.ones(300_000 * (i + 1)) for i in range(6)]
    del arrays
for _ in range(3):
    tick()
before = faults()
for _ in range(20):
    tick()
print(faults() - before)
"""


def page_faults(mode: str, **env: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, env=env or None
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's allocator only")
def test_kept_memory_is_reused_instead_of_faulting_in_fresh_pages():
    default, kept = page_faults("default"), page_faults("keep")
    assert default > 1000  # glibc's default returns the arrays' memory and faults it back
    assert kept < default / 20


def test_the_setting_can_be_declined(monkeypatch):
    from abm import memory

    monkeypatch.setattr(memory, "_done", False)
    monkeypatch.setenv("ABM_RETURN_FREED_MEMORY", "1")
    assert memory.keep_freed_memory() is False
