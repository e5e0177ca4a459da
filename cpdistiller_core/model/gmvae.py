"""The Gaussian-mixture VAE and the full correction network built around it.

GMVAE (K mixture components, latent z):
    q(y|x)    two LeakyReLU layers -> logits over K; y drawn by Gumbel-softmax at temperature tau
    q(z|x,y)  two LeakyReLU layers on [x, y] -> mean, variance (Softplus)
    p(z|y)    learned mean and variance (Softplus) per component, linear in y
    p(x|z)    two LeakyReLU layers -> x_hat (MSE reconstruction)
ELBO per well = sum_features (x - x_hat)^2 + KL(q(z|x,y) || p(z|y)) + KL(q(y|x) || Uniform(K)).

``CorrectionModule.loss`` assembles the training objective (terms and weights: ``model/loss.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .discriminators import Discriminator
from .heads import ProjectionHead
from .loss import LossBatch, LossContext, LossOutput, adversarial_loss, triplet_loss

_VAR_EPS = 1e-6


@dataclass
class Encoding:
    """Encoder outputs for a batch."""

    logits: Tensor   # [B, K]
    prob: Tensor     # [B, K] softmax(logits)
    y: Tensor        # [B, K] Gumbel-softmax sample
    mu: Tensor       # [B, L]
    var: Tensor      # [B, L]
    z: Tensor        # [B, L] reparameterised sample

    def first(self, n: int) -> Encoding:
        """The encoding of the first ``n`` rows."""
        return Encoding(**{k: v[:n] for k, v in vars(self).items()})


def _mlp(n_in: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden), nn.LeakyReLU())


def gumbel_softmax(logits: Tensor, temperature: float) -> Tensor:
    """Relaxed one-hot sample: softmax((logits + Gumbel noise) / temperature)."""
    u = torch.rand_like(logits).clamp_(1e-10, 1.0 - 1e-7)
    return F.softmax((logits - torch.log(-torch.log(u))) / temperature, dim=-1)


class GMVAE(nn.Module):
    """Gaussian-mixture VAE over ``n_input`` features (paper: hidden 512, latent 50, K = 10)."""

    def __init__(self, n_input: int, hidden: int = 512, latent: int = 50, n_components: int = 10,
                 decoder_levels: Mapping[str, int] | None = None) -> None:
        super().__init__()
        self.n_input, self.hidden, self.latent, self.n_components = n_input, hidden, latent, n_components
        self.qy_x = _mlp(n_input, hidden)
        self.logits = nn.Linear(hidden, n_components)
        self.qz_xy = _mlp(n_input + n_components, hidden)
        self.z_mu = nn.Linear(hidden, latent)
        self.z_var = nn.Sequential(nn.Linear(hidden, latent), nn.Softplus())
        self.prior_mu = nn.Linear(n_components, latent)
        self.prior_var = nn.Sequential(nn.Linear(n_components, latent), nn.Softplus())
        self.px_z = nn.Sequential(_mlp(latent, hidden), nn.Linear(hidden, n_input))
        # Conditional decoder (ours, optional): a learned offset per technical level is added to the
        # decoder's first hidden layer, so z need not carry batch/position to reconstruct the input.
        self.decoder_covariates = nn.ModuleDict(
            {e: nn.Embedding(int(n), hidden) for e, n in (decoder_levels or {}).items()})
        for emb in self.decoder_covariates.values():
            nn.init.zeros_(emb.weight)
        # Temperature reached in training: inference uses softmax(logits / tau) without noise.
        self.register_buffer("temperature", torch.tensor(1.0))

    def encode(self, x: Tensor, temperature: float, sample: bool = True) -> Encoding:
        logits = self.logits(self.qy_x(x))
        prob = F.softmax(logits, dim=-1)
        y = gumbel_softmax(logits, temperature) if sample else F.softmax(logits / temperature, dim=-1)
        h = self.qz_xy(torch.cat([x, y.to(x.dtype)], dim=1))
        mu = self.z_mu(h)
        var = self.z_var(h) + _VAR_EPS
        z = mu + torch.randn_like(mu) * var.sqrt() if sample else mu
        return Encoding(logits, prob, y, mu, var, z)

    def decode(self, z: Tensor, levels: Mapping[str, Tensor] | None = None) -> Tensor:
        """x_hat from z; ``levels`` (effect -> level codes) feed the conditional decoder when it has one."""
        if not len(self.decoder_covariates):
            return self.px_z(z)
        h = self.decoder_first_layer(z)
        for effect, table in self.decoder_covariates.items():
            h = h + table(levels[effect]).to(h.dtype)
        return self.decode_hidden(h)

    def decoder_first_layer(self, z: Tensor) -> Tensor:
        """The decoder's first hidden layer before its activation: where the level offsets are added."""
        return self.px_z[0][0](z)

    def decode_hidden(self, h: Tensor) -> Tensor:
        """x_hat from the first hidden layer (``decoder_first_layer`` plus any level offsets)."""
        _, act1, second, act2 = self.px_z[0]
        return self.px_z[1](act2(second(act1(h))))

    def prior(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.prior_mu(y), self.prior_var(y) + _VAR_EPS

    def elbo_terms(self, x: Tensor, enc: Encoding, x_hat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-well (reconstruction, KL_z, KL_y), each [B], computed in float32."""
        x, x_hat = x.float(), x_hat.float()
        recon = (x_hat - x).pow(2).sum(dim=1)
        p_mu, p_var = self.prior(enc.y.float())
        mu, var, p_mu, p_var = enc.mu.float(), enc.var.float(), p_mu.float(), p_var.float()
        # Closed-form KL between diagonal Gaussians (lower variance than the one-sample estimate).
        kl_z = 0.5 * (torch.log(p_var) - torch.log(var) + (var + (mu - p_mu).pow(2)) / p_var - 1.0).sum(dim=1)
        logq = F.log_softmax(enc.logits.float(), dim=-1)
        kl_y = (logq.exp() * logq).sum(dim=1) + math.log(self.n_components)
        return recon, kl_z, kl_y

    @torch.no_grad()
    def posterior_mean(self, x: Tensor) -> Tensor:
        """E[z | x] under the deterministic component weights softmax(logits / tau_final)."""
        return self.encode(x, float(self.temperature), sample=False).mu


class CorrectionModule(nn.Module):
    """GMVAE + projection head + one discriminator per effect (+ the optional image joint module).

    ``n_levels`` maps effect name -> number of levels. ``joint`` (a ``JointModule``) turns per-well
    image features into ``fused_dim`` values appended to the CellProfiler features before the GMVAE.
    """

    def __init__(self, n_input: int, n_levels: Mapping[str, int], hidden: int = 512, latent: int = 50,
                 n_components: int = 10, discriminator_hidden: int = 128,
                 joint: nn.Module | None = None, decoder_levels: Mapping[str, int] | None = None) -> None:
        super().__init__()
        self.n_cp = n_input
        self.joint = joint
        n_joint = int(joint.fused_dim) if joint is not None else 0
        self.gmvae = GMVAE(n_input + n_joint, hidden, latent, n_components, decoder_levels)
        self.head = ProjectionHead(latent)
        self.discriminators = nn.ModuleDict(
            {e: Discriminator(latent, int(n), discriminator_hidden) for e, n in n_levels.items()}
        )

    @property
    def n_gmvae_input(self) -> int:
        return self.gmvae.n_input

    def representation_modules(self) -> list[nn.Module]:
        """The parts kept in the final model (EMA-averaged): everything but the discriminators."""
        mods: list[nn.Module] = [self.gmvae, self.head]
        if self.joint is not None:
            mods.append(self.joint)
        return mods

    def gmvae_input(self, x: Tensor, e: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """[x, joint output] and the joint module's per-well reconstruction loss (None without images
        and for the paper variant, which learns through the GMVAE's reconstruction of its output)."""
        if self.joint is None:
            return x, None
        if e is None:
            raise ValueError("this model was trained with image features: pass them")
        z_e, recon = self.joint(e)
        return torch.cat([x, z_e.to(x.dtype)], dim=1), recon

    @torch.no_grad()
    def embed(self, x: Tensor, e: Tensor | None = None) -> Tensor:
        """The corrected embedding: posterior mean of z."""
        x_in, _ = self.gmvae_input(x, e)
        return self.gmvae.posterior_mean(x_in)

    def loss(self, batch: LossBatch, context: LossContext | None = None) -> LossOutput:
        """The training loss of one mini-batch and its parts (``model.loss`` documents the sum).

        Random draws, in order: the batch's Gumbel and z noise, then the detached pairs' (if any).
        """
        context = context or LossContext()
        n = batch.n
        amp = context.autocast(batch.x.device.type)
        with amp:
            x_in, joint_recon = self.gmvae_input(batch.x, batch.e)
            enc = self.gmvae.encode(x_in, context.temperature)
            x_hat = self.gmvae.decode(enc.z[:n], {ef: batch.labels[ef] for ef in self.gmvae.decoder_covariates})
        z_pairs = None
        if batch.pair_x is not None:
            with torch.no_grad(), amp:
                pairs = self.gmvae.encode(self.gmvae_input(batch.pair_x, batch.pair_e)[0], context.temperature)
                z_pairs = pairs.mu if context.triplet_view == "mean" else pairs.z
        batch_enc = enc.first(n)
        # Compact joint module: z_e is a fixed target (it learns from its own reconstruction, not by
        # shrinking z_e). Paper variant (no loss of its own): the whole [x, output] is the target, as
        # in the reference code.
        target = x_in[:n] if joint_recon is None else torch.cat([batch.x[:n], x_in[:n, self.n_cp:].detach()], 1)
        recon, kl_z, kl_y = self.gmvae.elbo_terms(target, batch_enc, x_hat)
        elbo = (recon + kl_z + kl_y).mean()
        out = LossOutput(loss=context.w_elbo * elbo, n=n, recon=recon.mean().detach(), kl_z=kl_z.mean().detach(),
                         kl_y=kl_y.mean().detach(), elbo=elbo.detach())
        if joint_recon is not None:
            jr = joint_recon[:n].float().mean() * self.joint.n_pooled  # summed over features like the ELBO
            out.loss = out.loss + context.w_elbo * jr
            out.joint_recon = jr.detach()
        if len(self.discriminators):
            seen = batch_enc.mu if context.adversary_view == "mean" else batch_enc.z
            out.loss = out.loss + context.w_dis * adversarial_loss(self.discriminators, seen, batch, context, out)
        if batch.anchors is not None:
            mine = enc.mu if context.triplet_view == "mean" else enc.z
            with amp:
                h = self.head(mine if z_pairs is None else torch.cat([mine, z_pairs]))
            tl = triplet_loss(h, batch.anchors, n, context.triplet_margin)
            out.loss = out.loss + context.w_con * tl
            out.triplet, out.n_triplets = tl.detach(), len(batch.anchors)
        return out
