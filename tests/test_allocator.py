"""glibc's thresholds raised by the command line (allocator.py), and left alone when the user chose."""

import platform
import subprocess
import sys

import pytest

from e2former_calc.allocator import keep_freed_memory


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_freed_memory_in_a_fresh_process_and_not_against_the_users_choice():
    code = ("from e2former_calc.allocator import keep_freed_memory; import numpy as np; "
            "assert keep_freed_memory(); a = np.ones(2**26); del a; print('ok')")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "ok"
    env_code = "import os; os.environ['MALLOC_MMAP_THRESHOLD_'] = '1'; " \
               "from e2former_calc.allocator import keep_freed_memory; assert not keep_freed_memory(); print('ok')"
    assert subprocess.run([sys.executable, "-c", env_code], capture_output=True, text=True, check=True).stdout.strip() == "ok"


def test_the_command_line_calls_it(monkeypatch):
    import e2former_calc.allocator as allocator
    from e2former_calc import cli

    called = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: called.append(True) or True)
    assert cli.main(["md", "--model", "no-such-potential", "--steps", "1"]) == 2  # a clear error, after the call
    assert called == [True]
