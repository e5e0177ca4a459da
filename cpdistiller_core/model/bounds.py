"""Sane bounds on a model's sizes, checked before any tensor is allocated.

A ``model.json`` (or a settings file) is user-writable: ``hidden_dim = 1e7`` would otherwise allocate
until the kernel kills the process. Each size must be a positive integer below its bound, and the
whole model (an estimate of its parameter count, from the same layer sizes as
:class:`~cpdistiller_core.model.gmvae.CorrectionModule`) must fit in ``MAX_PARAMETERS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import CpDistillerError

# Far above anything useful (the paper: hidden 512, latent 50, K = 10, discriminators 128).
SIZE_LIMITS: dict[str, int] = {
    "hidden_dim": 16_384,
    "latent_dim": 4_096,
    "n_components": 1_024,
    "discriminator_hidden": 16_384,
}
MAX_FEATURES = 200_000        # model input columns (CellProfiler features, or PCs)
MAX_LEVELS = 100_000          # levels of one effect (batches, rows, columns)
JOINT_LIMITS: dict[str, int] = {"n_features": 1_000_000, "pool": 100_000, "out_dim": 4_096,
                                "attention_channels": 4_096}
MAX_PARAMETERS = 500_000_000  # 2 GB of float32 weights, before optimiser state


def check_architecture(config: Any, n_features: int, levels: Mapping[str, int], *,
                       joint: Mapping[str, Any] | None = None, source: str | None = None) -> None:
    """Raise a :class:`CpDistillerError` naming ``source`` and the field when a size is not a positive
    integer within bounds, or the model would exceed ``MAX_PARAMETERS``.

    ``config``: a CpDistillerConfig (or anything with the ``SIZE_LIMITS`` attributes); ``levels``: the
    number of levels per effect; ``joint``: the image joint module's settings, if any.
    """
    where = f"{source}: " if source else ""
    sizes = {name: _size(getattr(config, name, None), name, limit, where) for name, limit in SIZE_LIMITS.items()}
    n_in = _size(n_features, "number of features", MAX_FEATURES, where)
    n_levels = {str(e): _size(n, f"number of {e} levels", MAX_LEVELS, where) for e, n in levels.items()}
    joint_params = 0
    if joint is not None:
        j = {k: _size(joint.get(k, 1), f"joint {k}", lim, where) for k, lim in JOINT_LIMITS.items()}
        from .joint import LEGACY_VARIANT, VARIANTS, fused_width, pooled_size

        variant = joint.get("variant", LEGACY_VARIANT)  # files from before the variant was recorded
        if variant not in VARIANTS:
            raise CpDistillerError(f"{where}unknown joint module variant {variant!r} (one of {list(VARIANTS)}).")
        pooled = max(1, pooled_size(j["n_features"], j["pool"], variant))
        n_in += fused_width({**j, "variant": variant})
        joint_params = 3 * pooled * j["out_dim"]
    total = joint_params + estimate_parameters(n_in, n_levels, **sizes)
    if total > MAX_PARAMETERS:
        raise CpDistillerError(
            f"{where}the model would have about {total:,} parameters ({total * 4 / 2**30:.1f} GiB of weights; "
            f"limit {MAX_PARAMETERS:,}): hidden_dim {sizes['hidden_dim']}, latent_dim {sizes['latent_dim']}, "
            f"{n_in} input features. Use smaller sizes (the paper: hidden_dim 512, latent_dim 50)."
        )


def estimate_parameters(n_input: int, levels: Mapping[str, int], hidden_dim: int, latent_dim: int,
                        n_components: int, discriminator_hidden: int) -> int:
    """Weights and biases of a CorrectionModule with these sizes (without the joint module)."""
    h, L, K, dh = hidden_dim, latent_dim, n_components, discriminator_hidden

    def mlp(a: int) -> int:  # Linear(a, h) + Linear(h, h)
        return a * h + h + h * h + h

    gmvae = (mlp(n_input) + h * K + K + mlp(n_input + K) + 2 * (h * L + L) + 2 * (K * L + L)
             + mlp(L) + h * n_input + n_input)
    head = L * L + L
    disc = sum(L * dh + dh + dh * dh + dh + dh * n + n for n in levels.values())
    return gmvae + head + disc


def _size(value: Any, name: str, limit: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON writes 1e7 as a float
        else:
            raise CpDistillerError(f"{where}{name} must be a whole number, not {value!r}.")
    if not 1 <= value <= limit:
        raise CpDistillerError(f"{where}{name} = {value:,} is outside the sane range 1..{limit:,}; "
                               "this file cannot describe a model cpDistiller builds.")
    return value
