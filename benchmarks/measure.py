"""Measuring helpers shared by the benchmark scripts: memory meters, matmul peak, run facts."""
from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import time

import torch

from fastdm.devices import synchronize

# the repository root: where the scripts' child processes run (python -m benchmarks.X)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_bytes() -> int:
    """The process's current resident set size."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM; Linux >= 4.0). False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def proc_kb(path: str, key: str) -> int | None:
    """A 'Key:   N kB' field of a /proc file in bytes (None where it cannot be read)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak RSS since the last reset (or since the process started)."""
    peak = proc_kb("/proc/self/status", "VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def host_available() -> int | None:
    """Host memory available to new allocations (Linux MemAvailable)."""
    return proc_kb("/proc/meminfo", "MemAvailable")


class CudaMemory:
    """A side's CUDA memory: allocator counts are exact and resettable, so they are taken in
    the timing process (CPU memory is probed in a fresh process instead: benchmarks.compare)."""

    kind = "cuda_max_memory_allocated"

    def __init__(self, device: torch.device):
        self.device = device

    def current(self) -> int:
        synchronize(self.device)
        return torch.cuda.memory_allocated(self.device)

    def start(self) -> None:
        synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)


def matmul_tflops(device: torch.device, dtype=torch.float32, tf32: bool = False,
                  seconds: float = 0.5) -> float:
    """Achieved TFLOP/s of a large square matmul: the device's practical peak for ``dtype``."""
    n = 8192 if device.type == "cuda" else 1536
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        for _ in range(2):
            a @ b
        synchronize(device)
        reps, t0 = 0, time.perf_counter()
        while True:
            for _ in range(4 if device.type == "cuda" else 1):
                a @ b
                reps += 1
            synchronize(device)
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                return 2.0 * n ** 3 * reps / elapsed / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def measured_peaks(device: torch.device) -> dict[str, float]:
    """fp32 peak everywhere; tf32 and bf16 peaks on CUDA."""
    peaks = {"fp32": matmul_tflops(device)}
    if device.type == "cuda":
        peaks["tf32"] = matmul_tflops(device, tf32=True)
        peaks["bf16"] = matmul_tflops(device, torch.bfloat16)
    return {k: round(v, 3) for k, v in peaks.items()}


def conv_precision(device: torch.device) -> str:
    """The precision fp32 convolutions actually run in (cuDNN uses TF32 when allowed)."""
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        major, _ = torch.cuda.get_device_capability(device)
        return "tf32" if major >= 8 else "fp32"
    return "fp32"


def commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev + ("-dirty" if dirty else "")) if rev else "unknown"


def run_facts(device: torch.device) -> dict:
    from fastdm.backend import triton_importable
    from fastdm.devices import device_name
    return {
        "date": datetime.date.today().isoformat(),
        "commit": commit(),
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_importable(),
        "python": platform.python_version(),
    }


def parse_backends(ap, text: str | None, device: torch.device) -> list[str]:
    """--backends for a kernel benchmark: torch and/or triton (default: both on CUDA, torch on
    the CPU); Triton off CUDA only in the interpreter (a smoke run, not a speed figure)."""
    default = "torch,triton" if device.type == "cuda" else "torch"
    backends = [b.strip() for b in (text or default).split(",") if b.strip()]
    if not backends or any(b not in ("torch", "triton") for b in backends):
        ap.error("--backends takes torch and/or triton")
    if "triton" in backends and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        ap.error("the triton backend needs --device cuda")
    return backends


def parse_list(ap, text: str, allowed, flag: str) -> list[str]:
    """A comma-separated choice list, each item one of ``allowed``."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or any(t not in allowed for t in items):
        ap.error(f"{flag} takes {' and/or '.join(allowed)}")
    return items


def best_time(fn, repeat: int) -> float:
    """Seconds of the fastest of ``repeat`` calls of ``fn`` after one untimed warm-up call (CPU
    work; CUDA callers synchronise inside ``fn``)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def save_json(report: dict, path: str | None) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
