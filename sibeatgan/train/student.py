"""The self-distilled, contrastive student's step: one D step, then one G step on L_G + alpha L_KD + beta NT-Xent.

The teacher G is frozen (eval mode, no parameter requires grad, its forward under no_grad). As in the
teacher's trainer, the whole step is one callable, run eagerly or captured once as a CUDA graph; the
loss weights and temperatures live in device buffers (`set_hparams` changes them in place), the two
augmented views are drawn from a device torch.Generator, and losses are summed on the device and read
once per epoch. Only torch and numpy are needed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from sibeatgan.augment import AugmentConfig, augment
from sibeatgan.device import Runtime
from sibeatgan.evaluate import score as reconstruction_score
from sibeatgan.losses import DiscriminatorLoss, StudentLoss, StudentLossOutput
from sibeatgan.models import Discriminator, Generator
from sibeatgan.models.student import ProjectionHead, encoder_stages
from sibeatgan.train.checkpoint import cpu_state
from sibeatgan.train.teacher import WARMUP_STEPS, CudaGraphs

LOSS_NAMES = ("loss_d", "loss", "loss_g", "loss_rec", "loss_fm", "loss_kd", "loss_con")
INITS = ("teacher", "scratch")


class GeneratorCudaGraphs(CudaGraphs):
    """CudaGraphs that also registers the step's own torch.Generators, so each replay draws fresh augmentations."""

    def __init__(self, generators: list[torch.Generator]) -> None:
        super().__init__()
        self.generators = generators

    def capture(self, fn: Callable[[], None]) -> None:
        register = getattr(self.graph, "register_generator_state", None)
        if register is None:
            raise RuntimeError("this torch cannot capture steps that draw from their own torch.Generator")
        for gen in self.generators:
            register(gen)
        super().capture(fn)


@contextlib.contextmanager
def batch_stats_only(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise with batch statistics but leave their running statistics alone
    (the augmented views must not shift the statistics used to score clean beats)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradient for every parameter: the frozen teacher."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def adjust_bn_momentum(module: nn.Module) -> None:
    """Two reference updates of the running statistics per step, folded into one (as the teacher's trainer does)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d) and m.momentum is not None:
            m.momentum = 1.0 - (1.0 - m.momentum) ** 2


class StudentTrainer:
    """Student G (+ its own D and projection head) distilled from a frozen teacher G; `train_epoch` runs one epoch."""

    members = 1

    def __init__(
        self,
        teacher: Generator,
        runtime: Runtime,
        *,
        ngf: int | None = None,
        ndf: int = 32,
        init: str = "teacher",
        lambda_fm: float = 1.0,
        alpha: float = 1.0,
        beta: float = 0.1,
        T: float = 4.0,
        tau: float = 0.2,
        kd: str = "latent",
        kd_direction: str = "seed",
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        batch_size: int = 64,
        augment_config: AugmentConfig | None = None,
        proj_hidden: int = 128,
        proj_out: int = 64,
        seed: int = 0,
        graphs: Any = None,
    ):
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, not {init!r}")
        self.rt = runtime
        dev = runtime.device
        nc, length, nz = teacher.nc, teacher.length, teacher.nz
        ngf = teacher.ngf if ngf is None else int(ngf)
        if init == "teacher" and ngf != teacher.ngf:
            raise ValueError(f"init='teacher' needs the teacher's width (ngf {teacher.ngf}), got ngf {ngf}; use init='scratch'")
        torch.manual_seed(seed)
        if runtime.is_cuda:
            torch.cuda.manual_seed_all(seed)
        self.teacher = freeze(teacher.to(dev))
        self.G = Generator(nc, length, nz, ngf).to(dev).train()
        if init == "teacher":
            self.G.load_state_dict(teacher.state_dict())
        adjust_bn_momentum(self.G)
        self.D = Discriminator(nc, length, ndf).to(dev).train()
        self.head = ProjectionHead(nz, proj_hidden, proj_out).to(dev).train()
        self.init, self.batch_size, self.kd = init, int(batch_size), kd
        self.augment_config = augment_config or AugmentConfig()
        self.d_loss = DiscriminatorLoss()
        self.loss = StudentLoss(lambda_fm, alpha, beta, T, tau, kd=kd, direction=kd_direction).to(dev)
        self.aug_gen = torch.Generator(device=dev)
        self.aug_gen.manual_seed(seed + 1)
        self.perm_gen = torch.Generator(device=dev)
        self.perm_gen.manual_seed(seed)
        if graphs is None and runtime.cuda_graph:
            graphs = GeneratorCudaGraphs([self.aug_gen])
        self.graphs = graphs
        self._capturable = runtime.is_cuda and isinstance(self.graphs, CudaGraphs)
        self._fused = runtime.is_cuda
        opt = dict(lr=lr, betas=betas, capturable=self._capturable, fused=self._fused or None)
        self.g_params = list(self.G.parameters()) + list(self.head.parameters())
        self.opt_g = torch.optim.Adam(self.g_params, **opt)
        self.opt_d = torch.optim.Adam(self.D.parameters(), **opt)
        self.idx = torch.zeros(self.batch_size, dtype=torch.long, device=dev)
        self.sums = torch.zeros(len(LOSS_NAMES), dtype=torch.float32, device=dev)
        self.train_x: torch.Tensor | None = None
        self._warm = 0
        self._captured = False

    @property
    def loss_names(self) -> tuple[str, ...]:
        return LOSS_NAMES

    def set_hparams(self, **values: float | torch.Tensor) -> None:
        """Change lambda_fm, alpha, beta, T or tau in place (captured graphs see the new values); lr too."""
        lr = values.pop("lr", None)
        if lr is not None:
            for opt in (self.opt_g, self.opt_d):
                for group in opt.param_groups:
                    if isinstance(group["lr"], torch.Tensor):
                        group["lr"].fill_(float(lr))
                    else:
                        group["lr"] = float(lr)
        self.loss.set(**values)

    def set_train_data(self, beats: torch.Tensor) -> None:
        """Hold the training beats (n, nc, length) on the device for the rest of the run."""
        if beats.shape[0] < self.batch_size:
            raise ValueError(f"the training set has {beats.shape[0]} beats, fewer than one batch of {self.batch_size}")
        if not self._captured:
            self.train_x = beats.to(self.rt.device, torch.float32).contiguous()
        elif beats.shape == self.train_x.shape:
            self.train_x.copy_(beats)
        else:
            raise RuntimeError(f"training data of shape {tuple(beats.shape)} after capture with {tuple(self.train_x.shape)}")

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """Two augmented views of each beat, stacked: (2b, nc, length)."""
        return torch.cat([augment(x, self.augment_config, self.aug_gen), augment(x, self.augment_config, self.aug_gen)])

    def forward_student(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]:
        """(reconstruction, latent code, encoder stage maps or None) of the student on x."""
        if self.kd == "attention":
            code, maps = encoder_stages(self.G.encoder, x)
            return self.G.decoder(code), code, maps
        rec, code = self.G(x)
        return rec, code, None

    def generator_terms(self, x: torch.Tensor, student: tuple | None = None) -> StudentLossOutput:
        """Every term of the student's objective on the batch x, against the current D; differentiable in G and the head.

        `student` is forward_student(x) when the caller already has it (the step reuses the D step's forward)."""
        rec, code_s, maps_s = student if student is not None else self.forward_student(x)
        with torch.no_grad():
            if self.kd == "attention":
                code_t, maps_t = encoder_stages(self.teacher.encoder, x)
            else:
                code_t, maps_t = self.teacher.encoder(x), None
            features_real = self.D(x).features
        features_fake = self.D(rec).features
        with batch_stats_only(self.G.encoder):
            z = self.G.encoder(self.views(x))
        p1, p2 = self.head(z).chunk(2)
        return self.loss(x, rec, features_real, features_fake, code_s.flatten(1), code_t.flatten(1), p1, p2, maps_s, maps_t)

    def step(self) -> None:
        """One D step and one G step on train_x[idx]; the same callable runs eagerly and under capture."""
        x = self.train_x.index_select(0, self.idx)
        cache = not self._capturable
        with self.rt.autocast(cache):
            student = self.forward_student(x)
            err_d = self.d_loss(self.D(x).logit, self.D(student[0].detach()).logit)
        self.opt_d.zero_grad(set_to_none=True)
        err_d.backward()
        self.opt_d.step()
        with self.rt.autocast(cache):
            terms = self.generator_terms(x, student)
        self.opt_g.zero_grad(set_to_none=True)
        torch.autograd.backward(terms.total, inputs=self.g_params)
        self.opt_g.step()
        with torch.no_grad():
            self.sums.add_(torch.stack([err_d.detach(), *(t.detach() for t in terms)]))

    def _run_step(self) -> None:
        if self.graphs is None:
            self.step()
        elif self._captured:
            self.graphs.replay()
        elif self._warm < WARMUP_STEPS:
            self.graphs.warmup(self.step)
            self._warm += 1
        else:
            self.graphs.capture(self.step)
            self._captured = True
            self.graphs.replay()

    def train_epoch(self, on_step: Callable[[int], None] | None = None) -> dict[str, float]:
        """One pass over a fresh permutation (last partial batch dropped); the device is read once, at the end.

        on_step(i) is called after each step (for progress bars; reading device values there would stall the step)."""
        if self.train_x is None:
            raise RuntimeError("set_train_data first")
        n = self.train_x.shape[0]
        steps = n // self.batch_size
        for m in (self.G, self.D, self.head):
            m.train()
        self.teacher.eval()
        self.sums.zero_()
        start = time.perf_counter()
        perm = torch.randperm(n, generator=self.perm_gen, device=self.rt.device)
        for i in range(steps):
            self.idx.copy_(perm[i * self.batch_size : (i + 1) * self.batch_size])
            self._run_step()
            if on_step is not None:
                on_step(i)
        sums = self.sums.tolist()
        seconds = time.perf_counter() - start
        out: dict[str, float] = {name: value / steps for name, value in zip(LOSS_NAMES, sums)}
        out.update(steps=steps, beats=steps * self.batch_size, train_seconds=seconds, beats_per_s=steps * self.batch_size / seconds)
        return out

    def score(self, x: torch.Tensor | np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Reconstruction error of each beat, (1, n): the anomaly score, as for the teacher."""
        return reconstruction_score(self.G, x, batch_size, self.rt.device, self.rt.amp)[None, :]

    @torch.no_grad()
    def discrepancy(self, x: torch.Tensor | np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Mean squared teacher-student latent distance of each beat, (1, n): an alternative anomaly score (as in STPM)."""
        x = torch.as_tensor(x)
        out = torch.empty(x.shape[0], dtype=torch.float32, device=self.rt.device)
        was = self.G.training
        self.G.eval()
        try:
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size].to(self.rt.device, torch.float32)
                diff = self.G.encoder(xb).float() - self.teacher.encoder(xb).float()
                out[start : start + xb.shape[0]] = diff.pow(2).flatten(1).mean(1)
        finally:
            self.G.train(was)
        return out.cpu().numpy()[None, :]

    def state_dict(self) -> dict[str, Any]:
        """Student, D, head, loss weights, optimizers and RNG states (the frozen teacher is an input, not state)."""
        state: dict[str, Any] = {
            "G": cpu_state(self.G), "D": cpu_state(self.D), "head": cpu_state(self.head), "loss": cpu_state(self.loss),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "perm_rng": self.perm_gen.get_state(), "aug_rng": self.aug_gen.get_state(), "torch_rng": torch.get_rng_state(),
        }
        if self.rt.is_cuda:
            state["cuda_rng"] = torch.cuda.get_rng_state(self.rt.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._captured:
            raise RuntimeError("load_state_dict after CUDA graph capture would detach the graph from the new state")
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.head.load_state_dict(state["head"])
        self.loss.load_state_dict(state["loss"])
        for opt, key in ((self.opt_g, "opt_g"), (self.opt_d, "opt_d")):
            opt.load_state_dict(state[key])
            for group in opt.param_groups:
                group["capturable"], group["fused"] = self._capturable, self._fused or None
            for p, s in opt.state.items():
                if "step" in s:
                    s["step"] = s["step"].to(p.device if self._capturable or self._fused else "cpu", torch.float32)
        self.perm_gen.set_state(state["perm_rng"])
        self.aug_gen.set_state(state["aug_rng"])
        torch.set_rng_state(state["torch_rng"])
        if self.rt.is_cuda and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.rt.device)
