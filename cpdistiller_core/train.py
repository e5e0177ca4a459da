"""The training plan: mini-batches indexed from one device tensor, streamed triplets, GRL schedule,
Gumbel temperature annealing, EMA of weights, device choice and mixed precision.

The loss itself is ``CorrectionModule.loss`` (``model/loss.py``); the data come prepared as
``TrainData`` (``training_data.py``). The loop knows nothing about files; ``runs.py`` writes logs and
checkpoints through ``on_epoch``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .config import CpDistillerConfig
from .errors import CpDistillerError
from .model.discriminators import grl_lambda
from .model.gmvae import CorrectionModule
from .model.loss import LossBatch, LossContext, LossOutput
from .progress import ProgressCallback
from .training_data import TrainData


# ----- device and precision ------------------------------------------------------------------------
def select_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA > MPS > CPU; a forced device that is missing is an error, not a silent CPU run."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if has_mps else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CpDistillerError("device 'cuda' requested but no CUDA GPU is available to torch.")
    if name == "mps" and not has_mps:
        raise CpDistillerError("device 'mps' requested but Apple MPS is not available to torch.")
    if name not in ("cpu", "cuda", "mps"):
        raise CpDistillerError(f"unknown device {name!r}; use auto, cpu, cuda or mps.")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    cpu = torch.cpu
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)


def amp_settings(device: torch.device, enabled: bool) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use GradScaler).

    CUDA: bf16 where the GPU has it, else fp16 with a GradScaler. CPU: bf16 autocast only where the
    CPU has native bf16 units (matmuls ~4x faster on AVX512-BF16; emulated bf16 would be slower).
    Losses, variances and the optimiser state stay float32 either way.
    """
    if not enabled:
        return None, False
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, False
        return torch.float16, True
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16, False
    return None, False


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# ----- EMA -----------------------------------------------------------------------------------------
class EMA:
    """Exponential moving average of the floating-point parameters of some modules.

    Buffers are state, not weights (the Gumbel temperature reached in training): they are copied,
    so the final model uses the final temperature rather than an average over the schedule.
    """

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = modules
        self.shadow = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]
        self.averaged = [{k for k, p in m.named_parameters() if p.dtype.is_floating_point} for m in modules]

    @torch.no_grad()
    def update(self, decay: float) -> None:
        for m, shadow, averaged in zip(self.modules, self.shadow, self.averaged):
            for k, v in m.state_dict().items():
                if k in averaged:
                    shadow[k].mul_(decay).add_(v.detach(), alpha=1.0 - decay)
                else:
                    shadow[k].copy_(v)

    @torch.no_grad()
    def copy_to(self) -> None:
        """Load the averaged weights into the modules (the final model)."""
        for m, shadow in zip(self.modules, self.shadow):
            m.load_state_dict(shadow)


# ----- the loop ------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    device: str = "cpu"
    amp_dtype: str | None = None


def temperature_at(config: CpDistillerConfig, epoch: int) -> float:
    """Gumbel-softmax temperature for an epoch (0-based): exponential decay to a floor."""
    return max(config.temperature_start * math.exp(-config.temperature_decay * epoch), config.temperature_min)


def steps_per_epoch(n: int, config: CpDistillerConfig) -> int:
    base = max(1, math.ceil(n / config.batch_size))
    return max(base, math.ceil(config.min_steps / config.epochs)) if config.min_steps else base


def _batches(n: int, steps: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``steps`` mini-batches: a fresh permutation per pass; batches of nearly equal size (no size-1 tails)."""
    if steps <= math.ceil(n / batch_size):
        return np.array_split(rng.permutation(n), steps)
    passes = math.ceil(steps * batch_size / n)
    order = np.concatenate([rng.permutation(n) for _ in range(passes)])
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def train(module: CorrectionModule, data: TrainData, config: CpDistillerConfig, device: torch.device,
          progress: ProgressCallback | None = None,
          on_epoch: Callable[[dict[str, Any], EMA], None] | None = None) -> TrainResult:
    """Train ``module`` in place; on return it holds the EMA weights. ``on_epoch(record, ema)`` per epoch.

    The plan: AdamW (one lr for the representation, one for the discriminators) with a cosine schedule,
    autocast where the device has fast low precision, the GRL lambda ramp per step, the Gumbel
    temperature per epoch, an EMA of the weights per epoch; ``module.loss`` per mini-batch.
    """
    seed_everything(config.seed)
    loop = _Loop(module, data, config, device)
    ema = EMA(module.representation_modules())
    result = TrainResult(device=str(device), amp_dtype=None if loop.amp_dtype is None else str(loop.amp_dtype))
    t0 = time.perf_counter()
    report = progress or (lambda f, m: None)
    for epoch in range(config.epochs):
        t_epoch = time.perf_counter()
        tau = temperature_at(config, epoch)
        module.gmvae.temperature.fill_(tau)
        stats = loop.epoch(tau)
        loop.scheduler.step()
        ema.update(config.ema_alpha if epoch > 0 or config.epochs == 1 else 0.0)
        record = stats.record(epoch + 1)  # one host sync per epoch for the log
        record.update({"epochs": config.epochs, "lambda": loop.lam, "temperature": tau,
                       "lr": loop.scheduler.get_last_lr()[0],
                       "triplets": stats.n_triplets, "seconds": time.perf_counter() - t_epoch})
        _check_finite_record(record)
        result.history.append(record)
        if on_epoch is not None:
            on_epoch(record, ema)
        frac = (epoch + 1) / config.epochs
        eta = (time.perf_counter() - t0) * (1.0 / frac - 1.0)
        report(frac, f"epoch {epoch + 1}/{config.epochs} loss {record['loss']:.1f} eta {eta:.0f}s")
    ema.copy_to()
    module.eval()
    result.seconds = time.perf_counter() - t0
    result.steps = loop.step
    return result


def _check_finite_record(record: dict[str, Any]) -> None:
    if not all(math.isfinite(v) for v in record.values() if isinstance(v, float)):
        raise CpDistillerError(
            f"training diverged at epoch {record['epoch']} (non-finite loss): check the input for extreme "
            "values or lower the learning rate."
        )


class _Loop:
    """One training run's optimiser, schedules and mini-batch stream; ``epoch`` runs one pass of steps."""

    def __init__(self, module: CorrectionModule, data: TrainData, config: CpDistillerConfig,
                 device: torch.device) -> None:
        self.module, self.data, self.config, self.device = module, data, config, device
        self.rng = np.random.default_rng(config.seed)
        module.to(device).train()
        w_elbo, w_dis, w_con = config.loss_weights(module.n_gmvae_input)
        rep_params = [p for m in module.representation_modules() for p in m.parameters()]
        dis_params = list(module.discriminators.parameters())
        groups = [{"params": rep_params, "lr": config.lr}]
        if dis_params:
            groups.append({"params": dis_params, "lr": config.lr_discriminator})
        self.optimizer = _adamw(groups, config, device)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=config.epochs)
        self.amp_dtype, use_scaler = amp_settings(device, config.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.context = LossContext(w_elbo=w_elbo, w_dis=w_dis, w_con=w_con, soft_label_eps=config.soft_label_eps,
                                   triplet_margin=config.triplet_margin, adversary_encoder=config.adversary_encoder,
                                   adversary_objective=config.adversary_objective,
                                   adversary_view=config.adversary_view, triplet_view=config.triplet_view,
                                   amp_dtype=self.amp_dtype)
        self.use_triplets = data.triplets is not None and w_con > 0
        self.steps_per_epoch = steps_per_epoch(data.n, config)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.position = np.empty(data.n, dtype=np.int64)  # well index -> position in the current batch
        self.step = 0
        self.lam = 0.0

    def epoch(self, tau: float) -> _EpochStats:
        stats = _EpochStats(list(self.module.discriminators.keys()), self.device)
        self.lam = 0.0
        for batch in _batches(self.data.n, self.steps_per_epoch, self.config.batch_size, self.rng):
            self.lam = grl_lambda(self.step / self.total_steps, self.config.grl_gamma)
            out = self.module.loss(self._loss_batch(batch), replace(self.context, lam=self.lam, temperature=tau))
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(out.loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            stats.add(out)
            self.step += 1
        return stats

    def _loss_batch(self, batch: np.ndarray) -> LossBatch:
        """The batch's rows, its triplets' anchors, and the pairs' rows, gathered on the device."""
        data, device, b = self.data, self.device, len(batch)
        anchors = pos = neg = None
        if self.use_triplets:
            anchors, pos, neg = data.triplets.sample(batch)
            if len(anchors):
                self.position[batch] = np.arange(b)
                anchors = self.position[anchors]
            else:
                anchors = None
        detach_pairs = anchors is not None and not self.config.pair_gradients
        idx = batch if anchors is None or detach_pairs else np.concatenate([batch, pos, neg])
        idx_t = torch.from_numpy(idx).to(device, non_blocking=True)
        rows = idx_t[:b]
        pair_t = torch.from_numpy(np.concatenate([pos, neg])).to(device, non_blocking=True) if detach_pairs else None
        return LossBatch(
            x=data.X.index_select(0, idx_t), n=b,
            labels={ef: codes.index_select(0, rows) for ef, codes in data.labels.items()},
            soft_targets=data.soft_targets,
            e=None if data.E is None else data.E.index_select(0, idx_t),
            adversary_weight={ef: w.index_select(0, rows) for ef, w in data.adversary_weight.items()},
            anchors=None if anchors is None else torch.from_numpy(anchors).to(device),
            pair_x=None if pair_t is None else data.X.index_select(0, pair_t),
            pair_e=None if pair_t is None or data.E is None else data.E.index_select(0, pair_t),
        )


class _EpochStats:
    """Running, well-weighted sums of the logged terms over one epoch, kept on the device."""

    def __init__(self, effects: list[str], device: torch.device) -> None:
        self.effects = effects
        self.sums: dict[str, Tensor] = {}
        self.correct = {e: torch.zeros((), device=device) for e in effects}
        self.n_adv = {e: torch.zeros((), device=device) for e in effects}
        self.n_seen = 0
        self.n_triplets = 0

    def add(self, out: LossOutput) -> None:
        for ef, hits in out.correct.items():
            self.correct[ef] += hits
            self.n_adv[ef] += out.n_adversary[ef]
        self.n_triplets += out.n_triplets
        for k, v in out.log_terms().items():
            self.sums[k] = self.sums.get(k, 0.0) + v * out.n
        self.n_seen += out.n

    def record(self, epoch: int) -> dict[str, Any]:
        """Epoch means (triplet: per anchor) and discriminator accuracies over the wells they learn from."""
        record: dict[str, Any] = {"epoch": epoch}
        stacked = torch.stack([self.sums[k].float() for k in self.sums]).cpu().numpy() / max(self.n_seen, 1)
        record.update({k: float(v) for k, v in zip(self.sums, stacked)})
        if "triplet" in record and self.n_triplets:
            record["triplet"] = record["triplet"] * self.n_seen / self.n_triplets
        for ef in self.effects:
            record[f"acc_{ef}"] = float(self.correct[ef].item()) / max(float(self.n_adv[ef].item()), 1.0)
        return record


def _adamw(groups: list[dict[str, Any]], config: CpDistillerConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the fused kernel where this torch build has it for the device (the per-parameter
    loop costs ~20 % of a CPU step at 1,446 features), else the multi-tensor one. Same update rule."""
    try:
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, foreach=True)


def ema_state(module: CorrectionModule, ema: EMA) -> dict[str, Tensor]:
    """A state dict of ``module`` with the EMA weights in place of the representation modules' weights."""
    work = copy.deepcopy(module)
    for m, shadow in zip(work.representation_modules(), ema.shadow):
        m.load_state_dict(shadow)
    return {k: v.detach().cpu() for k, v in work.state_dict().items()}
