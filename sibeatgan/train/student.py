"""The self-distilled, contrastive student's step: one D step, then one G step on L_G + alpha L_KD + beta NT-Xent.

The teacher G is frozen (eval mode, no parameter requires grad, its forward under no_grad). As in the
teacher's trainer, the whole step is one callable, run eagerly or captured once as a CUDA graph; the
loss weights and temperatures live in device buffers (`set_hparams` changes them in place), the two
augmented views are drawn from a device torch.Generator, and losses are summed on the device and read
once per epoch. Only torch and numpy are needed.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sibeatgan.augment import AugmentConfig, apply_drawn, augment, draw
from sibeatgan.device import Runtime
from sibeatgan.metrics import latent_gap
from sibeatgan.metrics import score as reconstruction_score
from sibeatgan.losses import DiscriminatorLoss, StudentLoss, StudentLossOutput, discriminator_loss_trailing
from sibeatgan.models import Discriminator, Generator
from sibeatgan.models.student import ProjectionHead, adjust_bn_momentum, batch_stats_only, encoder_stages, freeze
from sibeatgan.train.checkpoint import cpu_state
from sibeatgan.train.loop import CudaGraphs, GeneratorCudaGraphs, StepTrainer
from sibeatgan.train.teacher import restore_adam

log = logging.getLogger(__name__)

LOSS_NAMES = ("loss_d", "loss", "loss_g", "loss_rec", "loss_fm", "loss_kd", "loss_con")
INITS = ("teacher", "scratch")


class DistillTrainer(StepTrainer):
    """What the single and the batched student share: their loss terms, and a frozen teacher kept in eval mode."""

    loss_names = LOSS_NAMES

    def train_mode(self) -> None:
        for m in (self.G, self.D, self.head):
            m.train()
        self.teacher.eval()


class StudentTrainer(DistillTrainer):
    """Student G (+ its own D and projection head) distilled from a frozen teacher G; `fit` runs the epochs."""

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
        shift_negatives: bool = False,
    ):
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, not {init!r}")
        super().__init__(runtime, batch_size)
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
        self.init, self.kd = init, kd
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
        # the bet of bench/bet.md (CSI): shifted copies of each batch (sibeatgan.shifts) as extra NT-Xent negatives
        self.shift_negatives = bool(shift_negatives)
        if self.shift_negatives and self.graphs is not None:
            raise ValueError("shift_negatives draws shifted beats of data-dependent shapes; it runs eagerly only (graphs=None)")
        self._fused = runtime.is_cuda
        # on CUDA a tensor lr, so that set_hparams(lr=...) reaches a captured graph too
        lr_value = torch.tensor(float(lr), device=dev) if self._fused else float(lr)
        opt = dict(lr=lr_value, betas=betas, capturable=self._capturable, fused=self._fused or None)
        self.g_params = list(self.G.parameters()) + list(self.head.parameters())
        self.opt_g = torch.optim.Adam(self.g_params, **opt)
        self.opt_d = torch.optim.Adam(self.D.parameters(), **opt)

    def generator(self, k: int = 0) -> Generator:
        """The student generator (what the loop saves as the selected model)."""
        return self.G

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
        views = self.views(x)
        if self.shift_negatives:
            from sibeatgan.shifts import shift_batch

            views = torch.cat([views, shift_batch(x, self.aug_gen)])
        with batch_stats_only(self.G.encoder):
            z = self.G.encoder(views)
        p1, p2, *neg = self.head(z).split(x.shape[0])
        return self.loss(x, rec, features_real, features_fake, code_s.flatten(1), code_t.flatten(1), p1, p2, maps_s, maps_t,
                         neg[0] if neg else None)

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

    def score(self, x: torch.Tensor | np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Reconstruction error of each beat, (1, n): the anomaly score, as for the teacher."""
        return reconstruction_score(self.G, x, batch_size, self.rt.device, self.rt.amp)[None, :]

    def discrepancy(self, x: torch.Tensor | np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Mean squared teacher-student latent distance of each beat, (1, n): the discrepancy score (metrics.latent_gap)."""
        return latent_gap(self.G, self.teacher.encoder, x, batch_size, self.rt.device, self.rt.amp)[None, :]

    def state_dict(self) -> dict[str, Any]:
        """Student, D, head, loss weights, optimizers and RNG states (the frozen teacher is an input, not state)."""
        state: dict[str, Any] = {
            "G": cpu_state(self.G), "D": cpu_state(self.D), "head": cpu_state(self.head), "loss": cpu_state(self.loss),
            # copies: torch's optimizer state_dict holds the live moment tensors, which the next step would change
            "opt_g": copy.deepcopy(self.opt_g.state_dict()), "opt_d": copy.deepcopy(self.opt_d.state_dict()),
            "perm_rng": self.perm_gen.get_state(), "aug_rng": self.aug_gen.get_state(), "torch_rng": torch.get_rng_state(),
        }
        if self.rt.is_cuda:
            state["cuda_rng"] = torch.cuda.get_rng_state(self.rt.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._refuse_after_capture()
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.head.load_state_dict(state["head"])
        self.loss.load_state_dict(state["loss"])
        restore_adam(self, state)
        self.perm_gen.set_state(state["perm_rng"])
        self.aug_gen.set_state(state["aug_rng"])
        torch.set_rng_state(state["torch_rng"])
        if self.rt.is_cuda and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.rt.device)


def _per_member(values: Any, k: int, name: str) -> list[Any]:
    """A scalar for every member, or a sequence of exactly K values."""
    if isinstance(values, (str, int, float)) or values is None:
        return [values] * k
    values = list(values.tolist() if isinstance(values, torch.Tensor) else values)
    if len(values) != k:
        raise ValueError(f"{name}: {len(values)} values for {k} members")
    return values


class BatchedStudentTrainer(DistillTrainer):
    """K students trained at once as grouped convolutions, each with its own lambda, alpha, beta, T, tau, lr,
    init, seed (weights, data order, augmentations); member k follows the same path as a StudentTrainer with
    member k's config, up to float rounding. `active` (K,) bool on the device: pruned members are frozen by
    `stop(k)`; a member whose loss goes non-finite freezes itself (`alive`) and never disturbs the others."""

    batched = True

    def __init__(self, teacher: Generator, runtime: Runtime, members: int, *, ngf: int | None = None, ndf: int = 32,
                 init: Any = "teacher", lambda_fm: Any = 1.0, alpha: Any = 1.0, beta: Any = 0.1, T: Any = 4.0, tau: Any = 0.2,
                 lr: Any = 1e-4, seed: Any = 0, kd: str = "latent", kd_direction: str = "seed",
                 betas: tuple[float, float] = (0.5, 0.999), batch_size: int = 64, augment_config: AugmentConfig | None = None,
                 proj_hidden: int = 128, proj_out: int = 64, graphs: Any = None):
        from sibeatgan.models.batched import MultiAdam, grouped, stack_states

        k = self.members = int(members)
        super().__init__(runtime, batch_size)
        dev = runtime.device
        self.kd = kd
        self.augment_config = augment_config or AugmentConfig()
        # a single seed s gives members s, s+1, ...: identical members would waste the batch
        seeds = [int(seed) + i for i in range(k)] if isinstance(seed, int) else _per_member(seed, k, "seed")
        self.seeds = [int(s) for s in seeds]
        self.inits = _per_member(init, k, "init")
        nc, length, nz = teacher.nc, teacher.length, teacher.nz
        ngf = teacher.ngf if ngf is None else int(ngf)
        self.teacher = freeze(teacher.to(dev))
        singles: list[tuple[Generator, Discriminator, ProjectionHead]] = []
        for member_seed, member_init in zip(self.seeds, self.inits):
            if member_init not in INITS:
                raise ValueError(f"init must be one of {INITS}, not {member_init!r}")
            if member_init == "teacher" and ngf != teacher.ngf:
                raise ValueError(f"init='teacher' needs the teacher's width (ngf {teacher.ngf}), got ngf {ngf}")
            torch.manual_seed(member_seed)  # the same draws, in the same order, as StudentTrainer's constructor
            g = Generator(nc, length, nz, ngf)
            if member_init == "teacher":
                g.load_state_dict(self.teacher.state_dict())
            singles.append((g, Discriminator(nc, length, ndf), ProjectionHead(nz, proj_hidden, proj_out)))
        self.templates = [m.state_dict() for m in singles[0]]
        self.G, self.D, self.head = (grouped(m, k).to(dev).train() for m in singles[0])
        for module, parts in zip((self.G, self.D, self.head), zip(*singles)):
            module.load_state_dict(stack_states([p.state_dict() for p in parts], module.state_dict()))
        adjust_bn_momentum(self.G)
        self.loss = StudentLoss(lambda_fm, alpha, beta, T, tau, kd=kd, direction=kd_direction, members=k).to(dev)
        self.loss.set(**{n: _per_member(v, k, n) for n, v in (("lambda_fm", lambda_fm), ("alpha", alpha), ("beta", beta), ("T", T), ("tau", tau))})
        self.lr = torch.tensor(_per_member(lr, k, "lr"), dtype=torch.float32, device=dev)
        self.g_params = list(self.G.parameters()) + list(self.head.parameters())
        self.opt_g = MultiAdam(self.g_params, self.lr, betas)
        self.opt_d = MultiAdam(self.D.parameters(), self.lr, betas)
        self.aug_gens = [torch.Generator(device=dev).manual_seed(s + 1) for s in self.seeds]
        self.perm_gens = [torch.Generator(device=dev).manual_seed(s) for s in self.seeds]
        if graphs is None and runtime.cuda_graph:
            graphs = GeneratorCudaGraphs(self.aug_gens)
        self.graphs = graphs
        self.active = torch.ones(k, dtype=torch.bool, device=dev)  # not pruned (set by stop / set_active)
        self.alive = torch.ones(k, dtype=torch.bool, device=dev)  # every loss finite so far

    def set_hparams(self, **values: Any) -> None:
        """Per-member lambda_fm, alpha, beta, T, tau, lr (a scalar or K values), copied in place."""
        lr = values.pop("lr", None)
        if lr is not None:
            self.lr.copy_(torch.tensor(_per_member(lr, self.members, "lr"), dtype=torch.float32))
        self.loss.set(**{n: _per_member(v, self.members, n) for n, v in values.items()})

    def stop(self, member: int) -> None:
        """Freeze a member (pruned): from the next step on, its weights, moments and statistics stay as they are."""
        self.active[member] = False

    def set_active(self, active: list[bool]) -> None:
        """The loop's pruning hook: members marked False are stopped (a stopped member never restarts)."""
        for k, a in enumerate(active):
            if not a:
                self.stop(k)

    def generator(self, k: int) -> Generator:
        """Member k's student generator as a plain Generator (what the loop saves for that member)."""
        return self.member_generator(k)

    def member_states(self, k: int) -> dict[str, dict[str, torch.Tensor]]:
        """Member k's G, D and head as state dicts of the single modules (Generator, Discriminator, ProjectionHead)."""
        from sibeatgan.models.batched import member_state

        return {name: member_state(cpu_state(m), t, k, self.members) for name, m, t in zip(("G", "D", "head"), (self.G, self.D, self.head), self.templates)}

    def member_generator(self, k: int) -> Generator:
        """Member k's student generator as a plain Generator (on the CPU), e.g. for save_generator."""
        g = Generator(**self.teacher.hparams() | {"ngf": self.G.ngf})
        g.load_state_dict(self.member_states(k)["G"])
        return g

    def _views(self, xm: torch.Tensor) -> torch.Tensor:
        """(K, b, nc, L) -> the two views of each member's batch, drawn from its own generator: (K, 2b, nc, L).

        Parameters are drawn per member (the same stream as StudentTrainer.views), then applied to all at once."""
        k, b, nc, length = xm.shape
        cfg, dev = self.augment_config, xm.device
        draws = [draw(b, nc, length, cfg, g, device=dev) for g in self.aug_gens for _ in range(2)]
        params = {name: torch.cat([d[name] for d in draws]) for name in draws[0]}
        views = apply_drawn(xm.repeat(1, 2, 1, 1).reshape(k * 2 * b, nc, length), params, cfg)
        return views.reshape(k, 2 * b, nc, length)

    def step(self) -> None:
        """One D step and one G step of every member; the same callable runs eagerly and under capture."""
        from sibeatgan.models.batched import bn_running, from_members, to_members

        k, b = self.members, self.batch_size
        xm = self.train_x.index_select(0, self.idx.reshape(-1)).reshape(k, b, *self.train_x.shape[1:])
        x = from_members(xm)
        running = [t.clone() for t in bn_running(self.G) + bn_running(self.D)]
        cache = not isinstance(self.graphs, CudaGraphs)
        with self.rt.autocast(cache):
            if self.kd == "attention":
                code, maps = encoder_stages(self.G.encoder, x)
                rec = self.G.decoder(code)
            else:
                rec, code = self.G(x)
            logit_real = to_members(self.D.head(self.D.features(x)), k).reshape(k, b)
            logit_fake = to_members(self.D.head(self.D.features(rec.detach())), k).reshape(k, b)
        err_d = discriminator_loss_trailing(logit_real, logit_fake)  # per member: reduction over the batch only
        self.opt_d.zero_grad()
        err_d.sum().backward()
        ok_d = self.active & self.alive & torch.isfinite(err_d)
        self.opt_d.step(ok_d)
        with self.rt.autocast(cache):
            with torch.no_grad():
                flat = xm.reshape(k * b, *xm.shape[2:])
                if self.kd == "attention":
                    code_t, maps_t = encoder_stages(self.teacher.encoder, flat)
                    maps_t = [m.reshape(k, b, *m.shape[1:]) for m in maps_t]
                    maps_s = [to_members(m, k) for m in maps]
                else:
                    code_t, maps_t, maps_s = self.teacher.encoder(flat), None, None
                features_real = self.D.features(x)
            features_fake = self.D.features(rec)
            with batch_stats_only(self.G.encoder):
                z = self.G.encoder(from_members(self._views(xm)))
            proj = to_members(self.head.fc2(torch.relu(self.head.fc1(z))), k).flatten(2)
            p1, p2 = proj.chunk(2, dim=1)
            terms = self.loss(xm, to_members(rec, k), to_members(features_real, k), to_members(features_fake, k),
                              to_members(code, k).flatten(2), code_t.reshape(k, b, -1), p1, p2, maps_s, maps_t)
        self.opt_g.zero_grad()
        torch.autograd.backward(terms.total.sum(), inputs=self.g_params)
        with torch.no_grad():
            finite = torch.isfinite(torch.stack([err_d.detach(), *(t.detach() for t in terms)], 1)).all(1)
            ok = self.active & self.alive & finite
            self.opt_g.step(ok)
            for now, before in zip(bn_running(self.G) + bn_running(self.D), running):  # frozen members keep their running statistics
                now.copy_(torch.where(ok.reshape(k, 1), now.view(k, -1), before.view(k, -1)).view(-1))
            self.alive &= finite | ~self.active
            values = torch.stack([err_d.detach(), *(t.detach() for t in terms)], 1)
            self.sums.add_(torch.where(self.active.unsqueeze(1), values, torch.zeros_like(values)))

    def epoch_order(self, n: int) -> torch.Tensor:
        """One permutation per member, each from its own generator: (K, n)."""
        return torch.stack([torch.randperm(n, generator=g, device=self.rt.device) for g in self.perm_gens])

    def epoch_losses(self, steps: int) -> dict[str, Any]:
        """Lists of K per-member mean losses, and which members are alive (finite losses) and active (not stopped)."""
        out: dict[str, Any] = dict(zip(LOSS_NAMES, (self.sums / steps).T.tolist()))
        out.update(alive=self.alive.tolist(), active=self.active.tolist())
        return out

    def score(self, x: torch.Tensor | np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Each member's reconstruction error of each beat: (K, n)."""
        from sibeatgan.models.batched import reconstruction_errors

        return reconstruction_errors(self.G, self.members, x, batch_size, self.rt.device)

    def discrepancy(self, x: torch.Tensor | np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Each member's mean squared latent distance to the teacher: (K, n)."""
        from sibeatgan.models.batched import per_beat, to_members

        k = self.members

        def distance(xb: torch.Tensor) -> torch.Tensor:
            code_s = to_members(self.G.encoder(xb.repeat(1, k, 1)).float(), k).flatten(2)
            return (code_s - self.teacher.encoder(xb).float().flatten(1)).pow(2).mean(-1)

        return per_beat(self.G, k, x, batch_size, self.rt.device, distance)

    def state_dict(self) -> dict[str, Any]:
        return {
            "G": cpu_state(self.G), "D": cpu_state(self.D), "head": cpu_state(self.head), "loss": cpu_state(self.loss),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "active": self.active.cpu(), "alive": self.alive.cpu(),
            "perm_rng": [g.get_state() for g in self.perm_gens], "aug_rng": [g.get_state() for g in self.aug_gens],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._refuse_after_capture()
        for name in ("G", "D", "head", "loss"):
            getattr(self, name).load_state_dict(state[name])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.active.copy_(state["active"])
        self.alive.copy_(state["alive"])
        for gens, key in ((self.perm_gens, "perm_rng"), (self.aug_gens, "aug_rng")):
            for g, s in zip(gens, state[key]):
                g.set_state(s)
