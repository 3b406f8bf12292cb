"""Device and precision, decided once per run: where tensors live, whether bf16 autocast and CUDA graphs apply."""

from __future__ import annotations

import contextlib
import logging
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


def select(device: str = "auto", amp: bool = False, cuda_graph: bool = False) -> Runtime:
    """Resolve the device and the precision switches once; on the CPU amp and graphs are turned off (logged)."""
    dev = resolve_device(device)
    if dev.type != "cuda":
        if amp:
            log.info("amp (bf16 autocast) is for CUDA only; running in float32 on %s", dev)
        return Runtime(dev, False, False)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    return Runtime(dev, bool(amp), bool(cuda_graph))
