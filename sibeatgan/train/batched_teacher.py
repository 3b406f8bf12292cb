"""Several BeatGAN teachers, each of its own (fold, seed), trained as the members of one process.

The paper's protocol trains a teacher per (fold, seed) unit; one teacher leaves most of a GPU idle (a step at
batch 64 is a few small kernels). Here K teachers share one step: their generators and discriminators are
grouped convolutions (`sibeatgan.models.batched`: one kernel per layer for all members), their Adam is
`MultiAdam`, and the whole step, for all members, is one callable that `sibeatgan.train.loop` runs eagerly or
captures once as a CUDA graph.

Each member keeps what makes it its own run: its init (drawn as `TeacherTrainer` draws it for its seed), its
training beats (its fold's, as indices into one tensor of every member's training beats), its data order (a
permutation from its own generator, seeded as the single teacher's), its validation beats (`MemberSplit`), and
its discriminator re-initialisation (its own decision, and draws from its own generator). Folds differ in size:
an epoch runs as many steps as the largest member's, and a member whose epoch is over is masked for the rest of
it (no update, no statistics moved), so each member trains exactly its own epoch. Up to float rounding, member k
follows `TeacherTrainer` with member k's seed on member k's data (`tests/test_batched_teacher.py`); one
exception: a member with fewer steps than the largest still draws its re-initialisation noise in its masked steps
(a captured graph cannot skip a draw), so from its second epoch on its whole re-initialisation stream is offset
from its single run's: any re-initialisation from then on draws other (equally random) weights than the single run
would. With the reference threshold (5e-6) re-initialisations are rare; members of equal size are not affected.
On CUDA the grouped kernels and the captured step are checked against single teachers by
`bench/gpu_batched_teacher.sh` (equivalence.json), not by the test suite.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sibeatgan.card import ThresholdPolicy
from sibeatgan.device import Runtime
from sibeatgan.losses import discriminator_loss_trailing, mse_trailing
from sibeatgan.modelio import cpu_state
from sibeatgan.models import Discriminator, Generator
from sibeatgan.models.beatgan import init_spec
from sibeatgan.models.student import adjust_bn_momentum
from sibeatgan.train.loop import CudaGraphs, FitData, FitSettings, GeneratorCudaGraphs, MemberSplit, StepTrainer, fit, restore_generator
from sibeatgan.train.teacher import LOSS_NAMES, RESUMABLE_CHANGES

if TYPE_CHECKING:
    from sibeatgan.config import TeacherConfig

log = logging.getLogger(__name__)

# what may differ between the members of one group: the rest is one architecture, optimizer and protocol
MEMBER_FIELDS = ("fold", "seed", "max_train_beats")


class BatchedTeacherTrainer(StepTrainer):
    """K teachers in one step. `train_sets[k]`: member k's training beats, as indices into the tensor `fit` hands to
    `set_train_data`; `seeds[k]`: its seed (init, data order, re-initialisation draws)."""

    batched = True
    loss_names = LOSS_NAMES

    def __init__(self, nc: int, length: int, runtime: Runtime, train_sets: list[np.ndarray], seeds: list[int], *, nz: int = 50,
                 ngf: int = 32, ndf: int = 32, lambda_fm: float = 1.0, lr: float = 1e-4, betas: tuple[float, float] = (0.5, 0.999),
                 batch_size: int = 64, d_reinit_threshold: float = 5e-6, graphs: Any = None):
        from sibeatgan.models.batched import MultiAdam, grouped, stack_states

        if not train_sets or len(train_sets) != len(seeds):
            raise ValueError(f"{len(train_sets)} training sets for {len(seeds)} seeds: one of each per member")
        k = self.members = len(seeds)
        super().__init__(runtime, batch_size)
        dev = runtime.device
        self.seeds = [int(s) for s in seeds]
        self.sets = [torch.as_tensor(np.asarray(s, dtype=np.int64), device=dev) for s in train_sets]
        small = [int(s.numel()) for s in self.sets if s.numel() < self.batch_size]
        if small:
            raise ValueError(f"a member has {small[0]} training beats, fewer than one batch of {self.batch_size}")
        singles: list[tuple[Generator, Discriminator]] = []
        self.reinit_gens: list[torch.Generator] = []
        for seed in self.seeds:  # the same draws, in the same order, as TeacherTrainer's constructor for this seed
            torch.manual_seed(seed)
            if runtime.is_cuda:
                torch.cuda.manual_seed_all(seed)
            singles.append((Generator(nc, length, nz, ngf), Discriminator(nc, length, ndf)))
            gen = torch.Generator(device=dev)
            if runtime.is_cuda:  # the single teacher's CUDA stream: seeded, untouched by the init (drawn on the CPU)
                gen.manual_seed(seed)
            else:  # the single teacher's CPU stream, where its init left it
                gen.set_state(torch.get_rng_state())
            self.reinit_gens.append(gen)
        self.templates = [m.state_dict() for m in singles[0]]
        self.hparams = singles[0][0].hparams()
        self.G, self.D = (grouped(m, k).to(dev).train() for m in singles[0])
        for module, parts in zip((self.G, self.D), zip(*singles)):
            module.load_state_dict(stack_states([p.state_dict() for p in parts], module.state_dict()))
        adjust_bn_momentum(self.G)  # as TeacherTrainer: one G forward per step stands for the reference's two
        self.lambda_fm = float(lambda_fm)
        self.d_reinit_threshold = float(d_reinit_threshold)
        self.lr = torch.full((k,), float(lr), dtype=torch.float32, device=dev)
        self.g_params = list(self.G.parameters())
        self.opt_g = MultiAdam(self.g_params, self.lr, betas)
        self.opt_d = MultiAdam(self.D.parameters(), self.lr, betas)
        # D's parameters in the single teacher's re-initialisation order, with each one's (mean, std) per member value
        template_d = singles[0][1]
        names = {id(p): n for n, p in template_d.named_parameters()}
        spec = [entry for m in template_d.modules() for entry in init_spec(m)]
        grouped_params = dict(self.D.named_parameters())
        self._d_params = [grouped_params[names[id(p)]] for p, _, _ in spec]
        self._d_sizes = [p.numel() for p, _, _ in spec]
        self._d_std = torch.cat([torch.full((n,), std) for n, (_, _, std) in zip(self._d_sizes, spec)]).to(dev)
        self._d_mean = torch.cat([torch.full((n,), mean) for n, (_, mean, _) in zip(self._d_sizes, spec)]).to(dev)
        self.perm_gens = [torch.Generator(device=dev).manual_seed(s) for s in self.seeds]
        self.member_steps = torch.tensor([s.numel() // self.batch_size for s in self.sets], dtype=torch.long, device=dev)
        self.step_i = torch.zeros((), dtype=torch.long, device=dev)  # the step within the epoch, counted on the device
        if graphs is None and runtime.cuda_graph:
            graphs = GeneratorCudaGraphs(self.reinit_gens)
        self.graphs = graphs
        self.active = torch.ones(k, dtype=torch.bool, device=dev)  # not stopped (set_active)
        self.alive = torch.ones(k, dtype=torch.bool, device=dev)  # every loss finite so far

    # --- the loop's hooks ---

    def train_mode(self) -> None:
        self.G.train()
        self.D.train()

    def set_train_data(self, beats: torch.Tensor) -> None:
        top = max(int(s.max()) for s in self.sets)
        if top >= beats.shape[0]:
            raise ValueError(f"a member's training set indexes beat {top}, but the training tensor holds {beats.shape[0]}")
        super().set_train_data(beats)

    def epoch_steps(self, n: int) -> int:
        return max(s.numel() for s in self.sets) // self.batch_size

    def epoch_order(self, n: int) -> torch.Tensor:
        """(K, steps * batch): member k's own beats in its own fresh order, run on past its epoch's end (those steps
        are masked) so every member has a batch at every step."""
        width = self.epoch_steps(n) * self.batch_size
        rows = []
        for beats, gen in zip(self.sets, self.perm_gens):
            order = beats[torch.randperm(beats.numel(), generator=gen, device=self.rt.device)]
            rows.append(order.repeat(-(-width // order.numel()))[:width])
        self.step_i.zero_()
        return torch.stack(rows)

    def trained_beats(self, steps: int) -> int:
        own = self.member_steps.clamp(max=steps) * (self.active & self.alive)  # a member that diverged this epoch: not counted
        return int(own.sum()) * self.batch_size

    def set_active(self, active: list[bool]) -> None:
        """Members marked False are stopped from the next step on (weights, moments and statistics stay as they are)."""
        for k, a in enumerate(active):
            if not a:
                self.active[k] = False

    # --- the step ---

    @torch.no_grad()
    def _reinit_d(self, flag: torch.Tensor) -> None:
        """Where flag[k], redraw member k's D as at construction (TeacherTrainer._reinit_d, member by member)."""
        k = self.members
        fresh = torch.stack([torch.randn(self._d_std.numel(), device=self.rt.device, generator=g) for g in self.reinit_gens])
        fresh = fresh * self._d_std + self._d_mean
        mine = [p.view(k, -1) for p in self._d_params]
        delta = [(f - p) * flag.reshape(k, 1).to(f.dtype) for f, p in zip(fresh.split(self._d_sizes, 1), mine)]
        torch._foreach_add_(mine, delta)

    def step(self) -> None:
        """One D step and one G step of every member on its batch train_x[idx[k]]; runs eagerly and under capture."""
        from sibeatgan.models.batched import bn_running, from_members, to_members

        k, b = self.members, self.batch_size
        xm = self.train_x.index_select(0, self.idx.reshape(-1)).reshape(k, b, *self.train_x.shape[1:])
        x = from_members(xm)
        on = self.active & self.alive & (self.step_i < self.member_steps)
        running = [t.clone() for t in bn_running(self.G) + bn_running(self.D)]
        cache = not isinstance(self.graphs, CudaGraphs)
        with self.rt.autocast(cache):
            fake = self.G(x).reconstruction
            logit_real = to_members(self.D.head(self.D.features(x)), k).reshape(k, b)
            logit_fake = to_members(self.D.head(self.D.features(fake.detach())), k).reshape(k, b)
        err_d = discriminator_loss_trailing(logit_real, logit_fake)
        self.opt_d.zero_grad()
        err_d.sum().backward()
        self.opt_d.step(on & torch.isfinite(err_d))
        with self.rt.autocast(cache):
            with torch.no_grad():
                features_real = self.D.features(x)
            features_fake = self.D.features(fake)
        rec = mse_trailing(to_members(fake, k), xm, 3)
        fm = mse_trailing(to_members(features_fake, k), to_members(features_real, k), 3)
        total = rec + self.lambda_fm * fm
        self.opt_g.zero_grad()
        torch.autograd.backward(total.sum(), inputs=self.g_params)
        with torch.no_grad():
            values = torch.stack([err_d.detach(), total.detach(), rec.detach(), fm.detach()], 1)
            finite = torch.isfinite(values).all(1)
            ok = on & finite
            self.opt_g.step(ok)
            flag = ok & (err_d.detach() < self.d_reinit_threshold)
            self._reinit_d(flag)
            for now, before in zip(bn_running(self.G) + bn_running(self.D), running):  # masked members keep their statistics
                now.copy_(torch.where(ok.reshape(k, 1), now.view(k, -1), before.view(k, -1)).view(-1))
            self.alive &= finite | ~on
            values = torch.cat([values, flag.float().unsqueeze(1)], 1)
            self.sums.add_(torch.where(ok.unsqueeze(1), values, torch.zeros_like(values)))
            self.step_i.add_(1)

    def epoch_losses(self, steps: int) -> dict[str, Any]:
        """Lists of K per-member mean losses (over each member's own steps), re-initialisations, alive and active."""
        own = self.member_steps.clamp(max=steps, min=1).unsqueeze(1).float()
        out: dict[str, Any] = dict(zip(LOSS_NAMES, (self.sums / own).T.tolist()))
        out["d_reinits"] = [int(round(v)) for v in self.sums[:, -1].tolist()]
        out.update(alive=self.alive.tolist(), active=self.active.tolist())
        return out

    # --- what the loop reads and saves ---

    def score(self, x: torch.Tensor | np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Each member's reconstruction error of each beat: (K, n)."""
        from sibeatgan.models.batched import reconstruction_errors

        return reconstruction_errors(self.G, self.members, x, batch_size, self.rt.device)

    def member_states(self, k: int) -> dict[str, dict[str, torch.Tensor]]:
        """Member k's G and D as state dicts of the single modules."""
        from sibeatgan.models.batched import member_state

        return {name: member_state(cpu_state(m), t, k, self.members) for name, m, t in zip(("G", "D"), (self.G, self.D), self.templates)}

    def generator(self, k: int = 0) -> Generator:
        """Member k's generator as a plain Generator on the CPU (what the loop saves for that member)."""
        g = Generator(**self.hparams)
        g.load_state_dict(self.member_states(k)["G"])
        return g

    def state_dict(self) -> dict[str, Any]:
        return {"G": cpu_state(self.G), "D": cpu_state(self.D), "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "active": self.active.cpu(), "alive": self.alive.cpu(), "perm_rng": [g.get_state() for g in self.perm_gens],
                "reinit_rng": [g.get_state() for g in self.reinit_gens]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._refuse_after_capture()
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.active.copy_(state["active"])
        self.alive.copy_(state["alive"])
        for gens, key in ((self.perm_gens, "perm_rng"), (self.reinit_gens, "reinit_rng")):
            for k, (g, s) in enumerate(zip(gens, state[key])):
                restore_generator(g, s, f"member {k}'s {key}")


def _group_config(configs: list[TeacherConfig]) -> dict[str, Any]:
    """The config the members share (refusing members that differ in anything but MEMBER_FIELDS), without those fields."""
    from sibeatgan.config import to_dict
    from sibeatgan.errors import ConfigError

    dicts = [to_dict(c) for c in configs]
    shared = {key: v for key, v in dicts[0].items() if key not in MEMBER_FIELDS}
    for k, d in enumerate(dicts[1:], 1):
        differ = sorted(key for key in set(d) | set(shared) if key not in MEMBER_FIELDS and d.get(key) != shared.get(key))
        if differ:
            raise ConfigError(f"batched teachers share everything but {', '.join(MEMBER_FIELDS)}; member {k} differs from member 0 in "
                              + ", ".join(f"{key} ({shared.get(key)!r} vs {d.get(key)!r})" for key in differ))
    pairs = [(c.fold, c.seed) for c in configs]
    if len(set(pairs)) != len(pairs):
        raise ConfigError(f"batched teachers need distinct (fold, seed) pairs, got {pairs}")
    return shared


def run_train_teachers(configs: list[TeacherConfig], dataset: Path, out: Path, resume: bool = True, progress: bool = False,
                       split: Path | None = None, callbacks: list[Any] | tuple[Any, ...] = ()) -> dict[str, Any]:
    """Train one teacher per config, all at once (`BatchedTeacherTrainer`); the configs differ only in fold, seed and
    max_train_beats. Writes into `out` checkpoint.pt and metrics.json for the group, and member_<k>/generator.pt
    (with its model card: its own fold and seed) per member, as `run_train_teacher` writes one."""
    from sibeatgan.config import to_dict
    from sibeatgan.data.artifact import load
    from sibeatgan.data.splits import resolve_split
    from sibeatgan.device import select
    from sibeatgan.train.teacher import teacher_beats

    configs = list(configs)
    if not configs:
        raise ValueError("run_train_teachers needs at least one config")
    shared = _group_config(configs)
    first = configs[0]
    ds = load(dataset)
    content_hash = ds.content_hash()
    split_set = resolve_split(dataset, split, content_hash)
    parts, trains = zip(*(teacher_beats(ds, split_set, c, dataset) for c in configs))
    train_union = np.unique(np.concatenate(trains))
    val_union = np.unique(np.concatenate([p.val for p in parts]))
    rt = select(first.device, first.amp, first.cuda_graph)
    trainer = BatchedTeacherTrainer(
        ds.leads, ds.length, rt, [np.searchsorted(train_union, t) for t in trains], [c.seed for c in configs], nz=first.nz,
        ngf=first.ngf, ndf=first.ndf, lambda_fm=first.lambda_fm, lr=first.lr, betas=(first.beta1, first.beta2),
        batch_size=first.batch_size, d_reinit_threshold=first.d_reinit_threshold,
    )
    members = [MemberSplit(np.searchsorted(val_union, p.val), c.fold, len(t)) for c, p, t in zip(configs, parts, trains)]
    data = FitData(torch.from_numpy(ds.float_beats(train_union)), torch.from_numpy(ds.float_beats(val_union)), ds.labels[val_union],
                   content_hash, split_set.hash, first.split, first.fold, members=members)
    settings = FitSettings(
        epochs=first.epochs, selection=first.selection, eval_batch_size=first.eval_batch_size, kind="teacher", config=shared,
        resumable_changes=RESUMABLE_CHANGES, resume=resume, progress=progress,
        threshold_rule=ThresholdPolicy.for_selection(first.selection).rule,
        member_configs=[{key: to_dict(c)[key] for key in MEMBER_FIELDS} for c in configs],
    )
    log.info("%d teachers as one batched group: (fold, seed) %s, %d training beats in all (%s per member), %s split %s, %s",
             len(configs), [(c.fold, c.seed) for c in configs], len(train_union), [len(t) for t in trains], first.split,
             split_set.hash[:12], rt.describe())
    return fit(trainer, data, Path(out), settings, callbacks, runtime=rt.describe())
