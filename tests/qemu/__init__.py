"""Run otel-oom's tests inside real Debian kernels booted under QEMU (see harness.py and docs/kernel-matrix.md)."""
from .harness import (  # noqa: F401
    CACHE_ENV, DEFAULT_CACHE, KERNELS, GuestResult, GuestSetupError, GuestTimeout, KernelInfo, PrepareError,
    QemuError, available_kernels, boot, boot_many, guest_env, initramfs, kernel_info, prepare, qemu_usable,
)
