"""The CPU kernels every srvau process pins (srvau/numerics.py): without the pin, an AVX-512 machine and
an AVX2 one train the demo's seed into other models."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from srvau.numerics import CPU_KERNEL_PINS, OPT_OUT

x86_only = pytest.mark.skipif(platform.machine().lower() not in {"x86_64", "amd64"},
                              reason="the pins are x86-64 instruction sets")

PROBE = """
import os, srvau, torch
a = torch.randn(64, 64)
a @ a  # MKL and ATen both initialised
print(torch.backends.cpu.get_cpu_capability(), os.environ.get("MKL_CBWR"))
"""

# What the libraries say they run: MKL's verbose log names its reproducibility branch per call (CNR:AVX2,
# CNR:OFF), oneDNN's the instruction set it dispatches to. The matrix product goes through MKL; the
# Conv3d is Qwen2.5-VL's patch embedding, which runs in oneDNN.
LIBRARY_PROBE = """
import srvau, torch
a = torch.randn(256, 256)
a @ a
with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
    torch.nn.Conv3d(3, 16, (2, 14, 14), stride=(2, 14, 14))(torch.randn(64, 3, 2, 14, 14))
"""


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {*CPU_KERNEL_PINS, OPT_OUT}}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          check=True, timeout=120)


def _probe(**env: str) -> list[str]:
    return _run(PROBE, **env).stdout.split()


def _libraries(**env: str) -> tuple[set[str], set[str]]:
    """MKL's CNR branches and oneDNN's instruction sets, as each library's verbose log names them."""
    out = _run(LIBRARY_PROBE, MKL_VERBOSE="1", **env)
    log = out.stdout + out.stderr
    mkl = set(re.findall(r"CNR:(\S+)", log))
    onednn = set(re.findall(r"onednn_verbose,.*?info,cpu,isa:(.+)", log))
    assert mkl and onednn, f"no verbose log from MKL or oneDNN:\n{log[-2000:]}"
    return mkl, onednn


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _has_avx512() -> bool:
    return " avx512f" in _cpuinfo()


def _intel() -> bool:
    return "GenuineIntel" in _cpuinfo()


@x86_only
def test_importing_srvau_pins_torch_and_mkl_to_avx2_before_torch_loads():
    # On an AVX-512 machine torch would pick AVX512 without the pin (the bug this guards).
    assert _probe() == ["AVX2", "AVX2"]


@x86_only
def test_a_kernel_set_in_the_environment_wins_over_the_pin():
    assert _probe(ATEN_CPU_CAPABILITY="default", MKL_CBWR="AUTO") == ["DEFAULT", "AUTO"]


@x86_only
def test_native_leaves_the_choice_to_the_libraries():
    capability, mkl = _probe(SRVAU_CPU_KERNELS="native")
    assert mkl == "None" and capability != "DEFAULT"


@x86_only
def test_mkl_and_onednn_run_their_avx2_code_under_the_pins():
    # Reads what the libraries dispatch to, not the variables: a pin set after torch loaded, or dropped
    # (oneDNN's was missing at first), shows here on an AVX-512 machine.
    mkl, onednn = _libraries()
    # MKL keeps its ISA branches (AVX2, ...) for Intel CPUs: on another vendor's it runs the AVX2 pin as
    # AUTO, which still fixes cache sizes, reductions and scheduling (the same numbers run to run on that
    # machine) but trains other weights than an Intel CPU does (docs/pitfalls.md). Unpinned it says OFF.
    assert mkl == ({"AVX2"} if _intel() else {"AUTO"})
    assert onednn == {"Intel AVX2"}


@x86_only
@pytest.mark.skipif(not _has_avx512(), reason="without AVX-512 the libraries' own choice is AVX2 already")
def test_without_the_pins_this_machine_runs_other_kernels():
    """The premise: here, unpinned MKL and oneDNN take other code paths than the pinned ones."""
    mkl, onednn = _libraries(SRVAU_CPU_KERNELS="native")
    assert mkl == {"OFF"}
    assert onednn != {"Intel AVX2"}


@x86_only
def test_the_pinned_kernels_are_what_this_process_runs():
    """The test process imports srvau before torch (conftest), so its numbers are the pinned ones too."""
    import torch

    assert torch.backends.cpu.get_cpu_capability() == os.environ["ATEN_CPU_CAPABILITY"].upper()


def test_the_tag_names_the_machine_and_the_pins():
    from srvau.numerics import cpu_kernels

    tag = cpu_kernels()
    assert tag.startswith(f"{platform.machine()} cpus={os.cpu_count()} ")
    for name in CPU_KERNEL_PINS:
        assert f"{name}={os.environ.get(name, 'unset')}" in tag


def test_the_tag_records_a_thread_count_set_for_the_run(monkeypatch):
    """One thread trains other weights than two (docs/pitfalls.md), so a run's tag must say so."""
    from srvau.numerics import cpu_kernels

    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    tag = cpu_kernels()
    assert "OMP_NUM_THREADS=1" in tag and "MKL_NUM_THREADS=unset" in tag
