"""The training objective of :class:`~cpdistiller_core.model.gmvae.CorrectionModule`, in scvi-tools style.

``CorrectionModule.loss(batch, context)`` returns a :class:`LossOutput`; the training loop only
backpropagates ``LossOutput.loss`` and logs the rest. The total is the weighted sum

    loss = w_elbo * mean(recon + kl_z + kl_y)            (the GMVAE's negative ELBO)
         + w_elbo * joint_recon                           (image joint module, when there is one)
         + w_dis * sum_effects discriminator[effect]      (through gradient reversal)
         + w_con * triplet                                (contrastive term on the projection head)

where ``discriminator[effect]`` is the discriminator's soft-label cross-entropy, averaged over the
wells it learns from (``adversary_weight[effect]``; every well when the effect has no weight), plus,
for a weighted effect with ``adversary_encoder = "all"``, the cross-entropy of the same discriminator
frozen and applied to every well (only the encoder learns from it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .discriminators import grad_reverse, soft_label_cross_entropy


@dataclass
class LossContext:
    """Training-loop state the loss reads: the schedules' current values, the weights and switches."""

    lam: float = 1.0                    # gradient-reversal strength (the GRL schedule's value)
    temperature: float = 1.0            # Gumbel-softmax temperature (its schedule's value)
    w_elbo: float = 1.0
    w_dis: float = 1.0
    w_con: float = 1.0
    soft_label_eps: float = 0.1         # weight of the soft targets in the discriminators' cross-entropy
    triplet_margin: float = 1.0
    adversary_encoder: str = "same"     # "all": frozen discriminators hide every well's labels
    adversary_objective: str = "reverse"  # "confusion": encoder pulled to uniform predictions (ablation)
    adversary_view: str = "sample"      # what the discriminators read: z ("sample") or its mean ("mean")
    triplet_view: str = "sample"        # what the projection head reads for the triplets: z or its mean
    amp_dtype: torch.dtype | None = None  # autocast dtype for the forward passes (None: float32)

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.amp_dtype)


@dataclass
class LossBatch:
    """One mini-batch of ``n`` wells (and the triplet pairs drawn for it), already on the device."""

    x: Tensor                           # [n (+ 2m), d] batch wells, then positives and negatives when
    #                                     pair gradients flow (m = number of anchors)
    n: int                              # wells in the batch proper
    labels: Mapping[str, Tensor]        # effect -> [n] level codes
    soft_targets: Mapping[str, Tensor]  # effect -> [levels, levels] soft-label table
    e: Tensor | None = None             # image features, rows as ``x``
    # effect -> [n] 0/1: the wells that effect's discriminator learns from (an effect not named: every well)
    adversary_weight: Mapping[str, Tensor] | None = None
    anchors: Tensor | None = None       # [m] positions in the batch of the triplet anchors
    pair_x: Tensor | None = None        # [2m] positives then negatives, encoded without gradient
    pair_e: Tensor | None = None        # (pair_gradients off); None when they are rows of ``x``


@dataclass
class LossOutput:
    """The total loss to backpropagate and its parts (detached), for one mini-batch of ``n`` wells."""

    loss: Tensor                        # the total, with its graph
    n: int
    recon: Tensor                       # batch means of the per-well ELBO terms
    kl_z: Tensor
    kl_y: Tensor
    elbo: Tensor                        # mean(recon + kl_z + kl_y)
    joint_recon: Tensor | None = None   # image joint module's reconstruction loss (summed over features)
    # discriminator = sum over effects of discriminator_per_effect (+ hidden_per_effect), before w_dis
    discriminator: Tensor | None = None
    discriminator_per_effect: dict[str, Tensor] = field(default_factory=dict)  # weighted mean over adversary wells
    hidden_per_effect: dict[str, Tensor] = field(default_factory=dict)  # frozen discriminators, every well
    correct: dict[str, Tensor] = field(default_factory=dict)  # (weighted) wells each discriminator gets right
    n_adversary: dict[str, Tensor | int] = field(default_factory=dict)  # per effect: wells (weight) it learns from
    triplet: Tensor | None = None       # mean triplet margin loss per anchor
    n_triplets: int = 0

    @property
    def accuracy(self) -> dict[str, Tensor]:
        """Per effect, the discriminator's accuracy over the wells it learns from."""
        return {e: c / torch.as_tensor(self.n_adversary[e], dtype=torch.float32, device=c.device).clamp_min(1.0)
                for e, c in self.correct.items()}

    def log_terms(self) -> dict[str, Tensor]:
        """The values the training log averages over wells, in the log's column order.

        ``triplet`` is scaled by anchors / wells so that the epoch's well-weighted sum, rescaled by
        wells / anchors, is the mean per anchor.
        """
        terms = {"recon": self.recon, "kl_z": self.kl_z, "kl_y": self.kl_y, "elbo": self.elbo}
        if self.joint_recon is not None:
            terms["joint_recon"] = self.joint_recon
        if self.discriminator is not None:
            terms["discriminator"] = self.discriminator
        if self.triplet is not None:
            terms["triplet"] = self.triplet * (self.n_triplets / self.n)
        terms["loss"] = self.loss.detach()
        return terms


def adversarial_loss(discriminators: nn.ModuleDict, z: Tensor, batch: LossBatch, context: LossContext,
                     out: LossOutput) -> Tensor:
    """Sum over effects of the discriminators' losses on the batch's ``z``; fills ``out``'s adversary fields.

    An effect without an ``adversary_weight`` trains its discriminator and (reversed) the encoder on
    every well. With one, the discriminator learns from the weighted wells only; with
    ``adversary_encoder = "all"`` it learns on a detached ``z`` and the encoder is pushed on every well
    through the frozen discriminator.
    """
    weights = batch.adversary_weight or {}
    confusion = context.adversary_objective == "confusion"
    hidden_effects = {ef for ef in discriminators
                      if confusion or (ef in weights and context.adversary_encoder == "all")}
    amp = context.autocast(z.device.type)
    with amp:
        z_reversed = grad_reverse(z, context.lam) if len(hidden_effects) < len(discriminators) else None
        logits = {ef: discriminators[ef](z.detach() if ef in hidden_effects else z_reversed) for ef in discriminators}
    dis = torch.zeros((), device=z.device)
    for ef in discriminators:
        target, w = batch.labels[ef], weights.get(ef)
        per_well = soft_label_cross_entropy(logits[ef], target, batch.soft_targets[ef], context.soft_label_eps,
                                            reduction="none")
        hit = (logits[ef].detach().argmax(dim=1) == target).float()
        if w is None:
            term = per_well.mean()
            out.correct[ef], out.n_adversary[ef] = hit.sum(), batch.n
        else:
            term = (per_well * w).sum() / w.sum().clamp_min(1.0)
            out.correct[ef], out.n_adversary[ef] = (hit * w).sum(), w.sum()
        dis = dis + term
        out.discriminator_per_effect[ef] = term.detach()
        if confusion:
            hidden = confuse(discriminators[ef], z, context.lam, amp)
        elif ef in hidden_effects:
            hidden = hide_from(discriminators[ef], z, context.lam, target, batch.soft_targets[ef],
                               context.soft_label_eps, amp)
        else:
            continue
        dis = dis + hidden
        out.hidden_per_effect[ef] = hidden.detach()
    out.discriminator = dis.detach()
    return dis


def hide_from(discriminator: nn.Module, z: Tensor, lam: float, target: Tensor, soft: Tensor, eps: float,
              amp: contextlib.AbstractContextManager[Any]) -> Tensor:
    """Reversed-gradient loss of a *frozen* discriminator over every well: only the encoder learns from it."""
    frozen = {k: v.detach() for k, v in discriminator.named_parameters()}
    with amp:
        logits = torch.func.functional_call(discriminator, frozen, (grad_reverse(z, lam),))
    return soft_label_cross_entropy(logits, target, soft, eps, reduction="none").mean()


def confuse(discriminator: nn.Module, z: Tensor, lam: float, amp: contextlib.AbstractContextManager[Any]) -> Tensor:
    """Confusion loss (Tzeng et al. 2015): cross-entropy of a *frozen* discriminator's prediction on
    every well against the uniform distribution, times ``lam``; its minimum is a discriminator that
    cannot tell the levels apart, which a relabelling of the levels does not reach (unlike reversal)."""
    frozen = {k: v.detach() for k, v in discriminator.named_parameters()}
    with amp:
        logits = torch.func.functional_call(discriminator, frozen, (z,))
    return -lam * torch.log_softmax(logits.float(), dim=1).mean(dim=1).mean()


def triplet_loss(h: Tensor, anchors: Tensor, n: int, margin: float) -> Tensor:
    """Triplet margin loss (L2) of rows ``anchors`` of ``h`` against rows n..n+m-1 (positives) and n+m.. (negatives)."""
    m = len(anchors)
    return F.triplet_margin_loss(h[anchors].float(), h[n:n + m].float(), h[n + m:].float(), margin=margin, p=2.0)
