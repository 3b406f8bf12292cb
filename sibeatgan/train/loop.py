"""One training loop for every GAN trainer: epochs, device data, selection, checkpoint and resume, progress, callbacks.

A trainer (the teacher, the student, K batched members) is a `StepTrainer`: it says what is trained (its
modules, its named loss terms, its optimizers) and defines one step, not a loop. `fit` says how training
runs, the same for all of them:

- the training beats go to the device once (`trainer.set_train_data`); each epoch is `run_epoch`, the one
  epoch loop: a fresh order of the beats, then per batch the trainer's `step`, run eagerly or warmed up,
  captured once as a CUDA graph and replayed, and one read of the device at the end (the summed losses);
- after each epoch the validation beats (on the device since the start) are scored by every member,
  and each member keeps its best epoch by the selection criterion: `clean` (mean reconstruction error
  of normal validation beats, lower is better), `paper` (validation AUC) or `synthetic` (label-free:
  AUC of all validation beats against synthetic anomalies made from them, higher is better);
  the selected generator is saved with its threshold, chosen on validation beats without test labels;
- one checkpoint per epoch holds the trainer state and the selection state, so a killed run resumes
  where it stopped; it refuses to resume on another dataset, split or config;
- callbacks see every epoch's row (every loss term and validation value) per member: Optuna's
  reporting and pruning and MLflow's logging attach there, without touching the loop or the trainer.
  A callback stops a member with `control.stop(k)` (a pruned trial); the others go on.

Trainers keep everything that changes from step to step (batch indices, loss weights, schedules,
augmentation draws) in device tensors, updated in place: a captured CUDA graph replays the tensors'
current values, while a Python number would stay frozen at its value at capture.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from sibeatgan.card import ThresholdPolicy
from sibeatgan.device import Runtime
from sibeatgan.errors import CheckpointError, ConfigError
from sibeatgan.files import write_json
from sibeatgan.modelio import save_generator
from sibeatgan.train.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

# name, higher is better; synthetic: label-free AUC of every validation beat against its shifted copy (sibeatgan.shifts)
CRITERIA = {"clean": ("val_normal_mse", False), "paper": ("val_auc", True), "synthetic": ("val_synthetic_auc", True)}
WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuDNN autotuning, Adam state)


class CudaGraphs:
    """Capture-and-replay of one step callable with torch.cuda.CUDAGraph."""

    def __init__(self) -> None:
        self.graph = torch.cuda.CUDAGraph()

    def warmup(self, fn: Callable[[], None]) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)

    def capture(self, fn: Callable[[], None]) -> None:
        """Record fn's kernels; like any capture, this runs none of them."""
        with torch.cuda.graph(self.graph):
            fn()

    def replay(self) -> None:
        self.graph.replay()


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


class StepTrainer:
    """The base of every trainer: it holds the training beats, the batch indices and the summed losses on the device,
    and the step's CUDA graph state; a subclass defines `step` (one update on train_x[idx]) and `train_mode`, and
    may change `epoch_order` (K members: K permutations) and `epoch_losses` (the one device read of an epoch).
    `train_epoch` is `run_epoch`, the one epoch loop."""

    members = 1
    batched = False  # True: a leading member axis on idx, sums and the epoch order, even for one member
    loss_names: tuple[str, ...] = ()

    def __init__(self, runtime: Runtime, batch_size: int, graphs: Any = None) -> None:
        self.rt = runtime
        self.batch_size = int(batch_size)
        shape = (self.members, self.batch_size) if self.batched else (self.batch_size,)
        self.idx = torch.zeros(shape, dtype=torch.long, device=runtime.device)
        self.sums = torch.zeros(shape[:-1] + (len(self.loss_names),), dtype=torch.float32, device=runtime.device)
        self.train_x: torch.Tensor | None = None
        self.graphs = graphs
        self._warm = 0
        self._captured = False

    def set_train_data(self, beats: torch.Tensor) -> None:
        """Hold the training beats (n, nc, length) on the device for the rest of the run."""
        if beats.shape[0] < self.batch_size:
            raise ValueError(f"the training set has {beats.shape[0]} beats, fewer than one batch of {self.batch_size}")
        if not self._captured:
            self.train_x = beats.to(self.rt.device, torch.float32).contiguous()
        elif beats.shape == self.train_x.shape:
            self.train_x.copy_(beats)  # the captured graph reads this very tensor
        else:
            raise RuntimeError(f"training data of shape {tuple(beats.shape)} after capture with {tuple(self.train_x.shape)}")

    def train_mode(self) -> None:
        """Set the modules' modes at the start of an epoch (trained ones train(), a frozen teacher eval())."""
        raise NotImplementedError

    def step(self) -> None:
        """One update on the batch train_x[idx], adding its losses to `sums`; the same callable runs eagerly and captured."""
        raise NotImplementedError

    def epoch_steps(self, n: int) -> int:
        """How many steps this epoch has over n training beats (the last partial batch dropped)."""
        return n // self.batch_size

    def epoch_order(self, n: int) -> torch.Tensor:
        """This epoch's order of the n training beats, on the device: (n,), or (members, n) for one order per member."""
        return torch.randperm(n, generator=self.perm_gen, device=self.rt.device)

    def trained_beats(self, steps: int) -> int:
        """Beats trained on in an epoch of `steps` steps, all members together."""
        return steps * self.batch_size * self.members

    def epoch_losses(self, steps: int) -> dict[str, Any]:
        """The epoch's mean losses from `sums`: the epoch's one read of the device."""
        return {name: value / steps for name, value in zip(self.loss_names, self.sums.tolist())}

    def train_epoch(self, on_step: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """One epoch (`run_epoch`)."""
        return run_epoch(self, on_step)

    def _refuse_after_capture(self) -> None:
        if self._captured:
            raise RuntimeError("load_state_dict after CUDA graph capture would detach the graph from the new state")


def restore_generator(gen: torch.Generator, state: torch.Tensor, what: str) -> None:
    """gen.set_state(state); a state saved by a generator of the other device type (a GPU run resumed on the CPU, or
    back) cannot be set, so `gen` goes on from a seed derived from it, with a warning naming `what`."""
    import hashlib

    try:
        gen.set_state(state)
    except RuntimeError:
        gen.manual_seed(int.from_bytes(hashlib.sha256(state.numpy().tobytes()).digest()[:8], "little") >> 1)
        log.warning("%s: its RNG state comes from another device type; draws from here on differ from an uninterrupted run", what)


def run_step(trainer: StepTrainer) -> None:
    """The trainer's step: eagerly, or WARMUP_STEPS warm-up steps, then captured once as a CUDA graph and replayed."""
    if trainer.graphs is None:
        trainer.step()
    elif trainer._captured:
        trainer.graphs.replay()
    elif trainer._warm < WARMUP_STEPS:
        trainer.graphs.warmup(trainer.step)
        trainer._warm += 1
    else:
        try:
            trainer.graphs.capture(trainer.step)
        except Exception as err:  # noqa: BLE001 - any capture failure falls back to eager steps
            log.warning("CUDA graph capture failed (%s: %s); continuing with eager steps", type(err).__name__, err)
            trainer.graphs = None
            trainer.step()
            return
        trainer._captured = True
        trainer.graphs.replay()


def run_epoch(trainer: StepTrainer, on_step: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """One pass over a fresh order of the training beats (the last partial batch dropped); reads the device once, at the end.

    `on_step(i, steps)` after each step is for progress display: a Python call, it never waits on the device.
    Returns the mean losses (K values each for K members), steps, beats (all members together), train_seconds, beats_per_s."""
    if trainer.train_x is None:
        raise RuntimeError("set_train_data first")
    n, b = trainer.train_x.shape[0], trainer.batch_size
    steps = trainer.epoch_steps(n)
    trainer.train_mode()
    trainer.sums.zero_()
    start = time.perf_counter()
    order = trainer.epoch_order(n)
    for i in range(steps):
        trainer.idx.copy_(order[..., i * b : (i + 1) * b])
        run_step(trainer)
        if on_step is not None:
            on_step(i + 1, steps)
    out = trainer.epoch_losses(steps)
    seconds = time.perf_counter() - start
    beats = trainer.trained_beats(steps)
    out.update(steps=steps, beats=beats, train_seconds=seconds, beats_per_s=beats / seconds)
    return out


class Trainer(Protocol):
    """What `fit` needs of a trainer; `members` models are trained at once (1 for a single model). A StepTrainer is one
    (its `train_epoch` is `run_epoch`); so is SequentialMembers, which runs `run_epoch` for each of its trainers."""

    members: int
    loss_names: tuple[str, ...]

    def set_train_data(self, beats: torch.Tensor) -> None: ...

    def train_epoch(self, on_step: Callable[[int, int], None] | None = None) -> dict[str, Any]: ...

    def score(self, x: torch.Tensor, batch_size: int) -> np.ndarray: ...

    def generator(self, k: int) -> torch.nn.Module: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class MemberSplit:
    """One member's own part of a FitData that members of different folds share (batched teachers of several
    (fold, seed) pairs): its validation beats as indices into `FitData.val_x`, its fold and its training set's size."""

    val: np.ndarray
    fold: int
    n_train: int


@dataclass
class FitData:
    """Training and validation beats of one split (host tensors; `fit` moves them to the device once). With `members`,
    each member is validated on its own part of `val_x` and saved with its own fold; the trainer knows which
    training beats are whose."""

    train_x: torch.Tensor
    val_x: torch.Tensor
    val_labels: np.ndarray
    dataset_hash: str
    split_hash: str
    protocol: str
    fold: int
    members: list[MemberSplit] | None = None


@dataclass
class FitSettings:
    """How a run goes; `config` is the step's whole config, stored with the outputs and checked on resume."""

    epochs: int
    selection: str = "clean"
    eval_batch_size: int = 4096
    kind: str = "teacher"
    config: dict[str, Any] = field(default_factory=dict)
    resumable_changes: tuple[str, ...] = ()
    resume: bool = True
    progress: bool = False
    threshold_rule: str = "far"
    threshold_far: float = 0.01
    member_configs: list[dict[str, Any]] | None = None  # per-member hyperparameters, saved with each generator


class Control:
    """Handed to callbacks: which members still train, and a way to stop one (a pruned trial)."""

    def __init__(self, members: int, stopped: list[str | None] | None = None):
        self.stopped: list[str | None] = list(stopped) if stopped else [None] * members

    def active(self, k: int) -> bool:
        return self.stopped[k] is None

    def stop(self, k: int, reason: str = "stopped") -> None:
        if self.stopped[k] is None:
            self.stopped[k] = reason


class Callback:
    """Per-run hooks; every method is optional. `rows[k]` is member k's row of the epoch (None once stopped)."""

    def on_fit_start(self, info: dict[str, Any]) -> None:
        pass

    def on_epoch_end(self, epoch: int, rows: list[dict[str, Any] | None], control: Control) -> None:
        pass

    def on_fit_end(self, result: dict[str, Any]) -> None:
        pass


def _member_dir(out: Path, members: int, k: int) -> Path:
    return out if members == 1 else out / f"member_{k}"


def _check_resumable(ckpt: dict[str, Any], settings: FitSettings, data: FitData, path: Path) -> None:
    hint = "run with --no-resume (resume=False) or use another output folder"
    for key, have in (("dataset_hash", data.dataset_hash), ("split_hash", data.split_hash)):
        if ckpt.get(key) != have:
            raise CheckpointError(f"{path} was written for {key.split('_')[0]} {str(ckpt.get(key))[:12]}, not this one ({have[:12]}); {hint}")
    if ckpt.get("kind") != settings.kind:
        raise CheckpointError(f"{path} is a {ckpt.get('kind')} checkpoint, not a {settings.kind} one; {hint}")
    old, new = ckpt.get("config") or {}, settings.config
    changed = sorted(k for k in set(old) | set(new) if k not in settings.resumable_changes and old.get(k) != new.get(k))
    if ckpt.get("member_configs") != settings.member_configs:
        changed.append("member_configs")
    if changed:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ConfigError(f"cannot resume {path}: the config changed ({detail}); {hint}")


class _Progress:
    """An epoch bar and a step bar on a terminal; on anything else no bar at all, only the log's epoch lines."""

    def __init__(self, enabled: bool, first: int, epochs: int, kind: str):
        self.bar = self.steps = None
        self.stack = ExitStack()
        if not (enabled and sys.stderr.isatty() and first <= epochs):
            return
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.stack.enter_context(logging_redirect_tqdm())  # log lines print above the bars, never inside them
        self.bar = tqdm(total=epochs, initial=first - 1, desc=kind, unit="epoch", position=0)
        self.steps = tqdm(total=0, desc="steps", unit="step", position=1, leave=False)

    def on_step(self, step: int, total: int) -> None:
        if self.steps is not None:
            if step == 1:
                self.steps.reset(total=total)
            self.steps.n = step
            self.steps.refresh() if step == total else self.steps.update(0)

    def epoch_done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        for bar in (self.steps, self.bar):
            if bar is not None:
                bar.close()
        self.stack.close()


def fit(trainer: Trainer, data: FitData, out: Path, settings: FitSettings, callbacks: list[Callback] | tuple[Callback, ...] = (),
        runtime: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `trainer` on `data` for `settings.epochs` epochs, selecting each member's best epoch; writes into `out`
    checkpoint.pt (every epoch), metrics.json, and generator.pt per member (in member_<k>/ when there are several)."""
    if settings.selection not in CRITERIA:
        raise ConfigError(f"selection: {settings.selection!r} is not one of {', '.join(CRITERIA)}")
    criterion, higher = CRITERIA[settings.selection]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    K = int(trainer.members)
    val_labels = np.asarray(data.val_labels)
    if data.members is not None and len(data.members) != K:
        raise ConfigError(f"{len(data.members)} member splits for a trainer of {K} members")
    own = [slice(None) if data.members is None else np.asarray(data.members[k].val, dtype=np.int64) for k in range(K)]
    fold_of = [data.fold if data.members is None else int(data.members[k].fold) for k in range(K)]
    for k in range(K):
        if not (val_labels[own[k]] == 0).any():
            raise CheckpointError(f"the validation split{f' of member {k}' if K > 1 else ''} holds no normal beats; cannot select a model")
    rt = getattr(trainer, "rt", None)
    device = rt.device if rt is not None else next(trainer.generator(0).parameters()).device
    trainer.set_train_data(data.train_x)
    val_x = data.val_x.to(device, torch.float32)
    synthetic_x = None
    if settings.selection == "synthetic":  # drawn once, so every epoch (and every trial) is judged on the same beats
        from sibeatgan.shifts import synthesize

        if data.members is None:
            synthetic_x = synthesize(val_x)[0]
        else:  # each member's own validation beats shifted as its single run shifts them; member k's copies at own_shifted[k]
            parts = [synthesize(val_x[torch.as_tensor(own[k], device=val_x.device)])[0] for k in range(K)]
            ends = np.cumsum([0] + [p.shape[0] for p in parts])
            own_shifted = [slice(int(ends[k]), int(ends[k + 1])) for k in range(K)]
            synthetic_x = torch.cat(parts)
    ckpt_path, metrics_path = out / "checkpoint.pt", out / "metrics.json"
    histories: list[list[dict[str, Any]]] = [[] for _ in range(K)]
    best: list[float | None] = [None] * K
    best_epoch, thresholds = [0] * K, [None] * K
    policy = ThresholdPolicy(rule=settings.threshold_rule, far=settings.threshold_far if settings.threshold_rule == "far" else None)
    control, first = Control(K), 1
    if settings.resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path)
        _check_resumable(ckpt, settings, data, ckpt_path)
        trainer.load_state_dict(ckpt["trainer"])
        sel = ckpt["selection_state"]
        histories, best, best_epoch, thresholds = sel["histories"], sel["best"], sel["best_epoch"], sel["thresholds"]
        control = Control(K, sel["stopped"])
        _apply_stops(trainer, control)
        first = ckpt["epoch"] + 1
        log.info("resuming %s at epoch %d (best %s %s)", ckpt_path, first, criterion, best if K > 1 else best[0])

    def member_summary(k: int) -> dict[str, Any]:
        summary = {
            "kind": settings.kind, "selection": settings.selection, "criterion": criterion, "best_metric": best[k],
            "best_epoch": best_epoch[k], "threshold": thresholds[k], "threshold_rule": settings.threshold_rule,
            "epochs": len(histories[k]), "stopped": control.stopped[k], "history": histories[k],
            "runtime": runtime or {}, "n_train": int(data.train_x.shape[0] if data.members is None else data.members[k].n_train),
            "n_val": int(len(val_labels[own[k]])),
            "dataset_hash": data.dataset_hash, "split_hash": data.split_hash, "protocol": data.protocol, "fold": fold_of[k],
            "config": settings.config,
        }
        if settings.member_configs is not None:
            summary["member_config"] = settings.member_configs[k]
        return summary

    def write_metrics() -> None:
        write_json(metrics_path, member_summary(0) if K == 1 else {"members": [member_summary(k) for k in range(K)]})

    for cb in callbacks:
        cb.on_fit_start({"out": str(out), "members": K, "first_epoch": first, "epochs": settings.epochs, "criterion": criterion,
                         "config": settings.config, "member_configs": settings.member_configs, "dataset_hash": data.dataset_hash,
                         "split_hash": data.split_hash, "protocol": data.protocol, "fold": data.fold})
    progress = _Progress(settings.progress, first, settings.epochs, settings.kind)
    try:
        for epoch in range(first, settings.epochs + 1):
            if all(not control.active(k) for k in range(K)):
                log.info("every member has stopped; ending at epoch %d", epoch - 1)
                break
            started = time.perf_counter()
            losses = trainer.train_epoch(progress.on_step)
            scores = np.asarray(trainer.score(val_x, settings.eval_batch_size)).reshape(K, -1)
            shifted = None if synthetic_x is None else np.asarray(trainer.score(synthetic_x, settings.eval_batch_size)).reshape(K, -1)
            rows: list[dict[str, Any] | None] = []
            for k in range(K):
                if not control.active(k):
                    rows.append(None)
                    continue
                row = {"epoch": epoch, **{name: _member_value(v, k) for name, v in losses.items()}}
                mine, labels = scores[k][own[k]], val_labels[own[k]]
                row.update(_validation(mine, labels, labels == 0))
                if shifted is not None:
                    from sibeatgan.shifts import separation_auc

                    row["val_synthetic_auc"] = separation_auc(mine, shifted[k][own[k] if data.members is None else own_shifted[k]])
                value = row[criterion]
                improved = False
                if "alive" in row and not row["alive"]:  # a batched member whose loss went non-finite froze itself
                    control.stop(k, "diverged")
                    log.warning("epoch %d member %d: its loss is not finite (diverged); it is stopped and not selected", epoch, k)
                elif value is None or not math.isfinite(value):
                    log.warning("epoch %d%s: %s is %s (the model diverged?); this epoch is not considered for selection",
                                epoch, f" member {k}" if K > 1 else "", criterion, value)
                else:
                    improved = best[k] is None or (value > best[k] if higher else value < best[k])
                if improved:
                    best[k], best_epoch[k] = value, epoch
                    thresholds[k] = policy.choose(mine, labels)
                    member_dir = _member_dir(out, K, k)
                    member_dir.mkdir(parents=True, exist_ok=True)
                    save_generator(member_dir / "generator.pt", trainer.generator(k), kind=settings.kind, selection=settings.selection,
                                   criterion=criterion, metric=value, epoch=epoch, config=settings.config,
                                   member_config=(settings.member_configs or [None] * K)[k], dataset_hash=data.dataset_hash,
                                   split_hash=data.split_hash, protocol=data.protocol, fold=fold_of[k],
                                   threshold=thresholds[k], threshold_rule=settings.threshold_rule,
                                   threshold_far=policy.far)
                row["improved"] = improved
                row["epoch_seconds"] = time.perf_counter() - started
                histories[k].append(row)
                rows.append(row)
                log.info("epoch %d%s: %s %s %.6g%s, %.1f s, %.0f beats/s", epoch, f" member {k}" if K > 1 else "",
                         " ".join(f"{n} {row[n]:.4g}" for n in trainer.loss_names if isinstance(row.get(n), float)),
                         criterion, value if value is not None else math.nan, " (best)" if improved else "",
                         row["epoch_seconds"], row.get("beats_per_s", math.nan))
            progress.epoch_done()
            try:
                for cb in callbacks:
                    cb.on_epoch_end(epoch, rows, control)
            finally:
                _apply_stops(trainer, control)
                save_checkpoint(ckpt_path, trainer=trainer.state_dict(), kind=settings.kind, config=settings.config, epoch=epoch,
                                member_configs=settings.member_configs,
                                selection=settings.selection, criterion=criterion, dataset_hash=data.dataset_hash,
                                split_hash=data.split_hash, selection_state={"histories": histories, "best": best, "best_epoch": best_epoch,
                                                                            "thresholds": thresholds, "stopped": control.stopped})
                write_metrics()
    finally:
        progress.close()
    write_metrics()
    if not any(histories):
        raise CheckpointError(f"{out}: no epoch was trained (epochs={settings.epochs}) and no generator.pt exists")
    results = []
    for k in range(K):
        summary = {key: v for key, v in member_summary(k).items() if key != "history"}
        summary.update(generator=str(_member_dir(out, K, k) / "generator.pt") if best[k] is not None else None)
        results.append(summary)
    if all(b is None for b in best):
        raise CheckpointError(f"{out}: none of the {max(len(h) for h in histories)} epoch(s) had a finite {criterion}, so no model "
                              f"was selected and this run wrote no generator.pt (history in {metrics_path.name})")
    result = {**results[0], "checkpoint": str(ckpt_path), "metrics": str(metrics_path)} if K == 1 else \
        {"members": results, "checkpoint": str(ckpt_path), "metrics": str(metrics_path)}
    for cb in callbacks:
        cb.on_fit_end(result)
    return result


def _member_value(value: Any, k: int) -> Any:
    if isinstance(value, (list, tuple, np.ndarray)):
        v = value[k]
        return float(v) if isinstance(v, (float, np.floating)) else (int(v) if isinstance(v, (int, np.integer)) else v)
    return value


def _validation(scores: np.ndarray, labels: np.ndarray, normal: np.ndarray) -> dict[str, Any]:
    """Label-free and labelled validation values of one member's scores (NaN scores give NaN values)."""
    from sibeatgan.metrics import ranked_metrics

    finite = bool(np.isfinite(scores).all())
    row: dict[str, Any] = {"val_normal_mse": float(scores[normal].mean())}
    if normal.all():
        row["val_auc"] = None
    else:  # a ranking with NaN scores in it means nothing, so such an AUC is NaN too
        row["val_auc"] = ranked_metrics(scores, ~normal)["auc"] if finite else math.nan
    return row


def _apply_stops(trainer: Any, control: Control) -> None:
    """Tell a trainer of several members which ones still train (a single model just stops with the loop)."""
    if hasattr(trainer, "set_active"):
        trainer.set_active([control.active(k) for k in range(len(control.stopped))])
