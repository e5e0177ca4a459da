"""`CpDistiller`: fit / transform / save / load around the correction network.

``fit`` expects preprocessed Profiles (``preprocess.preprocess``). The model then applies its own input
transform, fitted at ``fit`` and stored with the weights: a per-feature z-score, optionally preceded by
ZCA sphering fitted on negative-control wells (``config.sphering = "negcon"``).
"""

from __future__ import annotations

import copy
import json
import platform
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .config import CpDistillerConfig, parse_effects
from .errors import CpDistillerError, CpDistillerWarning, example_values, where
from .layout import covariate_ties, position_ties, tied_effects
from .model.bounds import check_architecture
from .model.corrected_input import BLOCK, CorrectedInputProjection
from .model.gmvae import CorrectionModule
from .paths import atomic_write_bytes, atomic_write_text, json_default
from .preprocess import NegconTechnicalModel
from .profiles import Embedding, Profiles
from .progress import ProgressCallback, no_progress
from .train import EMA, TrainResult, ema_state, seed_everything, select_device, train
from .training_data import ORDERED_EFFECTS, TrainData, _check_finite, align_extractor, level_codes

WEIGHTS_FILE = "weights.pt"
MODEL_FILE = "model.json"
FORMAT_VERSION = 1


# ----- the model's own input transform -------------------------------------------------------------
@dataclass
class ZCAWhitening:
    """ZCA whitening kept in the span of the negative controls, O(features x controls) memory.

    With covariance eigenpairs (lambda_i, v_i) of the controls and ridge r, ZCA is
    W = V diag(1/sqrt(lambda + r)) V^T + (I - V V^T) / sqrt(r): directions outside the controls'
    span have eigenvalue 0 and get 1/sqrt(r). Stored as ``basis`` V (d x k), ``scale`` 1/sqrt(lambda + r)
    and ``null_scale`` 1/sqrt(r); never as a d x d matrix (18,604 features would need 2.8 GB).
    """

    basis: np.ndarray
    scale: np.ndarray
    null_scale: float

    @classmethod
    def fit(cls, centred: np.ndarray, regularization: float) -> ZCAWhitening:
        """From centred control profiles (n x d, float64): thin SVD when n <= d, else eigh of the covariance."""
        n, d = centred.shape
        if n <= d:
            _, s, vt = np.linalg.svd(centred, full_matrices=False)
            evals, basis = s**2 / max(n - 1, 1), vt.T
        else:
            evals, basis = np.linalg.eigh(centred.T @ centred / (n - 1))
        evals = np.clip(evals, 0.0, None)
        # Relative ridge: with fewer controls than features most eigenvalues are 0.
        ridge = regularization * max(float(evals.sum()) / d, 1e-12)
        return cls(basis.astype(np.float32), (1.0 / np.sqrt(evals + ridge)).astype(np.float32),
                   float(1.0 / np.sqrt(ridge)))

    @classmethod
    def from_matrix(cls, W: np.ndarray) -> ZCAWhitening:
        """From a full symmetric whitening matrix (models saved before the span representation)."""
        scale, basis = np.linalg.eigh(W.astype(np.float64))
        return cls(basis.astype(np.float32), scale.astype(np.float32), 0.0)

    def apply(self, Y: np.ndarray) -> np.ndarray:
        """Whitened copy of centred rows ``Y``."""
        return (Y @ self.basis) * (self.scale - self.null_scale) @ self.basis.T + self.null_scale * Y

    def invert(self, W: np.ndarray) -> np.ndarray:
        """The centred rows whose whitening is ``W`` (the basis is orthonormal, so the inverse scales invert)."""
        if self.null_scale == 0.0:  # a full basis (``from_matrix``): no directions outside it
            return (W @ self.basis) / self.scale @ self.basis.T
        inside = (1.0 / self.scale - 1.0 / self.null_scale).astype(W.dtype)
        return (W @ self.basis) * inside @ self.basis.T + W / self.null_scale


@dataclass
class InputTransform:
    """x -> (whiten(x - center) - mean) / std, whiten = negative-control ZCA or the identity."""

    center: np.ndarray
    whitening: ZCAWhitening | None
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray, negative: np.ndarray | None, sphering: str, regularization: float,
            source: str | None = None, min_controls: int = 10) -> InputTransform:
        return cls._fit(X, negative, sphering, regularization, source, min_controls)[0]

    @classmethod
    def fit_apply(cls, X: np.ndarray, negative: np.ndarray | None, sphering: str, regularization: float,
                  source: str | None = None, min_controls: int = 10, chunk: int = 8192,
                  overwrite_input: bool = False) -> tuple[InputTransform, np.ndarray]:
        """``fit`` and ``apply`` in one pass over memory: the sphered copy made for the statistics is
        standardised in place, so the model input costs one copy of ``X``, not two. Same values as
        ``fit(X, ...).apply(X)``. ``overwrite_input``: without sphering, standardise ``X`` itself (no copy
        at all; ``X`` is the model input afterwards)."""
        self, Y = cls._fit(X, negative, sphering, regularization, source, min_controls)
        in_place = Y is not X or (overwrite_input and X.dtype == np.float32 and X.flags.writeable)
        out = Y if in_place else np.empty(X.shape, dtype=np.float32)
        for s in range(0, X.shape[0], chunk):
            blk = Y[s:s + chunk]
            if out is Y:
                blk -= self.mean
                blk /= self.std
            else:
                out[s:s + chunk] = (blk - self.mean) / self.std
        return self, out

    @classmethod
    def _fit(cls, X: np.ndarray, negative: np.ndarray | None, sphering: str, regularization: float,
             source: str | None, min_controls: int) -> tuple[InputTransform, np.ndarray]:
        """The transform and whiten(X - center) (X itself when not sphered)."""
        d = X.shape[1]
        center = np.zeros(d, dtype=np.float32)
        whitening = None
        Y = X
        if sphering == "auto":
            n_neg = 0 if negative is None else int(negative.sum())
            sphering = "negcon" if n_neg >= min_controls else "none"
            if sphering == "none":
                warnings.warn(f"{where(source)}only {n_neg} negative-control wells: the model input is not "
                              "sphered (sphering 'auto' needs at least "
                              f"{min_controls}).", CpDistillerWarning, stacklevel=3)
        if sphering == "negcon":
            n_neg = 0 if negative is None else int(negative.sum())
            if n_neg < 2:
                raise CpDistillerError(
                    f"{where(source)}sphering on negative controls needs negative-control wells "
                    f"(found {n_neg}): set the 'control' role and its negative values, or use sphering 'none'."
                )
            Xn = X[negative].astype(np.float64)
            center = Xn.mean(axis=0)
            whitening = ZCAWhitening.fit(Xn - center, regularization)
            center = center.astype(np.float32)
            Y = _chunked_affine(X, center, whitening)
        mean64, std64 = _column_mean_std(Y)
        mean, std = mean64.astype(np.float32), std64.astype(np.float32)
        std[~(std > 1e-8)] = 1.0
        return cls(center, whitening, mean, std), Y

    def apply(self, X: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """Transformed copy of X (float32), computed in row chunks to bound temporary memory."""
        out = np.empty(X.shape, dtype=np.float32)
        for s in range(0, X.shape[0], chunk):
            blk = X[s:s + chunk]
            if self.whitening is not None:
                blk = self.whitening.apply(blk - self.center)
            out[s:s + chunk] = (blk - self.mean) / self.std
        return out

    def invert(self, Y: np.ndarray) -> np.ndarray:
        """Rows of the model's input space back in the units of the profiles (``apply``'s inverse)."""
        X = Y * self.std + self.mean
        if self.whitening is not None:
            X = self.whitening.invert(X)
        return (X + self.center).astype(np.float32)

    def tensors(self) -> dict[str, torch.Tensor]:
        arrays = [("center", self.center), ("mean", self.mean), ("std", self.std)]
        if self.whitening is not None:
            w = self.whitening
            arrays += [("whiten_basis", w.basis), ("whiten_scale", w.scale),
                       ("whiten_null", np.array([w.null_scale], dtype=np.float32))]
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays}

    @classmethod
    def from_tensors(cls, t: Mapping[str, torch.Tensor]) -> InputTransform:
        whitening = None
        if "whiten_basis" in t:
            whitening = ZCAWhitening(t["whiten_basis"].numpy(), t["whiten_scale"].numpy(),
                                     float(t["whiten_null"].numpy()[0]))
        elif "whiten" in t:
            whitening = ZCAWhitening.from_matrix(t["whiten"].numpy())
        return cls(t["center"].numpy(), whitening, t["mean"].numpy(), t["std"].numpy())


def _column_sum(X: np.ndarray, f: Callable[[np.ndarray], np.ndarray], chunk: int) -> np.ndarray:
    """Column sums of f(row chunk), added row after row as numpy's axis-0 sum of a C-ordered matrix does."""
    acc = None
    for s in range(0, X.shape[0], chunk):
        blk = f(X[s:s + chunk])
        acc = np.add.reduce(blk if acc is None else np.concatenate([acc[None], blk]), axis=0)
    assert acc is not None
    return acc


def _column_mean_std(X: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """float64 column mean and (population) std, equal to ``X.mean/std(axis=0, dtype=float64)`` to the
    last bit, without numpy's full-size float64 matrix of deviations (2 copies of a float32 X)."""
    n = X.shape[0]
    mean = _column_sum(X, lambda b: b.astype(np.float64), chunk) / n
    var = _column_sum(X, lambda b: np.square(b - mean), chunk) / n
    return mean, np.sqrt(var)


def _chunked_affine(X: np.ndarray, center: np.ndarray, whitening: ZCAWhitening | None,
                    chunk: int = 8192) -> np.ndarray:
    """whiten(X - center) in row chunks, so temporary memory does not grow with the number of wells."""
    out = np.empty(X.shape, dtype=np.float32)
    for s in range(0, X.shape[0], chunk):
        blk = X[s:s + chunk] - center
        out[s:s + chunk] = whitening.apply(blk) if whitening is not None else blk
    return out


# ----- helpers -------------------------------------------------------------------------------------
def control_levels(profiles: Profiles, effects: Sequence[str]) -> dict[str, int]:
    """Per effect, the number of its levels that hold at least one negative control."""
    neg = profiles.negative_mask
    return {e: len(set(profiles.labels(e)[neg].tolist())) for e in effects}


def controls_teach(profiles: Profiles, effects: Sequence[str], min_controls: int) -> bool:
    """Whether the negative controls can train discriminators for ``effects``: at least ``min_controls``
    of them, at 2+ levels of every effect."""
    return int(profiles.negative_mask.sum()) >= min_controls and \
        all(k >= 2 for k in control_levels(profiles, effects).values())


def resolve_adversary_wells(profiles: Profiles, effects: Sequence[str], config: CpDistillerConfig) -> str:
    """The wells the discriminators learn from, "all" or "negcon", with ``config.adversary_wells`` resolved.

    "auto" chooses "negcon" when there are at least ``sphering_min_controls`` negative controls
    spread over 2+ levels of every corrected effect, else "all" (with a warning saying why).
    """
    n_neg = int(profiles.negative_mask.sum())
    src = profiles.source or None
    thin = [f"{e} ({k} level{'s' if k != 1 else ''})" for e, k in control_levels(profiles, effects).items()
            if k < 2]
    if config.adversary_wells == "negcon":
        if n_neg < 2 or thin:
            raise CpDistillerError(
                f"{where(src)}adversary_wells 'negcon' needs negative-control wells at 2+ levels of each effect "
                f"(found {n_neg} controls; too few levels: {', '.join(thin) or 'none'}): set the 'control' role "
                "and its negative values, or use adversary_wells 'all'.")
        return "negcon"
    if config.adversary_wells == "auto":
        if controls_teach(profiles, effects, config.sphering_min_controls):
            return "negcon"
        why = f"only {n_neg} negative controls" if n_neg < config.sphering_min_controls else \
            f"negative controls cover too few levels of {', '.join(thin)}"
        warnings.warn(f"{where(src)}{why}: the discriminators learn from all wells (adversary_wells 'all'), "
                      "which also removes biology where the layout ties perturbations to positions.",
                      CpDistillerWarning, stacklevel=3)
    return "all"


def _warn_locked_layout(profiles: Profiles, confounding: Mapping[str, float | None],
                        adversary: Mapping[str, str]) -> None:
    """Warn when every position effect corrected is tied to the perturbations and learnt from all wells:
    the all-wells adversary then erases biology with position.

    Measured (benchmarks/results/summary.md): on varchamp_b14, one plate map for every plate, the
    negative-control settings score 0.655 vs 0.533 for the paper's settings (three seeds).
    """
    positions = [e for e in adversary if e in ORDERED_EFFECTS]
    tied = tied_effects({e: v for e, v in confounding.items() if e in positions})
    if tied and len(tied) == len(positions) and all(adversary[e] == "all" for e in tied):
        shares = ", ".join(f"{e} {v:.0%}" for e, v in tied.items())
        warnings.warn(
            f"{where(profiles.source or None)}the layout ties perturbations to well positions (share of "
            f"replicated treatments kept in one {shares}): the paper's all-wells discriminators will remove "
            "biology along with the position effect. Consider tied_effects 'controls' or adversary_wells "
            "'auto' (learn position effects from the negative controls; they trade annotation consistency for "
            "replicate scores on such layouts, docs/model.md).", CpDistillerWarning, stacklevel=3)


def package_versions() -> dict[str, str]:
    import numpy
    import pandas
    import sklearn

    return {"cpdistiller": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "pandas": pandas.__version__, "scikit-learn": sklearn.__version__,
            "python": platform.python_version()}


# ----- the model -----------------------------------------------------------------------------------
class CpDistiller:
    """Removes batch / row / column effects from preprocessed well-level profiles.

    scvi-tools style: ``fit`` trains the correction network (``model.gmvae.CorrectionModule``) on
    preprocessed profiles, ``transform`` returns the corrected embedding ``cpd_0 …`` with every metadata
    column, ``save``/``load`` round-trip it. The embedding is, by default, the principal components of
    the model input minus the technical shift the conditional decoder learnt (``output``,
    ``model/corrected_input.py``); the paper's is the EMA model's posterior mean (``output="latent"``).

    Parameters
    ----------
    config
        Settings (``CpDistillerConfig``; the paper's defaults).
    **overrides
        Settings to change, e.g. ``epochs=20``.

    Examples
    --------
    >>> from cpdistiller_core import CpDistiller, preprocess
    >>> from cpdistiller_core.datasets import make_demo_screen
    >>> profiles, _ = preprocess(make_demo_screen(n_batches=1, plates_per_batch=2, n_features=40).profiles)
    >>> model = CpDistiller(epochs=2, hidden_dim=32).fit(profiles, effects="row,column")
    >>> emb = model.transform(profiles)  # principal components of the corrected input
    >>> emb.X.shape == (768, min(50, len(model.features)))
    True
    """

    def __init__(self, config: CpDistillerConfig | None = None, **overrides: Any) -> None:
        config = config or CpDistillerConfig()
        self.config = config.replace(**overrides) if overrides else config
        self.module: CorrectionModule | None = None
        self.features: list[str] = []
        self.effects: tuple[str, ...] = ()
        self.levels: dict[str, list[Any]] = {}
        self.input_transform: InputTransform | None = None
        self.extractor_features: list[str] | None = None
        self.joint_settings: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.neighbor_stats: dict[str, Any] = {}
        self.adversary_wells: str | None = None
        self.adversary: dict[str, str] = {}  # effect -> "all" / "negcon": the wells its discriminator learns from
        self.technical: NegconTechnicalModel | None = None  # the controls' additive model (input_correction)
        self.input_correction: tuple[str, ...] = ()  # the effects config.input_correction removes, resolved by fit
        self.projection: CorrectedInputProjection | None = None  # output="corrected_input"
        self.embedding_kind = "latent"  # config.output resolved by fit: "latent" or "corrected_input"
        self.timings: dict[str, float] = {}
        self.train_info: dict[str, Any] = {}
        self.device = select_device(self.config.device)

    # ----- fit -----------------------------------------------------------------------------------
    def fit(self, profiles: Profiles, effects: str | Sequence[str] = ("row", "column"),
            progress: ProgressCallback | None = None, warm_start: str | Path | None = None,
            extractor: Profiles | None = None,
            on_epoch: Callable[[dict[str, Any], EMA], None] | None = None,
            checkpoint_dir: str | Path | None = None, overwrite_input: bool = False) -> CpDistiller:
        """Train on preprocessed ``profiles``; ``extractor`` adds per-well image features (joint module).

        ``warm_start``: a saved model directory to fine-tune (same features; its input transform and
        architecture are kept, discriminators are re-initialised when the levels differ).
        ``checkpoint_dir``: with ``config.checkpoint_every = k``, the EMA model is saved every k epochs to
        ``checkpoint_dir/epoch_NNN`` (a model directory: loadable, usable as ``warm_start``).
        ``overwrite_input``: ``profiles.X`` may become the model input (standardised in place; one copy
        of the matrix fewer while training). The caller must not use ``profiles.X`` afterwards.
        """
        progress = progress or no_progress
        t_start = time.perf_counter()
        src = profiles.source or None
        _check_finite(profiles)
        if profiles.n_wells < 2:
            raise CpDistillerError(f"{where(src)}need at least 2 wells to train, got {profiles.n_wells}.")
        self.effects = self._usable_effects(profiles, parse_effects(effects))
        self.adversary_wells = resolve_adversary_wells(profiles, self.effects, self.config)  # fail before any work
        requested = self.effects
        confounding = position_ties(profiles, self.effects)
        self.effects, skipped = self._skip_tied_effects(profiles, confounding)
        self.input_correction = self._resolve_input_correction(profiles, confounding, requested, skipped)
        self._check_input_correction(profiles)
        self._warn_covariate_ties(profiles)
        self.adversary = self._adversary_by_effect(profiles, confounding)
        _warn_locked_layout(profiles, confounding, self.adversary)
        self.embedding_kind = self._resolve_output(profiles)
        seed_everything(self.config.seed)  # before any module is built: same seed, same initial weights
        base = self._warm_base(profiles, warm_start, extractor)
        cfg = self._training_config(confounding)
        if base is None:
            self.features = list(profiles.features)
            corrected = self._fit_technical(profiles, profiles.X, requested)
            self.input_transform, X = InputTransform.fit_apply(
                profiles.X if corrected is None else corrected, profiles.negative_mask, cfg.sphering,
                cfg.sphering_regularization, src, cfg.sphering_min_controls,
                overwrite_input=overwrite_input or corrected is not None)
        else:
            X = profiles.subset(features=self.features).X
            corrected = self._fit_technical(profiles, X, requested)
            X = self.input_transform.apply(X if corrected is None else corrected)
        data = TrainData.from_profiles(profiles, X, self.effects, cfg, adversary_wells=self.adversary,
                                       features=self.features, extractor=extractor, device=self.device,
                                       progress=lambda f, m: progress(0.05 * f, m))
        self._build_module(data, extractor, base)
        result: TrainResult = train(self.module, data, cfg, self.device,
                                    progress=lambda f, m: progress(0.05 + 0.95 * f, m),
                                    on_epoch=self._epoch_hook(on_epoch, checkpoint_dir, cfg.epochs, data))
        self.projection = self._fit_projection(self.module, data)
        del data
        self.history = result.history
        self.timings["train_s"] = result.seconds
        self.timings["fit_s"] = time.perf_counter() - t_start
        self.train_info = self._train_info(result, profiles, confounding, warm_start)
        self.train_info.update(epochs=cfg.epochs, effects_skipped=skipped, embedding=self.embedding_kind)
        if self.projection is not None:
            self.train_info["output"] = {"effects": list(self.projection.reference),
                                         "n_components": self.projection.n_components,
                                         "variance_explained": round(float(self.projection.explained.sum()), 4)}
        if self.technical is not None:
            self.train_info["input_correction"] = {
                "setting": self.config.input_correction, "effects": list(self.technical.levels),
                "levels_without_controls": dict(self.technical.levels_without_controls)}
        return self

    def _resolve_input_correction(self, profiles: Profiles, confounding: Mapping[str, float | None],
                                  requested: Sequence[str], skipped: Mapping[str, float]) -> tuple[str, ...]:
        """The effects whose additive model, fitted on the negative controls, is removed from the input.

        "negcon_linear": every requested effect; "none": none. "tied": the effects the layout ties to
        the treatments, which the model does not correct (those ``tied_effects="skip"`` leaves out) or
        corrects only because every effect is tied. "auto" (default): as "tied", when the negative
        controls sit on 2+ plates. Both need ``sphering_min_controls`` controls at 2+ levels of each.

        Measured (benchmarks/README "Tied effects learnt from the controls' additive model"; three
        seeds): varchamp_b14 0.536 -> 0.578 (every effect tied), sim/rows_locked 0.863 -> 0.868
        (retrieval 0.232 -> 0.717), cell_injury 0.534 -> 0.536; on lincs_a549, one plate, each row's
        coefficient is its few controls' noise: 0.622 -> 0.606, hence the plates rule."""
        cfg = self.config
        if cfg.input_correction in ("none", "negcon_linear"):
            return tuple(requested) if cfg.input_correction == "negcon_linear" else ()
        if cfg.tied_effects != "skip" or self.adversary_wells != "all":
            if cfg.input_correction == "tied":
                warnings.warn(f"{where(profiles.source or None)}input_correction 'tied' acts with tied_effects "
                              "'skip' and discriminators that learn from all wells only: nothing is removed "
                              "from the input.", CpDistillerWarning, stacklevel=3)
            return ()
        tied = tied_effects({e: v for e, v in confounding.items() if e in self.effects})
        every = bool(tied) and set(tied) == set(self.effects)
        chosen = tuple(self.effects) if every else tuple(skipped)
        if not chosen or not controls_teach(profiles, chosen, cfg.sphering_min_controls):
            return ()
        plates = len(np.unique(profiles.labels("plate")[profiles.negative_mask]))
        if cfg.input_correction == "auto" and plates < 2:
            return ()
        n_neg = int(profiles.negative_mask.sum())
        how = (f"correcting {' and '.join(chosen)} with the model, their additive effects fitted on the {n_neg} "
               "negative controls are removed from the input") if every else (
               f"of correcting {' and '.join(chosen)} with the model, "
               f"{'its' if len(chosen) == 1 else 'their'} additive effect fitted on the {n_neg} negative controls "
               "is removed from the input")
        it = "it" if len(chosen) == 1 else "them"
        warnings.warn(
            f"{where(profiles.source or None)}{'Before' if every else 'Instead'} {how} (the layout ties "
            f"{'every effect' if every else it} to the treatments; input_correction '{cfg.input_correction}', "
            f"'none' to leave {it}, docs/model.md).", CpDistillerWarning, stacklevel=3)
        return chosen

    def _check_input_correction(self, profiles: Profiles) -> None:
        """Refuse ``input_correction="negcon_linear"`` before any work when there are too few controls."""
        n_neg = int(profiles.negative_mask.sum())
        if self.input_correction and n_neg < 3:
            raise CpDistillerError(
                f"{where(profiles.source or None)}input_correction 'negcon_linear' fits the technical effects on "
                f"the negative controls and needs 3+ of them (found {n_neg}): set the 'control' role and its "
                "negative values, or use input_correction 'none'.")

    def _fit_technical(self, profiles: Profiles, X: np.ndarray, requested: Sequence[str]) -> np.ndarray | None:
        """With an input correction (``self.input_correction``: its effects), a copy of the features ``X``
        minus those additive effects (the model's input transform is fitted on it); else None. The ridge
        model is fitted on the negative controls with every ``requested`` effect, so a tied row's
        coefficients are not confounded with the columns its controls happen to sit in."""
        self.technical = None
        effects = self.input_correction
        if not effects:
            return None
        from .preprocess import fit_negcon_technical

        labels = {e: profiles.labels(e) for e in requested}
        self.technical = fit_negcon_technical(X, labels, profiles.negative_mask).restrict(effects)
        uncovered = {e: k for e, k in self.technical.levels_without_controls.items() if k}
        if uncovered:
            warnings.warn(
                f"{where(profiles.source or None)}no negative control at "
                f"{', '.join(f'{k} {e} level' + ('s' if k > 1 else '') for e, k in uncovered.items())}: "
                f"their wells keep that additive effect in the model input (input_correction "
                f"'{self.config.input_correction}').",
                CpDistillerWarning, stacklevel=3)
        return np.asarray(self.technical.corrected(X))

    def _technical_for(self, profiles: Profiles) -> NegconTechnicalModel | None:
        """The fitted controls' additive model for ``profiles``' wells (None without one); warns about wells
        at levels the training controls did not cover (they keep that effect)."""
        if self.technical is None:
            return None
        labels = {}
        for e in self.technical.levels:
            try:
                labels[e] = profiles.labels(e)
            except CpDistillerError as exc:
                raise CpDistillerError(f"this model removes the controls' additive {e} effects from its input, "
                                       f"so it needs the {e} of each well: {exc}") from None
        model, unseen = self.technical.for_wells(labels)
        missing = {e: k for e, k in unseen.items() if k}
        if missing:
            warnings.warn(
                f"{where(profiles.source or None)}"
                f"{', '.join(f'{k} wells at a {e} level' for e, k in missing.items())} the training controls did "
                "not cover keep that additive effect in the model input.", CpDistillerWarning, stacklevel=4)
        return model

    def _skip_tied_effects(self, profiles: Profiles, confounding: Mapping[str, float | None]
                           ) -> tuple[tuple[str, ...], dict[str, float]]:
        """The effects to correct, and the tied position effects left out (``config.tied_effects``).

        With the all-wells adversary a position effect that holds each replicated treatment in one level
        cannot be told from the treatments: its discriminator removes biology with it (benchmarks/README
        "Position effects tied to the treatments"). "skip" leaves it uncorrected when another effect
        remains; "controls" does so only when the negative controls cannot teach its discriminator
        (:func:`controls_teach`). When every effect would be left out none is.
        """
        tied = tied_effects(confounding)
        if self.config.tied_effects == "correct" or self.adversary_wells != "all" or not tied:
            return self.effects, {}
        if self.config.tied_effects == "controls":
            tied = {e: v for e, v in tied.items()
                    if not controls_teach(profiles, (e,), self.config.sphering_min_controls)}
        kept = tuple(e for e in self.effects if e not in tied)
        if not kept or not tied:
            return self.effects, {}
        shares = ", ".join(f"{e} ({v:.0%} of replicated treated wells in one {e})" for e, v in tied.items())
        thin = " and too few negative controls to learn it from" if self.config.tied_effects == "controls" else ""
        warnings.warn(
            f"{where(profiles.source or None)}not corrected: {shares}. The layout ties these position effects "
            f"to the treatments{thin}, so removing them would remove biology too; correcting {', '.join(kept)}. "
            "Use tied_effects 'correct' (--tied-effects correct) to correct them anyway (docs/model.md).",
            CpDistillerWarning, stacklevel=3)
        return kept, dict(tied)

    def _warn_covariate_ties(self, profiles: Profiles) -> None:
        """Warn when a corrected row or column sets a covariate of the treatments (a dose series laid out
        by column, :func:`layout.covariate_ties`): correcting it also removes what that covariate does
        to every treatment alike (cytotoxicity at the high doses), so the user can choose.

        Not a skip: on cell_injury leaving its dose column uncorrected scored higher (three seeds 0.546
        vs 0.535, uncorrected 0.542), but on the simulator with doses by column and a truth, correcting
        it is far closer to the truth (truth kNN 0.45 vs 0.30); benchmarks/README "A dose series laid
        out by column"."""
        for t in covariate_ties(profiles, self.effects).values():
            others = [e for e in self.effects if e != t.effect]
            leave = (f"to leave it uncorrected, correct {','.join(others)} only (--effects {','.join(others)})"
                     if others else "it is the only effect corrected")
            warnings.warn(
                f"{where(profiles.source or None)}{t.effect} sets {t.column!r} for {t.share:.0%} of treated wells "
                f"({t.values} values): correcting {t.effect} also removes whatever that covariate does to every "
                f"treatment alike (e.g. cytotoxicity at high doses); {leave} (docs/model.md).",
                CpDistillerWarning, stacklevel=3)

    def _adversary_by_effect(self, profiles: Profiles, confounding: Mapping[str, float | None]) -> dict[str, str]:
        """Effect -> the wells its discriminator learns from: ``adversary_wells``, except that with
        ``tied_effects="controls"`` a tied position effect learns from the negative controls, which tell
        position apart from treatment. Its discriminator, frozen, still hides the effect in every well
        (``adversary_encoder="all"``)."""
        by_effect = {e: self.adversary_wells or "all" for e in self.effects}
        if self.config.tied_effects != "controls" or self.adversary_wells != "all":
            return by_effect
        taught = [e for e in tied_effects(confounding)
                  if e in by_effect and controls_teach(profiles, (e,), self.config.sphering_min_controls)]
        for e in taught:
            by_effect[e] = "negcon"
        if taught:
            n_neg = int(profiles.negative_mask.sum())
            warnings.warn(
                f"{where(profiles.source or None)}the layout ties {' and '.join(taught)} to the treatments: "
                f"{'their discriminators learn' if len(taught) > 1 else 'its discriminator learns'} from the "
                f"{n_neg} negative controls, which tell position apart from treatment (docs/model.md).",
                CpDistillerWarning, stacklevel=3)
        return by_effect

    def _training_config(self, confounding: Mapping[str, float | None]) -> CpDistillerConfig:
        """``config``, with the epochs capped at ``tied_layout_epochs`` when the all-wells discriminators
        meet a layout that ties perturbations to well positions (they then remove biology with position,
        more the longer they train; benchmarks/README "How long to train")."""
        cfg = self.config
        cap = cfg.tied_layout_epochs
        corrected = {e: v for e, v in confounding.items() if e in self.effects}
        corrected = {e: v for e, v in corrected.items() if self.adversary.get(e) == "all"}
        if cap is None or cfg.epochs <= cap or not tied_effects(corrected):
            return cfg
        return cfg.replace(epochs=cap)

    def _train_info(self, result: TrainResult, profiles: Profiles, confounding: Mapping[str, float | None],
                    warm_start: str | Path | None) -> dict[str, Any]:
        """What a fit records about its training (saved in model.json, shown in provenance)."""
        assert self.input_transform is not None
        return {"steps": result.steps, "device": result.device, "amp_dtype": result.amp_dtype,
                "n_wells": profiles.n_wells, "n_features": len(self.features),
                "sphered": self.input_transform.whitening is not None,
                "adversary_wells": self.adversary_wells,
                "adversary_by_effect": dict(self.adversary),
                "decoder_covariates": self._decoder_covariates(),
                "position_confounding": dict(confounding),
                "warm_start": None if warm_start is None else str(warm_start)}

    def _warm_base(self, profiles: Profiles, warm_start: str | Path | None,
                   extractor: Profiles | None) -> CpDistiller | None:
        """The warm-start model, or None; its features, input transform and sizes become this fit's."""
        if warm_start is None:
            return None
        base = CpDistiller.load(warm_start, device=self.config.device)
        self._check_features(profiles, base.features, "the warm-start model")
        if (extractor is None) != (base.extractor_features is None):
            raise CpDistillerError("the warm-start model and this fit disagree on image features "
                                   "(one uses an extractor table, the other not).")
        self.features = list(base.features)
        self.input_transform = base.input_transform
        arch = {k: getattr(base.config, k) for k in ("hidden_dim", "latent_dim", "n_components",
                                                     "discriminator_hidden")}
        self.config = self.config.replace(**arch)
        return base

    def _build_module(self, data: TrainData, extractor: Profiles | None, base: CpDistiller | None) -> None:
        """The correction network for ``data``'s levels (and image features), warm-started from ``base``."""
        cfg = self.config
        self.levels = data.levels
        self.neighbor_stats = data.neighbor_stats
        self.timings["neighbors_s"] = data.neighbor_seconds
        joint = None
        if extractor is not None:
            assert data.E is not None
            joint = self._make_joint(data.E.cpu().numpy(), base)
            self.extractor_features = list(extractor.features)
        self.module = CorrectionModule(
            data.X.shape[1], {e: len(self.levels[e]) for e in self.effects}, cfg.hidden_dim, cfg.latent_dim,
            cfg.n_components, cfg.discriminator_hidden, joint=joint, decoder_levels=self._decoder_levels())
        if base is not None:
            self._load_warm(base)

    def _epoch_hook(self, on_epoch: Callable[[dict[str, Any], EMA], None] | None,
                    checkpoint_dir: str | Path | None, epochs: int,
                    data: TrainData) -> Callable[[dict[str, Any], EMA], None] | None:
        every = self.config.checkpoint_every
        if not (every and checkpoint_dir):
            return on_epoch

        def hook(record: dict[str, Any], ema: EMA) -> None:
            if record["epoch"] % every == 0 or record["epoch"] == epochs:
                assert self.module is not None
                state = ema_state(self.module, ema)
                projection = None
                if self.embedding_kind == "corrected_input":
                    averaged = copy.deepcopy(self.module)
                    averaged.load_state_dict(state)
                    projection = self._fit_projection(averaged, data)
                self._write(Path(checkpoint_dir) / f"epoch_{record['epoch']:03d}", state,
                            {"checkpoint_epoch": record["epoch"]}, projection=projection)
            if on_epoch is not None:
                on_epoch(record, ema)
        return hook

    def _decoder_covariates(self) -> str:
        """``config.decoder_covariates`` with "auto" resolved: "effects" with the all-wells adversary, else
        "none" (a model saved before "auto" existed records its own choice in its config)."""
        choice = self.config.decoder_covariates
        if choice != "auto":
            return choice
        return "effects" if self.adversary_wells in ("all", None) else "none"

    def _decoder_levels(self) -> dict[str, int]:
        """Effect -> number of levels for the conditional decoder (empty: the paper's decoder).

        "auto" conditions on the effects whose discriminators learn from every well: a tied effect whose
        discriminator learns from the controls (``tied_effects="controls"``) is left out, as every effect
        is with controls-trained discriminators (benchmarks/README "Tied position effects learnt from the
        controls").
        """
        return {e: len(self.levels[e]) for e in self._decoder_effects() if e in self.levels}

    def _decoder_effects(self) -> tuple[str, ...]:
        """The corrected effects the decoder is told (``_decoder_levels`` without the level counts)."""
        choice = self.config.decoder_covariates
        if choice == "auto":  # a model saved before per-effect adversaries records only adversary_wells
            return tuple(e for e in self.effects if self.adversary.get(e, self.adversary_wells or "all") == "all")
        chosen = {"none": (), "batch": ("batch",), "effects": self.effects}[choice]
        return tuple(e for e in chosen if e in self.effects)

    def _resolve_output(self, profiles: Profiles) -> str:
        """``config.output`` with "auto" resolved: "corrected_input" when the decoder is told every corrected
        effect, else "latent". An explicit "corrected_input" is refused before any work when the decoder
        is told no effect (nothing would be removed), and warns about the effects it is not told (they
        stay in the embedding)."""
        told = set(self._decoder_effects())
        untold = [e for e in self.effects if e not in told]
        if self.config.output == "auto":
            return "corrected_input" if told and not untold else "latent"
        if self.config.output == "latent":
            return "latent"
        if not told:
            raise CpDistillerError(
                f"{where(profiles.source or None)}output 'corrected_input' removes the technical shift the "
                "conditional decoder learns, but with these settings the decoder is told no effect "
                f"(decoder_covariates {self.config.decoder_covariates!r}, discriminators learning from "
                f"{self.adversary}): use output 'latent', or decoder_covariates 'effects'.")
        if untold:
            warnings.warn(
                f"{where(profiles.source or None)}output 'corrected_input' removes only the effects the "
                f"decoder is told ({', '.join(sorted(told))}); {', '.join(untold)} stays in the embedding.",
                CpDistillerWarning, stacklevel=3)
        return "corrected_input"

    def _fit_projection(self, module: CorrectionModule | None, data: TrainData) -> CorrectedInputProjection | None:
        """The corrected input's reference levels and PCA, fitted on the training wells (None for "latent")."""
        if self.embedding_kind != "corrected_input":
            return None
        assert module is not None
        module.eval()
        told = list(module.gmvae.decoder_covariates)

        blocks = ((data.X[s:s + BLOCK], None if data.E is None else data.E[s:s + BLOCK],
                   {ef: data.labels[ef][s:s + BLOCK] for ef in told}) for s in range(0, data.n, BLOCK))
        codes = {ef: data.labels[ef].cpu().numpy() for ef in told}
        return CorrectedInputProjection.fit(module, blocks, codes, self.config.latent_dim)

    def _level_codes_for(self, profiles: Profiles) -> dict[str, np.ndarray]:
        """Each decoder effect's level codes for ``profiles`` (-1 at levels the model has not seen, with a
        warning: those wells keep that effect)."""
        assert self.module is not None
        codes, unseen = {}, {}
        for e in self.module.gmvae.decoder_covariates:
            try:
                values = np.asarray(profiles.labels(e))
            except CpDistillerError as exc:
                raise CpDistillerError(f"this model's embedding removes the {e} shift its decoder learnt, so it "
                                       f"needs the {e} of each well: {exc}") from None
            codes[e] = level_codes(values, self.levels[e], e)
            if (codes[e] < 0).any():
                unseen[e] = (int((codes[e] < 0).sum()), example_values(values[codes[e] < 0]))
        if unseen:
            warnings.warn(
                f"{where(profiles.source or None)}"
                + "; ".join(f"{k} wells at {e} levels the model was not trained on (e.g. {ex})"
                            for e, (k, ex) in unseen.items())
                + ": they keep that effect in the embedding.", CpDistillerWarning, stacklevel=4)
        return codes

    def _usable_effects(self, profiles: Profiles, effects: tuple[str, ...]) -> tuple[str, ...]:
        kept = []
        for e in effects:
            n = len(np.unique(profiles.labels(e).astype(str)))
            if n < 2:
                warnings.warn(f"effect {e!r} has a single level in these profiles: not corrected.",
                              CpDistillerWarning, stacklevel=3)
            else:
                kept.append(e)
        if not kept:
            raise CpDistillerError(
                f"{where(profiles.source or None)}nothing to correct: every requested effect "
                f"({', '.join(effects)}) has a single level (e.g. one plate in one batch). "
                "Choose effects with at least two levels, such as row,column."
            )
        return tuple(kept)

    def _make_joint(self, E: np.ndarray, base: CpDistiller | None) -> torch.nn.Module:
        from .model.joint import (
            DEFAULT_OUT_DIM,
            DEFAULT_POOL,
            JointModule,
            compute_pca_init,
            joint_from_settings,
        )

        if base is not None and base.joint_settings is not None:
            joint = joint_from_settings(base.joint_settings)
            self.joint_settings = joint.config()
            return joint
        variant = self.config.joint_module
        self.joint_settings = {"n_features": E.shape[1], "pool": DEFAULT_POOL, "out_dim": DEFAULT_OUT_DIM,
                               "variant": variant}
        return JointModule(**self.joint_settings,
                           pca_init=compute_pca_init(E, DEFAULT_POOL, DEFAULT_OUT_DIM, self.config.seed, variant))

    def _load_warm(self, base: CpDistiller) -> None:
        assert self.module is not None and base.module is not None
        state = base.module.state_dict()
        own = self.module.state_dict()
        # Per-level tables (discriminators, conditional decoder) mean nothing for other levels.
        per_level = ("discriminators.", "gmvae.decoder_covariates.")
        keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape
                and not (k.startswith(per_level) and base.levels != self.levels)}
        self.module.load_state_dict(keep, strict=False)

    # ----- transform -----------------------------------------------------------------------------
    def _check_features(self, profiles: Profiles, features: Sequence[str], what: str) -> None:
        have = set(profiles.features)
        missing = [f for f in features if f not in have]
        if missing:
            raise CpDistillerError(
                f"{where(profiles.source or None)}{len(missing)} of the {len(features)} features {what} was "
                f"trained on are missing ({example_values(missing)}): apply the same preprocessing "
                "(PreprocessReport.apply) or retrain on these features."
            )

    def _require_fitted(self) -> CorrectionModule:
        if self.module is None or self.input_transform is None:
            raise CpDistillerError("this CpDistiller has not been fitted or loaded yet.")
        return self.module

    @torch.no_grad()
    def transform(self, profiles: Profiles, extractor: Profiles | None = None,
                  batch_size: int = 8192) -> Embedding:
        """The corrected embedding for profiles with the model's features: the principal components of the
        corrected input (``output="corrected_input"``; needs each well's batch/row/column) or the EMA
        model's posterior mean (``output="latent"``)."""
        module = self._require_fitted()
        sub, blocks = self._input_blocks(profiles, extractor, batch_size)
        width = self.config.latent_dim if self.projection is None else self.projection.n_components
        Z = np.empty((sub.n_wells, width), dtype=np.float32)
        for part, x, e, levels in blocks:
            if self.projection is None:
                Z[part] = module.embed(x, e).float().cpu().numpy()
            else:
                Z[part] = self.projection.embed(module, x, e, levels).cpu().numpy()
        return Embedding.from_profiles(profiles, Z, method="cpDistiller", provenance=self.provenance())

    def _input_blocks(self, profiles: Profiles, extractor: Profiles | None, batch_size: int
                      ) -> tuple[Profiles, Iterator[tuple[slice, torch.Tensor, torch.Tensor | None,
                                                          dict[str, torch.Tensor]]]]:
        """``profiles`` cut to the model's features, and their model input in row blocks on the model's
        device: (rows, input, image features or None, level codes per decoder effect; the codes only with a
        corrected-input projection). Bad input is refused here, before the first block."""
        self._check_features(profiles, self.features, "this model")
        sub = profiles if list(profiles.features) == self.features else profiles.subset(features=self.features)
        _check_finite(sub)
        E = self._extractor_rows(profiles, extractor)
        technical = self._technical_for(profiles)
        rows = sub.X if technical is None else technical.corrected(sub.X)
        codes = {} if self.projection is None else self._level_codes_for(profiles)
        self._require_fitted().eval().to(self.device)

        def blocks() -> Iterator[tuple[slice, torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]]:
            for s in range(0, sub.n_wells, batch_size):
                part = slice(s, s + batch_size)
                x = torch.from_numpy(self.input_transform.apply(rows[part])).to(self.device)
                e = None if E is None else torch.from_numpy(E[part]).to(self.device)
                yield part, x, e, {ef: torch.from_numpy(c[part]).to(self.device) for ef, c in codes.items()}
        return sub, blocks()

    def _extractor_rows(self, profiles: Profiles, extractor: Profiles | None) -> np.ndarray | None:
        """The image features aligned to ``profiles``' wells (None for a model without them)."""
        if self.extractor_features is None:
            return None
        if extractor is None:
            raise CpDistillerError("this model was trained with image features: pass extractor= to transform.")
        E = align_extractor(profiles, extractor).astype(np.float32)
        if E.shape[1] != len(self.extractor_features):
            raise CpDistillerError(f"image features have {E.shape[1]} columns; the model was trained on "
                                   f"{len(self.extractor_features)}.")
        return E

    @torch.no_grad()
    def transform_with_corrected_features(self, profiles: Profiles, extractor: Profiles | None = None,
                                          batch_size: int = 8192) -> tuple[Embedding, Profiles]:
        """``transform`` and ``corrected_features`` in one pass over the wells (one decoder pass, not two).

        Returns
        -------
        (Embedding, Profiles)
            The embedding and the corrected profiles, as the two methods give them.
        """
        module = self._require_fitted()
        if self.projection is None:
            raise CpDistillerError("this model's embedding is its latent space (output 'latent'), which has no "
                                   "feature-space counterpart: fit with output 'corrected_input' (or 'auto').")
        sub, blocks = self._input_blocks(profiles, extractor, batch_size)
        Z = np.empty((sub.n_wells, self.projection.n_components), dtype=np.float32)
        out = np.empty((sub.n_wells, len(self.features)), dtype=np.float32)
        for part, x, e, levels in blocks:
            y = self.projection.corrected(module, x, e, levels)
            Z[part] = self.projection.project(y).cpu().numpy()
            out[part] = self.input_transform.invert(y[:, :len(self.features)].cpu().numpy())
        emb = Embedding.from_profiles(profiles, Z, method="cpDistiller", provenance=self.provenance())
        return emb, sub.with_features(out, self.features)

    @torch.no_grad()
    def corrected_features(self, profiles: Profiles, extractor: Profiles | None = None,
                           batch_size: int = 8192) -> Profiles:
        """The profiles minus the technical shift the decoder learnt, in their own features and units.

        The embedding of ``output="corrected_input"`` before its PCA, mapped back through the model's
        input transform: one value per model feature, every metadata column kept. With
        ``input_correction`` the controls' additive effects are removed as well. Only for a model whose
        embedding is the corrected input (``output`` "auto" or "corrected_input").
        """
        return self.transform_with_corrected_features(profiles, extractor, batch_size)[1]

    def fit_transform(self, profiles: Profiles, effects: str | Sequence[str] = ("row", "column"),
                      **kw: Any) -> Embedding:
        return self.fit(profiles, effects=effects, **kw).transform(profiles, extractor=kw.get("extractor"))

    def provenance(self) -> dict[str, Any]:
        return {"cpdistiller_version": __version__, "effects": list(self.effects),
                "config": self.config.to_dict(), "n_features": len(self.features),
                "neighbors": self.neighbor_stats, "train": self.train_info}

    # ----- save / load ---------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """``weights.pt`` (tensors only, loads with weights_only=True) + ``model.json`` (config, features)."""
        module = self._require_fitted()
        return self._write(Path(directory), {k: v.detach().cpu() for k, v in module.state_dict().items()},
                           projection=self.projection)

    def _write(self, directory: Path, module_state: Mapping[str, torch.Tensor],
               extra: Mapping[str, Any] | None = None, projection: CorrectedInputProjection | None = None) -> Path:
        import io

        assert self.input_transform is not None
        directory.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        state = {"module": dict(module_state), "input_transform": self.input_transform.tensors()}
        if self.technical is not None:
            state["technical"] = {"coef": torch.from_numpy(np.ascontiguousarray(self.technical.coef))}
        if projection is not None:
            state["output"] = projection.tensors()
        torch.save(state, buf)
        atomic_write_bytes(directory / WEIGHTS_FILE, buf.getvalue())
        meta = {"format_version": FORMAT_VERSION, "cpdistiller_version": __version__,
                "config": self.config.to_dict(), "features": self.features, "effects": list(self.effects),
                "levels": {e: list(v) for e, v in self.levels.items()},
                "extractor_features": self.extractor_features, "joint": self.joint_settings,
                "n_input": len(self.features), "neighbors": self.neighbor_stats, "train": self.train_info,
                "timings": self.timings,
                "technical_levels": None if self.technical is None else self.technical.levels, **dict(extra or {})}
        atomic_write_text(directory / MODEL_FILE, json.dumps(meta, indent=1, default=json_default))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> CpDistiller:
        directory = Path(directory)
        meta_path, w_path = directory / MODEL_FILE, directory / WEIGHTS_FILE
        if not meta_path.is_file() or not w_path.is_file():
            raise CpDistillerError(f"{directory}: not a saved cpDistiller model (needs {MODEL_FILE} and {WEIGHTS_FILE}).")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise CpDistillerError(f"{meta_path}: unreadable model description ({exc}).") from None
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise CpDistillerError(f"{directory}: saved by a newer cpDistiller ({meta.get('cpdistiller_version')}).")
        cfg = CpDistillerConfig.from_dict(meta["config"], source=str(meta_path))
        check_architecture(cfg, len(meta["features"]), {e: len(v) for e, v in meta["levels"].items()},
                           joint=meta.get("joint"), source=str(meta_path))
        if device is not None:
            cfg = cfg.replace(device=device)
        self = cls(cfg)
        self.features = list(meta["features"])
        self.effects = tuple(meta["effects"])
        self.levels = {e: list(v) for e, v in meta["levels"].items()}
        self.extractor_features = meta.get("extractor_features")
        self.joint_settings = meta.get("joint")
        self.neighbor_stats = meta.get("neighbors", {})
        self.train_info = meta.get("train", {})
        self.adversary_wells = self.train_info.get("adversary_wells")
        self.adversary = dict(self.train_info.get("adversary_by_effect", {}))
        self.timings = meta.get("timings", {})
        try:
            state = torch.load(w_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure means the file is not our checkpoint
            raise CpDistillerError(f"{w_path}: cannot load weights ({exc}).") from None
        joint = None
        if self.joint_settings is not None:
            from .model.joint import joint_from_settings

            joint = joint_from_settings(self.joint_settings)  # no recorded variant: a pre-#19 (compact) model
        self.module = CorrectionModule(
            len(self.features), {e: len(self.levels[e]) for e in self.effects}, cfg.hidden_dim,
            cfg.latent_dim, cfg.n_components, cfg.discriminator_hidden, joint=joint,
            decoder_levels=self._decoder_levels())
        try:
            self.module.load_state_dict(state["module"])
        except (RuntimeError, KeyError) as exc:
            raise CpDistillerError(f"{w_path}: weights do not match {meta_path} ({exc}).") from None
        self.input_transform = InputTransform.from_tensors(state["input_transform"])
        if "technical" in state:
            levels = {e: list(v) for e, v in (meta.get("technical_levels") or {}).items()}
            self.technical = NegconTechnicalModel(state["technical"]["coef"].numpy(),
                                                  np.zeros((0, len(levels)), dtype=np.int64), {}, levels)
        self.embedding_kind = self.train_info.get("embedding", "latent")
        if "output" in state:
            self.projection = CorrectedInputProjection.from_tensors(state["output"])
        elif self.embedding_kind == "corrected_input" or cfg.output == "corrected_input":
            raise CpDistillerError(f"{w_path}: the model's embedding is its corrected input, but the weights "
                                   "lack its projection.")
        if self.input_transform.mean.shape[0] != len(self.features):
            raise CpDistillerError(f"{w_path}: input transform does not match the feature list.")
        self.module.eval().to(self.device)
        return self

