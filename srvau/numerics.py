"""CPU kernels pinned to one instruction set, so a run gives the same numbers on any x86-64 machine.

PyTorch and MKL pick their float kernels by the CPU they find: AVX-512 (with AMX) on one machine, AVX2
on the next. The kernels round differently, and the tiny demo model's training is chaotic enough that
a last-bit difference in the reading drills' first 60 steps ends in another base model, and after SFT
and GRPO in other test answers (docs/reproducibility.md). Both libraries read an environment variable
that fixes the code path: ``ATEN_CPU_CAPABILITY`` for PyTorch's own kernels and ``MKL_CBWR`` (MKL's
conditional numerical reproducibility) for its matrix products. :func:`pin_cpu_kernels` sets them to
AVX2, which every x86-64 CPU of the last decade runs, before torch or MKL reads them (``srvau`` is
imported first by every stage process). A value already in the environment wins, so
``ATEN_CPU_CAPABILITY=default MKL_CBWR=AUTO`` (or ``avx512``) buys the native kernels back at the price
of machine-dependent numbers. Other architectures (aarch64) are left alone.
"""

from __future__ import annotations

import os
import platform

# The pins: the variable each library reads, and the AVX2 value it takes.
CPU_KERNEL_PINS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}


def pin_cpu_kernels() -> None:
    """Set :data:`CPU_KERNEL_PINS` where the environment does not set them already (x86-64 only)."""
    if platform.machine().lower() not in {"x86_64", "amd64"}:
        return
    for name, value in CPU_KERNEL_PINS.items():
        os.environ.setdefault(name, value)


def cpu_kernels() -> str:
    """What a run's ``srvau.cpu_kernels`` tag says: the machine and the pins in force."""
    pins = " ".join(f"{name}={os.environ.get(name, 'unset')}" for name in CPU_KERNEL_PINS)
    return f"{platform.machine()} {pins}"
