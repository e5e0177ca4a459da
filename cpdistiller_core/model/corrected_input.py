"""The embedding as the model input minus the technical shift the conditional decoder learnt (ours).

The paper's embedding is the posterior mean of z. With ``output="corrected_input"`` the trained network
is used the other way round, as scvi-tools' ``get_normalized_expression(transform_batch=...)`` uses its
decoder: for each well,

    shift(x)  = decoder(z, the well's batch/row/column) - decoder(z, the reference levels)
    corrected = x_in - shift(x)                      (x_in: the model input, in its standardised space)
    embedding = PCA(corrected)[:latent_dim]          (PCA fitted once, on the training wells)

with z the posterior mean. The reference of an effect is the level-frequency-weighted mean of the
decoder's learnt level offsets, so the shift averages to about zero over the screen. Everything the
decoder does not attribute to a level stays in the well, as in the input: the relations between
perturbations the latent space can lose are kept (benchmarks/README.md "The input minus the decoder's
technical shift"). Only effects the decoder is told are removed; the caller checks that there are some.

The PCA is computed from a features x features covariance accumulated in row blocks: memory is
linear in wells.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .gmvae import CorrectionModule

BLOCK = 4096


@dataclass
class CorrectedInputProjection:
    """Reference level offsets and the PCA that turn a well's corrected input into its embedding.

    Attributes
    ----------
    reference
        Effect -> the decoder's hidden offset used as the reference level ([hidden]).
    mean, components
        The PCA of the training wells' corrected input: [d] and [d, k].
    explained
        Share of the corrected input's variance each component explains ([k]).
    """

    reference: dict[str, np.ndarray]
    mean: np.ndarray
    components: np.ndarray
    explained: np.ndarray

    @property
    def n_components(self) -> int:
        return int(self.components.shape[1])

    # ----- fitting -------------------------------------------------------------------------------
    @classmethod
    def fit(cls, module: CorrectionModule, blocks: Iterable[tuple[Tensor, Tensor | None, dict[str, Tensor]]],
            codes: Mapping[str, np.ndarray], n_components: int) -> CorrectedInputProjection:
        """Fit on the training wells.

        ``blocks`` are (model input, image features or None, effect -> level codes) in row blocks; one
        pass accumulates the mean and covariance the PCA comes from. ``codes`` are all training wells'
        level codes, for the level frequencies of the reference.
        """
        gmvae = module.gmvae
        reference = {}
        for effect, table in gmvae.decoder_covariates.items():
            freq = np.bincount(codes[effect], minlength=table.num_embeddings).astype(np.float64)
            weight = table.weight.detach().float().cpu().numpy().astype(np.float64)
            reference[effect] = (freq / freq.sum() @ weight).astype(np.float32)
        self = cls(reference, np.zeros(0, np.float32), np.zeros((0, 0), np.float32), np.zeros(0, np.float32))
        n, total, outer = 0, None, None
        for x, e, levels in blocks:
            y = self.corrected(module, x, e, levels).double()
            if total is None:
                total = torch.zeros(y.shape[1], dtype=torch.float64, device=y.device)
                outer = torch.zeros(y.shape[1], y.shape[1], dtype=torch.float64, device=y.device)
            n += y.shape[0]
            total += y.sum(0)
            outer += y.T @ y
        assert total is not None and outer is not None and n > 1
        mean = total / n
        cov = (outer - n * torch.outer(mean, mean)) / (n - 1)
        values, vectors = torch.linalg.eigh(cov.cpu())
        k = int(min(n_components, n - 1, cov.shape[0]))
        order = torch.argsort(values, descending=True)[:k]
        comps = vectors[:, order]
        signs = torch.sign(comps[comps.abs().argmax(0), torch.arange(k)])  # largest loading positive
        comps = comps * torch.where(signs == 0, 1.0, signs)
        explained = values[order].clamp(min=0) / values.clamp(min=0).sum().clamp(min=1e-12)
        self.mean = mean.float().cpu().numpy()
        self.components = comps.float().numpy()
        self.explained = explained.float().numpy()
        return self

    # ----- applying ------------------------------------------------------------------------------
    @torch.no_grad()
    def corrected(self, module: CorrectionModule, x: Tensor, e: Tensor | None,
                  levels: Mapping[str, Tensor]) -> Tensor:
        """The model input (with the joint module's image features, if any) minus the technical shift.

        ``levels``: effect -> level codes; a code of -1 (a level the model has not seen) gets no shift
        for that effect.
        """
        gmvae = module.gmvae
        x_in, _ = module.gmvae_input(x, e)
        hidden = gmvae.decoder_first_layer(gmvae.posterior_mean(x_in))
        observed, reference = hidden, hidden
        for effect, table in gmvae.decoder_covariates.items():
            code = levels[effect]
            ref = torch.as_tensor(self.reference[effect], device=hidden.device)
            observed = observed + torch.where((code >= 0)[:, None], table(code.clamp(min=0)), ref)
            reference = reference + ref
        return x_in - (gmvae.decode_hidden(observed) - gmvae.decode_hidden(reference))

    @torch.no_grad()
    def embed(self, module: CorrectionModule, x: Tensor, e: Tensor | None, levels: Mapping[str, Tensor]) -> Tensor:
        """The embedding of one block: the corrected input projected on the principal components."""
        return self.project(self.corrected(module, x, e, levels))

    def project(self, y: Tensor) -> Tensor:
        """Corrected input rows (``corrected``) projected on the principal components."""
        mean = torch.as_tensor(self.mean, device=y.device)
        return (y - mean) @ torch.as_tensor(self.components, device=y.device)

    # ----- saving --------------------------------------------------------------------------------
    def tensors(self) -> dict[str, Tensor]:
        out = {"mean": self.mean, "components": self.components, "explained": self.explained}
        out.update({f"reference/{e}": v for e, v in self.reference.items()})
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}

    @classmethod
    def from_tensors(cls, t: Mapping[str, Tensor]) -> CorrectedInputProjection:
        reference = {k.split("/", 1)[1]: v.numpy() for k, v in t.items() if k.startswith("reference/")}
        return cls(reference, t["mean"].numpy(), t["components"].numpy(), t["explained"].numpy())
