"""The CPU kernels every srvau process pins (srvau/numerics.py): without the pin, an AVX-512 machine and
an AVX2 one train the demo's seed into other models."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

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


def _probe(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {*CPU_KERNEL_PINS, OPT_OUT}}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True, timeout=120)
    return out.stdout.split()


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
def test_the_pinned_kernels_are_what_this_process_runs():
    """The test process imports srvau before torch (conftest), so its numbers are the pinned ones too."""
    import torch

    assert torch.backends.cpu.get_cpu_capability() == os.environ["ATEN_CPU_CAPABILITY"].upper()


def test_the_tag_names_the_machine_and_the_pins():
    from srvau.numerics import cpu_kernels

    tag = cpu_kernels()
    assert tag.startswith(platform.machine())
    for name in CPU_KERNEL_PINS:
        assert f"{name}=" in tag
