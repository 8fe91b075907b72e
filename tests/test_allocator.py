"""glibc's thresholds raised by the command line and by what runs a model on the CPU (allocator.py), and left
alone when the user chose."""

import os
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


def test_a_predictor_on_the_cpu_keeps_freed_memory_unless_told_not_to(monkeypatch):
    import e2former_calc.allocator as allocator
    from e2former_calc import E2FormerCalculator
    from e2former_calc.predictor import Predictor

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(True) or True)
    calc = E2FormerCalculator.from_config(species=("Cu",), device="cpu", quiet=True)
    assert calls == [True]
    Predictor(calc.predictor.model, device="cpu", keep_freed_memory=False)
    E2FormerCalculator.from_config(species=("Cu",), device="cpu", quiet=True, keep_freed_memory=False)
    assert calls == [True]
    with pytest.raises(ValueError, match="keep_freed_memory must be True or False"):
        Predictor(calc.predictor.model, device="cpu", keep_freed_memory="yes")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize("keep", [True, False])
def test_after_a_calculator_is_built_a_freed_64_mib_block_stays_in_the_process(keep):
    # glibc maps a 64 MiB block and unmaps it when freed (resident memory falls by ~64 MiB);
    # with the thresholds raised it comes from the heap and stays there for the next call
    code = (
        "import os, numpy as np\n"
        "from e2former_calc import E2FormerCalculator\n"
        f"E2FormerCalculator.from_config(species=('Cu',), device='cpu', quiet=True, keep_freed_memory={keep})\n"
        "def resident(): return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
        "a = np.ones(2**23); before = resident(); del a; print((before - resident()) / 2**20)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    released = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    env=env).stdout.split()[-1])
    if keep:
        assert released < 8, f"{released:.1f} MiB went back to the system"
    else:
        assert released > 56, f"only {released:.1f} MiB went back to the system"
