"""K independent copies of a model as one module: grouped convolutions over channel-concatenated members.

A member's tensors are its channels: (b, K * C, L), member k in channels [k C, (k+1) C). Every
convolution gets groups=K, so member k only ever sees its own channels; BatchNorm1d over K * C
channels normalises each member with its own batch statistics and keeps its own running ones;
a Linear becomes a kernel-1 grouped Conv1d on (b, K * in, 1). Grouped convolutions run as one
kernel per layer for all members (cuDNN / oneDNN), with no vmap tracing, no in-place-buffer
restrictions under vmap for BatchNorm, and the same module tree and parameter names as the
single model, so state dicts stack and unstack by concatenation along dim 0.

`MultiAdam` is Adam over such stacked parameters with one learning rate per member and a mask of
members that may move (pruned or diverged members stay frozen, their NaNs never reach the others).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


IMPLS = ("auto", "grouped", "loop")


class _Members:
    """Mixin of the K-member convolutions: one grouped kernel (impl "grouped"), or one ordinary convolution per
    member on its slice of channels and weights (impl "loop"); "auto" loops on the CPU and groups elsewhere.

    Measured on 2 CPU cores (bench/batched.md), oneDNN's grouped 1-D convolutions run 1-5x slower than the same
    convolutions one member at a time, so the CPU loops; on CUDA one grouped kernel replaces K small launches."""

    members: int
    impl: str = "auto"

    def _loop(self, x: torch.Tensor) -> bool:
        if self.members == 1:  # one member: the grouped module is the ordinary one
            return False
        return self.impl == "loop" or (self.impl == "auto" and x.device.type == "cpu")


class MemberConv1d(_Members, nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._loop(x):
            return super().forward(x)
        k, g = self.members, self.groups // self.members
        bias = self.bias.chunk(k) if self.bias is not None else [None] * k
        return torch.cat([F.conv1d(xi, wi, bi, self.stride, self.padding, self.dilation, g)
                          for xi, wi, bi in zip(x.chunk(k, 1), self.weight.chunk(k), bias)], 1)


class MemberConvTranspose1d(_Members, nn.ConvTranspose1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._loop(x):
            return super().forward(x)
        k, g = self.members, self.groups // self.members
        bias = self.bias.chunk(k) if self.bias is not None else [None] * k
        return torch.cat([F.conv_transpose1d(xi, wi, bi, self.stride, self.padding, self.output_padding, g, self.dilation)
                          for xi, wi, bi in zip(x.chunk(k, 1), self.weight.chunk(k), bias)], 1)


def _grouped_leaf(module: nn.Module, k: int) -> nn.Module | None:
    """The K-member counterpart of one leaf module, or None when it is elementwise (kept as is)."""
    if isinstance(module, nn.ConvTranspose1d):
        new = MemberConvTranspose1d(k * module.in_channels, k * module.out_channels, module.kernel_size, module.stride, module.padding,
                                    module.output_padding, groups=k * module.groups, bias=module.bias is not None, dilation=module.dilation)
    elif isinstance(module, nn.Conv1d):
        new = MemberConv1d(k * module.in_channels, k * module.out_channels, module.kernel_size, module.stride, module.padding,
                           module.dilation, groups=k * module.groups, bias=module.bias is not None)
    elif isinstance(module, nn.Linear):
        new = MemberConv1d(k * module.in_features, k * module.out_features, 1, groups=k, bias=module.bias is not None)
    elif isinstance(module, nn.BatchNorm1d):
        return nn.BatchNorm1d(k * module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
    elif len(list(module.parameters(recurse=False))) or len(list(module.buffers(recurse=False))):
        raise TypeError(f"no grouped version of {type(module).__name__}")
    else:
        return None
    new.members = k
    return new


def set_impl(module: nn.Module, impl: str) -> None:
    """Choose how every K-member convolution in `module` runs: "auto", "grouped" or "loop"."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, not {impl!r}")
    for m in module.modules():
        if isinstance(m, _Members):
            m.impl = impl


def grouped(template: nn.Module, k: int) -> nn.Module:
    """A deep copy of `template` with every conv, linear and batch-norm layer widened to K grouped members.

    The copy keeps the template's class (so its forward and hparams) and its parameter names; load the
    members' weights with `stack_states`."""
    out = copy.deepcopy(template)

    def convert(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if len(list(child.children())):
                convert(child)
                continue
            new = _grouped_leaf(child, k)
            if new is not None:
                setattr(parent, name, new.to(next(child.parameters()).device))

    convert(out)
    out.members = k
    return out


def stack_states(states: list[dict[str, torch.Tensor]], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The grouped state whose member k is states[k]; `target` is the grouped module's own state (for shapes).

    0-d buffers (BatchNorm's num_batches_tracked) are shared by all members and taken from the first."""
    out = {}
    for key, ref in target.items():
        parts = [s[key] for s in states]
        out[key] = parts[0].clone() if ref.dim() == 0 else torch.cat([p.reshape(-1) for p in parts]).reshape(ref.shape)
    return out


def member_state(state: dict[str, torch.Tensor], template: dict[str, torch.Tensor], k: int, members: int) -> dict[str, torch.Tensor]:
    """Member k of a grouped state, in the single model's shapes (`template` is a single model's state)."""
    out = {}
    for key, ref in template.items():
        value = state[key]
        out[key] = value.clone() if value.dim() == 0 else value.reshape(members, -1)[k].reshape(ref.shape).clone()
    return out


def to_members(x: torch.Tensor, k: int) -> torch.Tensor:
    """(b, K * C, ...) -> (K, b, C, ...): the member axis first, for per-member losses."""
    return x.reshape(x.shape[0], k, x.shape[1] // k, *x.shape[2:]).transpose(0, 1)


def from_members(x: torch.Tensor) -> torch.Tensor:
    """(K, b, C, ...) -> (b, K * C, ...): the members' channels side by side, for the grouped modules."""
    k, b = x.shape[0], x.shape[1]
    return x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])


class MultiAdam:
    """Adam (torch.optim.Adam's formula, no weight decay) over grouped parameters, one lr per member.

    Gradients are gathered member-major into one (K, P) buffer, so the update is a dozen whole-buffer kernels with
    (K, 1) per-member factors, whatever the number of layers, and is written back with one multi-tensor subtraction.
    lr: a (K,) device tensor, changed in place between steps. step(active) moves only the members where the (K,)
    bool `active` holds; the others keep their weights, moments and step counts exactly. Every value lives on
    the device and no step reads it back, so the step can be captured in a CUDA graph."""

    def __init__(self, params: Iterable[torch.Tensor], lr: torch.Tensor, betas: tuple[float, float] = (0.5, 0.999), eps: float = 1e-8):
        self.params = [p for p in params]
        self.lr = lr
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        k = self.members = lr.shape[0]
        if any(p.numel() % k for p in self.params):
            raise ValueError(f"every parameter must hold {k} members' values")
        self.sizes = [p.numel() // k for p in self.params]
        total = sum(self.sizes)
        self.exp_avg = torch.zeros(k, total, dtype=torch.float32, device=lr.device)
        self.exp_avg_sq = torch.zeros_like(self.exp_avg)
        self.steps = torch.zeros(k, dtype=torch.float32, device=lr.device)  # per member: a frozen member's count stays put

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        k = self.members
        grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(k, -1).float() for p in self.params], 1)
        self.steps.add_(active.to(self.steps.dtype))
        steps = self.steps.clamp(min=1.0)
        on = active.reshape(k, 1)
        step_size = (self.lr / (1 - self.beta1**steps)).reshape(k, 1)
        bc2_sqrt = (1 - self.beta2**steps).sqrt().reshape(k, 1)
        m_new = torch.lerp(self.exp_avg, grad, 1 - self.beta1)
        v_new = self.exp_avg_sq * self.beta2 + (1 - self.beta2) * grad * grad
        update = torch.where(on, step_size * m_new / (v_new.sqrt() / bc2_sqrt + self.eps), 0.0)
        self.exp_avg.copy_(torch.where(on, m_new, self.exp_avg))
        self.exp_avg_sq.copy_(torch.where(on, v_new, self.exp_avg_sq))
        torch._foreach_sub_([p.view(k, -1) for p in self.params], list(update.split(self.sizes, 1)))

    def state_dict(self) -> dict[str, object]:
        """Copies on the CPU of the moments, step counts and learning rates."""
        def copy(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to("cpu", copy=True)

        return {"exp_avg": copy(self.exp_avg), "exp_avg_sq": copy(self.exp_avg_sq), "steps": copy(self.steps),
                "lr": copy(self.lr), "betas": (self.beta1, self.beta2), "eps": self.eps}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, object]) -> None:
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
        self.steps.copy_(state["steps"])
        self.lr.copy_(state["lr"])


def bn_running(module: nn.Module) -> list[torch.Tensor]:
    """Running mean and variance of every BatchNorm layer (K * C channels each), to restore frozen members."""
    out = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            out += [m.running_mean, m.running_var]
    return out


@torch.no_grad()
def per_beat(module: nn.Module, members: int, x: torch.Tensor | np.ndarray, batch_size: int, device: torch.device | str,
             fn: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """(K, n): fn of each batch of x (on `device`, in batches of `batch_size`) with `module` in eval mode, put back after."""
    x = torch.as_tensor(x)
    out = torch.empty(members, x.shape[0], dtype=torch.float32, device=device)
    was = module.training
    module.eval()
    try:
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(device, torch.float32)
            out[:, start : start + xb.shape[0]] = fn(xb)
    finally:
        module.train(was)
    return out.cpu().numpy()


def reconstruction_errors(G: nn.Module, members: int, x: torch.Tensor | np.ndarray, batch_size: int, device: torch.device | str) -> np.ndarray:
    """(K, n): each member of the grouped generator G's mean squared reconstruction error of each beat of x (every
    member sees every beat)."""

    def rec_error(xb: torch.Tensor) -> torch.Tensor:
        rec = to_members(G(xb.repeat(1, members, 1)).reconstruction.float(), members)
        return (rec - xb).pow(2).flatten(2).mean(-1)

    return per_beat(G, members, x, batch_size, device, rec_error)
