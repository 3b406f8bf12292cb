"""BeatGAN teacher training: one D step then one G step per batch, the training set held on the device.

Batches come from a device-side permutation and index_select; the whole step (both forward and
backward passes and both Adam updates) is one callable, run eagerly or captured once as a CUDA
graph and replayed. Losses are summed on the device and read once per epoch, so no step waits
on the host. D is re-initialised, as in the reference, whenever its loss falls below
`d_reinit_threshold`; the test and the redraw happen inside every step by masking
(weights + flag * (fresh_draw - weights), flag 0 or 1 on the device), so the decision never
leaves the device and a reinit takes effect at the same step as in the reference.

`TeacherTrainer` is what is trained; `sibeatgan.train.loop.fit` runs it (epochs, selection, checkpoints,
callbacks). The core needs only torch and numpy; `run_train_teacher` loads the rest lazily.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sibeatgan.card import ThresholdPolicy
from sibeatgan.device import Runtime
from sibeatgan.losses import DiscriminatorLoss, GeneratorLoss
from sibeatgan.metrics import score
from sibeatgan.modelio import cpu_state
from sibeatgan.models import Discriminator, Generator
from sibeatgan.models.beatgan import init_spec
from sibeatgan.train.loop import CudaGraphs, FitData, FitSettings, StepTrainer, fit, restore_generator

if TYPE_CHECKING:
    from sibeatgan.config import TeacherConfig

log = logging.getLogger(__name__)

LOSS_NAMES = ("loss_d", "loss_g", "loss_rec", "loss_fm", "d_reinits")
# Config fields that may change between a run and its resumption: they do not change what is learnt.
RESUMABLE_CHANGES = ("epochs", "device", "amp", "cuda_graph", "eval_batch_size")


def restore_adam(trainer: Any, state: dict[str, Any]) -> None:
    """A trainer's opt_g and opt_d from `state`, set for its runtime: a checkpoint from a graphed GPU run may land on
    the CPU, and back (capturable/fused flags and where Adam's step counters live). The teacher's and the student's."""
    for opt, key in ((trainer.opt_g, "opt_g"), (trainer.opt_d, "opt_d")):
        opt.load_state_dict(state[key])
        for group in opt.param_groups:
            group["capturable"], group["fused"] = trainer._capturable, trainer._fused or None
        for p, s in opt.state.items():
            if "step" in s:
                s["step"] = s["step"].to(p.device if trainer._capturable or trainer._fused else "cpu", torch.float32)


class TeacherTrainer(StepTrainer):
    """Generator, discriminator, their Adam optimizers and the step; `fit` (sibeatgan.train.loop) runs the epochs."""

    loss_names = LOSS_NAMES

    def __init__(
        self,
        nc: int,
        length: int,
        runtime: Runtime,
        *,
        nz: int = 50,
        ngf: int = 32,
        ndf: int = 32,
        lambda_fm: float = 1.0,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        batch_size: int = 64,
        d_reinit_threshold: float = 5e-6,
        seed: int = 0,
        graphs: Any = None,
    ):
        super().__init__(runtime, batch_size)
        dev = runtime.device
        torch.manual_seed(seed)
        if runtime.is_cuda:
            torch.cuda.manual_seed_all(seed)
        self.G = Generator(nc, length, nz, ngf).to(dev).train()
        for m in self.G.modules():
            if isinstance(m, torch.nn.BatchNorm1d) and m.momentum is not None:
                # The reference runs G forward twice per step on the same batch (D step, G step), so its
                # running statistics move twice; the step here runs G once, with the equivalent momentum.
                m.momentum = 1.0 - (1.0 - m.momentum) ** 2
        self.D = Discriminator(nc, length, ndf).to(dev).train()
        self.d_reinit_threshold = float(d_reinit_threshold)
        self.d_loss = DiscriminatorLoss()
        self.g_loss = GeneratorLoss(lambda_fm)
        self.graphs = graphs if graphs is not None else (CudaGraphs() if runtime.cuda_graph else None)
        self._capturable = runtime.is_cuda and isinstance(self.graphs, CudaGraphs)
        self._fused = runtime.is_cuda  # one kernel per update; its step counters live on the device
        opt = dict(lr=lr, betas=betas, capturable=self._capturable, fused=self._fused or None)
        self.opt_g = torch.optim.Adam(self.G.parameters(), **opt)
        self.opt_d = torch.optim.Adam(self.D.parameters(), **opt)
        self.g_params = list(self.G.parameters())
        self.perm_gen = torch.Generator(device=dev)
        self.perm_gen.manual_seed(seed)
        # D's parameters with the (mean, std) of their initial draw, from the one spec init_weights also draws from
        spec = [entry for m in self.D.modules() for entry in init_spec(m)]
        if {id(p) for p, _, _ in spec} != {id(p) for p in self.D.parameters()} or len(spec) != len(list(self.D.parameters())):
            raise RuntimeError("init_spec does not cover every parameter of the discriminator; its re-initialisation would be partial")
        self._d_params: list[torch.Tensor] = [p for p, _, _ in spec]
        self._d_mean: list[float] = [mean for _, mean, _ in spec]
        self._d_std: list[float] = [std for _, _, std in spec]
        self._d_sizes = [p.numel() for p in self._d_params]

    @torch.no_grad()
    def _reinit_d(self, flag: torch.Tensor) -> None:
        """Where flag is true, redraw D's parameters as at construction (Adam state and BN statistics kept, as in the reference).

        p + flag * (fresh - p), with a few multi-tensor kernels: p exactly when flag is 0, a fresh draw when it is 1.
        """
        flat = torch.randn(sum(self._d_sizes), device=self.rt.device)
        fresh = [f.view_as(p) for f, p in zip(flat.split(self._d_sizes), self._d_params)]
        torch._foreach_mul_(fresh, self._d_std)
        torch._foreach_add_(fresh, self._d_mean)
        delta = torch._foreach_sub(fresh, self._d_params)
        torch._foreach_mul_(delta, flag.to(flat.dtype))
        torch._foreach_add_(self._d_params, delta)

    def step(self) -> None:
        """One D step and one G step on the batch train_x[idx]; the same callable runs eagerly and under capture."""
        x = self.train_x.index_select(0, self.idx)
        cache = not self._capturable
        with self.rt.autocast(cache):
            fake = self.G(x).reconstruction
            err_d = self.d_loss(self.D(x).logit, self.D(fake.detach()).logit)
        self.opt_d.zero_grad(set_to_none=True)
        err_d.backward()
        self.opt_d.step()
        with self.rt.autocast(cache):
            with torch.no_grad():
                features_real = self.D(x).features
            g = self.g_loss(x, fake, features_real, self.D(fake).features)
        self.opt_g.zero_grad(set_to_none=True)
        torch.autograd.backward(g.total, inputs=self.g_params)
        self.opt_g.step()
        with torch.no_grad():
            flag = err_d.detach() < self.d_reinit_threshold
            self._reinit_d(flag)
            self.sums.add_(torch.stack([err_d.detach(), g.total.detach(), g.reconstruction.detach(), g.feature_matching.detach(), flag.float()]))

    def generator(self, k: int = 0) -> torch.nn.Module:
        return self.G

    def score(self, x: torch.Tensor, batch_size: int = 4096) -> np.ndarray:
        """(1, n) anomaly scores (reconstruction error) of the current generator."""
        return score(self.G, x, batch_size, self.rt.device)[None]

    def train_mode(self) -> None:
        self.G.train()
        self.D.train()

    def epoch_losses(self, steps: int) -> dict[str, Any]:
        """Mean losses, and how many times D was re-initialised."""
        sums = self.sums.tolist()
        out: dict[str, Any] = {name: value / steps for name, value in zip(LOSS_NAMES, sums)}
        out["d_reinits"] = int(round(sums[-1]))
        return out

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer and RNG states: enough to continue exactly where this left off."""
        state: dict[str, Any] = {
            "G": cpu_state(self.G),
            "D": cpu_state(self.D),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "perm_rng": self.perm_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        if self.rt.is_cuda:
            state["cuda_rng"] = torch.cuda.get_rng_state(self.rt.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._refuse_after_capture()
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        restore_adam(self, state)
        restore_generator(self.perm_gen, state["perm_rng"], "the data order")
        torch.set_rng_state(state["torch_rng"])
        if self.rt.is_cuda and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.rt.device)


def _select_train(train: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    if cap is None or cap >= train.shape[0]:
        return train
    return np.sort(np.random.default_rng([seed, 7]).choice(train, size=cap, replace=False))


def teacher_beats(ds: Any, split_set: Any, config: TeacherConfig, dataset: Path) -> tuple[Any, np.ndarray]:
    """A teacher's part of the split (fold `config.fold` of `config.split`) and its training beats (capped by
    max_train_beats), refused in one line when its validation beats cannot select a model or it has under one batch."""
    from sibeatgan.errors import DatasetError

    part = split_set.fold(config.split, config.fold)
    train_idx = _select_train(part.train, config.max_train_beats, config.seed)
    val_labels = ds.labels[part.val]
    where = f"{dataset}: fold {config.fold}'s"
    if not (val_labels == 0).any():
        raise DatasetError(f"{where} validation split holds no normal beats; cannot select a model")
    if config.selection == "paper" and (val_labels == 0).all():
        raise DatasetError(f"{where} validation split has no labelled anomalies, which selection='paper' needs (use selection='clean')")
    if len(train_idx) < config.batch_size:
        raise DatasetError(f"{where} {len(train_idx)} training beats are fewer than one batch of {config.batch_size}")
    return part, train_idx


def run_train_teacher(config: TeacherConfig, dataset: Path, out: Path, resume: bool = True, progress: bool = False,
                      split: Path | None = None, callbacks: list[Any] | tuple[Any, ...] = ()) -> dict[str, Any]:
    """Train BeatGAN on the split artifact's training beats (`split`, default the dataset's own), selecting the best
    epoch by `config.selection`; writes into `out` checkpoint.pt (every epoch), generator.pt (best epoch so far,
    with its validation threshold) and metrics.json (history). `callbacks` see every epoch (sibeatgan.train.loop)."""
    from sibeatgan.config import to_dict
    from sibeatgan.data.artifact import load
    from sibeatgan.data.splits import resolve_split
    from sibeatgan.device import select

    ds = load(dataset)
    content_hash = ds.content_hash()
    split_set = resolve_split(dataset, split, content_hash)
    part, train_idx = teacher_beats(ds, split_set, config, dataset)
    val_labels = ds.labels[part.val]
    rt = select(config.device, config.amp, config.cuda_graph)
    trainer = TeacherTrainer(
        ds.leads, ds.length, rt, nz=config.nz, ngf=config.ngf, ndf=config.ndf, lambda_fm=config.lambda_fm, lr=config.lr,
        betas=(config.beta1, config.beta2), batch_size=config.batch_size, d_reinit_threshold=config.d_reinit_threshold, seed=config.seed,
    )
    data = FitData(torch.from_numpy(ds.float_beats(train_idx)), torch.from_numpy(ds.float_beats(part.val)), val_labels,
                   content_hash, split_set.hash, config.split, config.fold)
    settings = FitSettings(
        epochs=config.epochs, selection=config.selection, eval_batch_size=config.eval_batch_size, kind="teacher",
        config=to_dict(config), resumable_changes=RESUMABLE_CHANGES, resume=resume, progress=progress,
        threshold_rule=ThresholdPolicy.for_selection(config.selection).rule,
    )
    log.info(
        "teacher: %d training beats (%d leads x %d), %d validation, %s split fold %d (split %s), selection %s, %s",
        len(train_idx), ds.leads, ds.length, len(part.val), config.split, config.fold, split_set.hash[:12], config.selection, rt.describe(),
    )
    return fit(trainer, data, Path(out), settings, callbacks, runtime=rt.describe())
