"""srvau: SRVAU-R1 as an MLOps pipeline (docs/architecture.md)."""

from srvau.numerics import pin_cpu_kernels

# Before any stage imports torch: the same float kernels on every x86-64 machine (srvau/numerics.py).
pin_cpu_kernels()
