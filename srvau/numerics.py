"""CPU kernels pinned to one instruction set, so that a run gives the same numbers on any Intel x86-64
machine with AVX2 (checked on one Intel machine: pinned runs repeat to the byte there; a second Intel CPU
is not checked yet). Not across vendors: on an AMD CPU a pinned run trains other weights (below).

PyTorch, MKL and oneDNN pick their float kernels by the CPU they find: AVX-512 on one machine, AVX2
on the next. The kernels round differently, and the demo's training is chaotic enough that the
difference of the first three reading-drill steps ends in another base model, and after SFT and GRPO
in other test answers (docs/pitfalls.md, "Training runs"). Each library reads an environment variable
that fixes its code path: ``ATEN_CPU_CAPABILITY`` for PyTorch's own kernels, ``MKL_CBWR`` (MKL's
conditional numerical reproducibility) for its matrix products and ``ONEDNN_MAX_CPU_ISA`` for oneDNN's.
:func:`pin_cpu_kernels` sets them to AVX2, which every x86-64 CPU of the last decade runs, before the
libraries read them: every stage process imports ``srvau`` before torch. A value already in the
environment wins; ``SRVAU_CPU_KERNELS=native`` leaves the libraries to choose by the CPU (5-40 %
faster on an AVX-512 machine, depending on how it is measured; machine-dependent numbers:
bench/cpu_kernels.py, docs/demo-results.md). Other architectures (aarch64) are left alone; CUDA kernels
are not affected. The thread count is not pinned: 2 to 8 threads gave the same weights, one thread
other ones (MKL's one-thread path; docs/pitfalls.md).

MKL keeps its instruction-set branches for Intel CPUs. On an AMD one (seen on an EPYC, Zen 5) it runs
``MKL_CBWR=AVX2`` as ``AUTO``: reductions, cache sizes and scheduling stay fixed, so runs repeat to the
byte on that machine, but its matrix products round otherwise and the demo's seed trains other weights
than on an Intel CPU. MKL's one branch for every vendor, ``COMPATIBLE`` (SSE2), made the reading drills
1.7x slower there (``bench/cpu_kernels.py``), and oneDNN's and PyTorch's AVX2 kernels were never
compared across vendors, so it is not the pin.
"""

from __future__ import annotations

import os
import platform

# The pins: the variable each library reads, and the AVX2 value it takes.
# oneDNN's too: it runs part of SFT's float32 work (not the text-only drills'), so without its pin 20
# SFT steps from the same base gave other weights; and with PyTorch pinned alone its bfloat16 matmuls
# took AVX-512 packing and failed ("pack_vnni2 is only supported when avx512 is supported").
CPU_KERNEL_PINS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
OPT_OUT = "SRVAU_CPU_KERNELS"  # "native": no pins


def _x86() -> bool:
    return platform.machine().lower() in {"x86_64", "amd64"}


def pin_cpu_kernels() -> None:
    """Set :data:`CPU_KERNEL_PINS` where the environment does not set them already (x86-64 only, and not
    with ``SRVAU_CPU_KERNELS=native``)."""
    if not _x86() or os.environ.get(OPT_OUT, "").lower() == "native":
        return
    for name, value in CPU_KERNEL_PINS.items():
        os.environ.setdefault(name, value)


# The thread settings the tag records: one thread trains other weights than two or more.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cpu_kernels() -> str:
    """What a run's ``srvau.cpu_kernels`` tag says: the machine, its CPU count, the kernel variables in
    force and the thread variables (unset: the libraries' default, one thread per core)."""
    pins = " ".join(f"{name}={os.environ.get(name, 'unset')}" for name in (*CPU_KERNEL_PINS, *THREAD_VARIABLES))
    native = f" {OPT_OUT}=native" if os.environ.get(OPT_OUT, "").lower() == "native" else ""
    return f"{platform.machine()} cpus={os.cpu_count()} {pins}{native}"
