"""Device and precision, decided once per run: where tensors live, whether bf16 autocast and CUDA graphs apply,
and on the CPU how many threads torch uses.

CPU threads (bench/threads.md): torch's default is one thread per core, and on a machine where other work
holds the cores its threads wait on each other at every parallel region; there one thread trained 2-5 times
faster than two, while on an idle 2-core machine two were about 1.4 times faster than one. The thread count
also changes the float rounding of what is learnt, so it must not follow the load. On the CPU `select` sets
it from $SIBEATGAN_TORCH_THREADS: unset, 1 (the default); a positive integer: that many; `torch`: torch's own
default (one per core, or OMP_NUM_THREADS) left as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch

from sibeatgan.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """The resolved device; `amp` (bf16 autocast) and `cuda_graph` are only ever true on CUDA."""

    device: torch.device
    amp: bool = False
    cuda_graph: bool = False

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self, cache: bool = True) -> contextlib.AbstractContextManager:
        """bf16 autocast when amp is on, otherwise a no-op context; `cache=False` inside CUDA graph capture."""
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, cache_enabled=cache)
        return contextlib.nullcontext()

    def describe(self) -> dict[str, object]:
        name = torch.cuda.get_device_name(self.device) if self.is_cuda else "cpu"
        return {"device": str(self.device), "name": name, "amp": self.amp, "cuda_graph": self.cuda_graph}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' or 'cuda:N' must exist (it is an error otherwise)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name!r} was asked for but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device: {name!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":
        raise ConfigError(f"device: {name!r} is not supported (use auto, cpu, cuda or cuda:N)")
    return dev


THREADS_ENV = "SIBEATGAN_TORCH_THREADS"
DEFAULT_CPU_THREADS = 1


def cpu_threads(setting: str | None) -> int | None:
    """torch's CPU thread count for `setting` ($SIBEATGAN_TORCH_THREADS): unset or empty, DEFAULT_CPU_THREADS;
    a positive integer, that; `torch`, None (torch's own count left as it is)."""
    value = (setting or "").strip().lower()
    if not value:
        return DEFAULT_CPU_THREADS
    if value == "torch":
        return None
    n = int(value) if value.isdigit() else 0
    if n < 1:
        raise ConfigError(f"{THREADS_ENV}: {setting!r} is not a positive integer or torch")
    return n


def set_cpu_threads() -> int:
    """Set torch's CPU thread count as $SIBEATGAN_TORCH_THREADS says (`cpu_threads`); returns the count in use."""
    n = cpu_threads(os.environ.get(THREADS_ENV))
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)
        log.info("torch uses %d CPU thread(s) (%s=%s; `torch` for one per core)", n, THREADS_ENV, os.environ.get(THREADS_ENV, ""))
    return torch.get_num_threads()


def select(device: str = "auto", amp: bool = False, cuda_graph: bool = False) -> Runtime:
    """Resolve the device and the precision switches once; on the CPU amp and graphs are turned off (logged), and
    torch's thread count is set (`set_cpu_threads`)."""
    dev = resolve_device(device)
    if dev.type != "cuda":
        if amp:
            log.info("amp (bf16 autocast) is for CUDA only; running in float32 on %s", dev)
        set_cpu_threads()
        return Runtime(dev, False, False)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    return Runtime(dev, bool(amp), bool(cuda_graph))
