"""The training loop: mini-batches indexed from one device tensor, streamed triplets, GRL schedule,
Gumbel temperature annealing, EMA of weights, device choice and mixed precision.

The loop knows nothing about files; ``runs.py`` writes logs and checkpoints through ``on_epoch``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from .config import CpDistillerConfig
from .errors import CpDistillerError
from .model.discriminators import grad_reverse, grl_lambda, soft_label_cross_entropy
from .model.gmvae import CorrectionModule
from .progress import ProgressCallback


class TripletSource(Protocol):
    def sample(self, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


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
class TrainData:
    """Everything the loop reads, already on the device."""

    X: Tensor                          # [n, d] model input (scaled / sphered)
    labels: Mapping[str, Tensor]       # effect -> [n] int64 codes
    soft_targets: Mapping[str, Tensor]  # effect -> [levels, levels] target table
    E: Tensor | None = None            # [n, f] image features for the joint module
    triplets: TripletSource | None = None
    adversary_weight: Tensor | None = None  # [n] float 0/1: wells the discriminators learn from (None: all)

    @property
    def n(self) -> int:
        return int(self.X.shape[0])


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
    """Train ``module`` in place; on return it holds the EMA weights. ``on_epoch(record, ema)`` per epoch."""
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    module.to(device).train()
    n = data.n
    d_in = module.n_gmvae_input
    w_elbo, w_dis, w_con = config.loss_weights(d_in)
    effects = list(module.discriminators.keys())
    rep_params = [p for m in module.representation_modules() for p in m.parameters()]
    dis_params = list(module.discriminators.parameters())
    groups = [{"params": rep_params, "lr": config.lr}]
    if dis_params:
        groups.append({"params": dis_params, "lr": config.lr_discriminator})
    optimizer = _adamw(groups, config, device)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    amp_dtype, use_scaler = amp_settings(device, config.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    ema = EMA(module.representation_modules())
    ema_decay = config.ema_alpha
    triplet_loss = nn.TripletMarginLoss(margin=config.triplet_margin, p=2.0)
    # adversary_encoder "all": discriminators learn from the weighted wells on a detached z, and
    # _hide_from pushes the encoder on every well through the frozen discriminators.
    hide_all = data.adversary_weight is not None and config.adversary_encoder == "all"
    spe = steps_per_epoch(n, config)
    total_steps = spe * config.epochs
    position = np.empty(n, dtype=np.int64)  # well index -> position in the current batch
    result = TrainResult(device=str(device), amp_dtype=None if amp_dtype is None else str(amp_dtype))
    t0 = time.perf_counter()
    step = 0
    report = progress or (lambda f, m: None)
    for epoch in range(config.epochs):
        t_epoch = time.perf_counter()
        tau = temperature_at(config, epoch)
        module.gmvae.temperature.fill_(tau)
        sums: dict[str, Tensor] = {}
        correct = {e: torch.zeros((), device=device) for e in effects}
        n_adv = torch.zeros((), device=device)
        n_seen, n_triplets = 0, 0
        lam = 0.0
        for batch in _batches(n, spe, config.batch_size, rng):
            lam = grl_lambda(step / total_steps, config.grl_gamma)
            b = len(batch)
            anchors = pos = neg = None
            if data.triplets is not None and w_con > 0:
                anchors, pos, neg = data.triplets.sample(batch)
                if len(anchors):
                    position[batch] = np.arange(b)
                    anchors = position[anchors]
                    n_triplets += len(anchors)
                else:
                    anchors = None
            detach_pairs = anchors is not None and not config.pair_gradients
            idx = batch if anchors is None or detach_pairs else np.concatenate([batch, pos, neg])
            idx_t = torch.from_numpy(idx).to(device, non_blocking=True)
            x = data.X.index_select(0, idx_t)
            e = data.E.index_select(0, idx_t) if data.E is not None else None
            ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
            with ctx:
                x_in, joint_recon = module.gmvae_input(x, e)
                enc = module.gmvae.encode(x_in, tau)
                levels = {ef: data.labels[ef].index_select(0, idx_t[:b]) for ef in module.gmvae.decoder_covariates}
                x_hat = module.gmvae.decode(enc.z[:b], levels)
            if detach_pairs:
                pair_t = torch.from_numpy(np.concatenate([pos, neg])).to(device, non_blocking=True)
                with torch.no_grad(), ctx:
                    xp, _ = module.gmvae_input(data.X.index_select(0, pair_t),
                                               None if data.E is None else data.E.index_select(0, pair_t))
                    z_pairs = module.gmvae.encode(xp, tau).z
            batch_enc = _slice(enc, b)
            # Reconstruct z_e as a fixed target: the joint module learns from its own reconstruction,
            # not by shrinking z_e to make the GMVAE's job easier.
            target = x_in[:b] if joint_recon is None else torch.cat([x[:b], x_in[:b, module.n_cp:].detach()], 1)
            recon, kl_z, kl_y = module.gmvae.elbo_terms(target, batch_enc, x_hat)
            elbo = (recon + kl_z + kl_y).mean()
            loss = w_elbo * elbo
            terms = {"recon": recon.mean().detach(), "kl_z": kl_z.mean().detach(), "kl_y": kl_y.mean().detach(),
                     "elbo": elbo.detach()}
            if joint_recon is not None:
                jr = joint_recon[:b].float().mean() * module.joint.n_pooled  # summed over features like the ELBO
                loss = loss + w_elbo * jr
                terms["joint_recon"] = jr.detach()
            if effects:
                with ctx:
                    z_rev = batch_enc.z.detach() if hide_all else grad_reverse(batch_enc.z, lam)
                    logits = {ef: module.discriminators[ef](z_rev) for ef in effects}
                dis = torch.zeros((), device=device)
                w = None if data.adversary_weight is None else data.adversary_weight.index_select(0, idx_t[:b])
                for ef in effects:
                    target_ef = data.labels[ef].index_select(0, idx_t[:b])
                    per_well = soft_label_cross_entropy(logits[ef], target_ef, data.soft_targets[ef],
                                                        config.soft_label_eps, reduction="none")
                    hit = (logits[ef].detach().argmax(dim=1) == target_ef).float()
                    if w is None:
                        dis = dis + per_well.mean()
                        correct[ef] += hit.sum()
                    else:
                        dis = dis + (per_well * w).sum() / w.sum().clamp_min(1.0)
                        correct[ef] += (hit * w).sum()
                    if hide_all:
                        dis = dis + _hide_from(module.discriminators[ef], batch_enc.z, lam, target_ef,
                                               data.soft_targets[ef], config.soft_label_eps, ctx)
                n_adv += b if w is None else w.sum()
                loss = loss + w_dis * dis
                terms["discriminator"] = dis.detach()
            if anchors is not None:
                m = len(pos)
                with ctx:
                    h = module.head(enc.z if not detach_pairs else torch.cat([enc.z, z_pairs]))
                tl = triplet_loss(h[torch.from_numpy(anchors).to(device)].float(),
                                  h[b:b + m].float(), h[b + m:].float())
                loss = loss + w_con * tl
                terms["triplet"] = tl.detach() * (m / b)  # weighted by triplets so the epoch mean is per anchor
            terms["loss"] = loss.detach()
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v * b
            n_seen += b
            step += 1
        scheduler.step()
        ema.update(ema_decay if epoch > 0 or config.epochs == 1 else 0.0)
        # One host sync per epoch for the log.
        record: dict[str, Any] = {"epoch": epoch + 1}
        stacked = torch.stack([sums[k].float() for k in sums]).cpu().numpy() / max(n_seen, 1)
        record.update({k: float(v) for k, v in zip(sums, stacked)})
        if "triplet" in record and n_triplets:
            record["triplet"] = record["triplet"] * n_seen / n_triplets
        n_adv_epoch = float(n_adv.item())
        for ef in effects:  # accuracy over the wells the discriminators learn from
            record[f"acc_{ef}"] = float(correct[ef].item()) / max(n_adv_epoch, 1.0)
        record.update({"lambda": lam, "temperature": tau, "lr": scheduler.get_last_lr()[0],
                       "triplets": n_triplets, "seconds": time.perf_counter() - t_epoch})
        if not all(math.isfinite(v) for k, v in record.items() if isinstance(v, float)):
            raise CpDistillerError(
                f"training diverged at epoch {epoch + 1} (non-finite loss): check the input for extreme "
                "values or lower the learning rate."
            )
        result.history.append(record)
        if on_epoch is not None:
            on_epoch(record, ema)
        frac = (epoch + 1) / config.epochs
        eta = (time.perf_counter() - t0) * (1.0 / frac - 1.0)
        report(frac, f"epoch {epoch + 1}/{config.epochs} loss {record['loss']:.1f} eta {eta:.0f}s")
    ema.copy_to()
    module.eval()
    result.seconds = time.perf_counter() - t0
    result.steps = step
    return result


def _hide_from(discriminator: nn.Module, z: Tensor, lam: float, target: Tensor, soft: Tensor, eps: float,
               ctx: Any) -> Tensor:
    """Reversed-gradient loss of a *frozen* discriminator over every well: only the encoder learns from it."""
    frozen = {k: v.detach() for k, v in discriminator.named_parameters()}
    with ctx:
        logits = torch.func.functional_call(discriminator, frozen, (grad_reverse(z, lam),))
    return soft_label_cross_entropy(logits, target, soft, eps, reduction="none").mean()


def _adamw(groups: list[dict[str, Any]], config: CpDistillerConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the fused kernel where this torch build has it for the device (the per-parameter
    loop costs ~20 % of a CPU step at 1,446 features), else the multi-tensor one. Same update rule."""
    try:
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, foreach=True)


def _slice(enc: Any, b: int) -> Any:
    return type(enc)(**{k: v[:b] for k, v in vars(enc).items()})


def ema_state(module: CorrectionModule, ema: EMA) -> dict[str, Tensor]:
    """A state dict of ``module`` with the EMA weights in place of the representation modules' weights."""
    work = copy.deepcopy(module)
    for m, shadow in zip(work.representation_modules(), ema.shadow):
        m.load_state_dict(shadow)
    return {k: v.detach().cpu() for k, v in work.state_dict().items()}
