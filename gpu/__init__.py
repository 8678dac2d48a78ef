"""Running checked graphs on a GPU (PyCUDA) or on the CPU, in binary32, with audits the kernel
checks (`gpu/runtime.py`, `gpu/audit.py`). Importing this package needs no CUDA: without a
device, `cuda_status()` says why and `CudaRunner` raises `NoDeviceError`."""

from gpu.runtime import (
    SUPPORTED,
    CpuRunner,
    CudaRunner,
    NoDeviceError,
    UnsupportedGraphError,
    cuda_status,
    native_sources,
    plan,
    runner,
    sources_sha256,
)

__all__ = ["SUPPORTED", "CpuRunner", "CudaRunner", "NoDeviceError", "UnsupportedGraphError",
           "cuda_status", "native_sources", "plan", "runner", "sources_sha256"]
