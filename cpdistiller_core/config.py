"""`CpDistillerConfig`: every setting of the correction engine, with the paper's defaults.

The defaults follow Yan et al., Nat Commun 16:6886 (2025) and the published implementation; each
field says where it comes from. Departures from the paper are options here, off by default unless a
benchmark showed they win (see docs/model.md).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CpDistillerError
from .settings import config_from_dict, paper_values, setting

EFFECTS = ("batch", "row", "column")
_EFFECT_ALIASES = {"batch": "batch", "row": "row", "column": "column", "col": "column"}
DEVICES = ("auto", "cpu", "cuda", "mps")
SPHERING = ("none", "negcon", "auto")
ADVERSARY_WELLS = ("all", "negcon", "auto")
TRIPLET_CONTROLS = ("auto", "paper", "neutral")
NEIGHBOR_SPACES = ("input", "unsphered", "negcon_linear")
DECODER_COVARIATES = ("auto", "none", "batch", "effects")
ADVERSARY_ENCODER = ("all", "same")
LATENT_VIEWS = ("sample", "mean")
JOINT_MODULES = ("paper", "compact")  # model/joint.py VARIANTS
TIED_EFFECTS = ("skip", "controls", "correct")
INPUT_CORRECTIONS = ("auto", "none", "negcon_linear", "tied")
OUTPUTS = ("auto", "latent", "corrected_input")


@dataclass
class CpDistillerConfig:
    """Settings of one correction, with the paper's defaults; departures are documented per field.

    ``to_dict``/``from_dict``/``from_file`` round-trip through JSON (or YAML files); ``replace``
    returns a changed copy. Invalid values raise ``CpDistillerError`` naming every problem.

    Examples
    --------
    >>> from cpdistiller_core import CpDistillerConfig
    >>> cfg = CpDistillerConfig(epochs=20)
    >>> cfg.replace(sphering="auto").sphering, cfg.latent_dim
    ('auto', 50)
    >>> CpDistillerConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    # --- GMVAE (paper: hidden 512, latent 50, K = 10 mixture components) ---
    hidden_dim: int = setting(512, "hidden units of the encoder and decoder", label="Hidden units",
                              range=(8, 8192))
    latent_dim: int = setting(50, "dimensions of the corrected embedding", label="Latent dimensions",
                              group="basic", range=(2, 1024))
    n_components: int = setting(10, "Gaussian mixture components of the prior", label="Mixture components",
                                range=(1, 100))
    # Gumbel-softmax temperature: tau_e = max(start * exp(-decay * e), min) at epoch e (reference: 1.0, 0.0125, 0.5).
    temperature_start: float = 1.0
    temperature_decay: float = 0.0125
    temperature_min: float = 0.5
    # Technical levels the decoder is conditioned on (ours, not the paper's; docs/model.md): "none" (paper),
    # "batch", or "effects" (every corrected effect). The encoder, and so the embedding, never sees them.
    # "auto" (default): "effects" with the paper's all-wells adversary, "none" when the discriminators
    # learn from the controls (there a conditional decoder makes collapsing the controls cheap).
    decoder_covariates: str = setting("auto", "technical levels the decoder is conditioned on (auto: every "
                                      "corrected effect, unless the discriminators learn from the controls)",
                                      label="Decoder sees", group="departure", choices=DECODER_COVARIATES,
                                      paper="none", auto_default="effects")
    # --- adversarial part (gradient reversal; lambda = 2 / (1 + exp(-gamma * p)) - 1) ---
    grl_gamma: float = 10.0
    discriminator_hidden: int = 128
    soft_label_alpha: float = 0.75   # target mass on the true label
    soft_label_eps: float = 0.1      # loss = (1 - eps) CE(one-hot) + eps CE(soft)
    # --- contrastive part ---
    triplet_margin: float = setting(10.0, "margin of the triplet loss", label="Triplet margin", range=(0.0, 1000.0))
    k_knn: int = setting(10, "nearest neighbours mined within a level of an effect", label="KNN (within)",
                         range=(1, 200))
    k_mnn: int = setting(5, "mutual nearest neighbours mined across levels of an effect", label="MNN (across)",
                         range=(1, 200))
    neighbor_pcs: int = 50
    neighbor_combine: str = "intersection"
    # Space the KNN/MNN pairs are mined in (ours; docs/model.md "Where the neighbours are mined"):
    # "negcon_linear" (default) = the model input minus the additive batch/row/column effects a ridge
    # model fits on the negative controls (the negcon_linear reference method), so the mined partners
    # reflect phenotype rather than well position; screens with < 3 controls mine in the input, with a
    # warning. "input" (paper) = the model input; "unsphered" = the z-scored profiles before sphering.
    neighbor_space: str = setting("negcon_linear", "space the KNN/MNN pairs are mined in (negcon_linear: the input "
                                  "minus the batch/row/column effects fitted on the negative controls)",
                                  label="Mine neighbours in", group="departure", choices=NEIGHBOR_SPACES,
                                  paper="input")
    # How negative controls enter the triplets. "paper" (reference code): a control's positive is any
    # other control and a treated well's negative is a control, which pulls every control to one point
    # and pushes all treatments away from it. "neutral": controls are wells like any other (positives
    # from the mined neighbours, negatives drawn at random outside the anchor's positive set).
    # "auto": "paper" with the paper's all-wells adversary, "neutral" when the discriminators learn
    # from the controls (the two pulls on the controls would add up to a collapse).
    triplet_controls: str = setting("auto", "how negative controls enter the triplet loss: paper (every control "
                                    "pulled onto the others), neutral (like any well), auto (paper with the "
                                    "all-wells adversary)", label="Controls in triplets", group="departure",
                                    choices=TRIPLET_CONTROLS, paper="paper", auto_default="paper")
    # Gradients through the positive/negative wells of a triplet too (paper). False: they are encoded
    # without gradient (targets), ~40% less compute per step; every well is still an anchor each epoch.
    # Share of a treated anchor's positives drawn from its KNN set (wells sharing every technical level,
    # or, in the fallback, at least one); the rest come from its MNN set (partners across levels).
    triplet_knn_share: float = 0.5
    pair_gradients: bool = setting(True, "gradients through a triplet's positive and negative wells too",
                                   label="Gradients through pairs", group="departure", paper=True)
    # --- loss weights: w_elbo * ELBO + w_dis * sum(D) + w_con * triplet, w_dis = w_con = d / 35 ---
    w_elbo: float = 1.0
    w_dis_per_feature: float = 1.0 / 35.0
    w_con_per_feature: float = 1.0 / 35.0
    # Wells the discriminators learn from (ours, not the paper's; docs/model.md). "all": every well, as in
    # the paper; where the layout ties perturbations to positions this also removes biology. "negcon":
    # negative controls only (position and batch information is removed where it is purely technical).
    # "auto": negcon when there are >= sphering_min_controls controls at 2+ levels of every effect, else all.
    adversary_wells: str = setting("all", "wells the batch/row/column discriminators learn from (negcon: negative "
                                   "controls only; auto: negcon when there are >= 10 at 2+ levels of every "
                                   "effect)", label="Discriminators learn from", group="departure",
                                   choices=ADVERSARY_WELLS, paper="all")
    # Wells whose reversed gradient reaches the encoder when the discriminators learn from the controls
    # (ours): "same" (the controls only; the encoder can satisfy it by collapsing the controls) or "all"
    # (the discriminators, trained on controls only, are frozen and applied to every well).
    adversary_encoder: str = setting("all", "with controls-trained discriminators: hide batch/position from every "
                                     "well through the frozen discriminators (all) or from the controls only "
                                     "(same; lets the encoder collapse the controls)", label="Hide batch/position from",
                                     group="departure", choices=ADVERSARY_ENCODER)
    # What the encoder does against the discriminators: "reverse" (the paper's gradient reversal of their
    # cross-entropy) or "confusion" (frozen discriminators, encoder pulled to uniform predictions; an
    # ablation of benchmarks/README "The simulator grid", not a default).
    adversary_objective: str = "reverse"
    # What the discriminators and the triplet head read: "sample" (the paper's reparameterised
    # z = mu + sigma * noise) or "mean" (mu, the posterior mean reported as the embedding). An ablation
    # (benchmarks/README "Why the adversary leaves position in"), not a default: on a sample the encoder
    # can hide position behind the noise, but reading the mean did not remove more of it.
    adversary_view: str = "sample"
    triplet_view: str = "sample"
    # Image joint module (only with image features; docs/model.md): "paper" = the reference code's
    # (max-pool 9 x 9 on the square view, its 144-value output fused, LeakyReLU, no loss of its own);
    # "compact" = ours before issue #19 (mean-pool 9 on the flat vector, z_e (32) fused, own reconstruction).
    joint_module: str = setting("paper", "image joint module: paper (reference code: max-pool 9x9 on the square "
                                "view, its pooled-size output fused) or compact (mean-pool, 32-value z_e fused, "
                                "own reconstruction loss)", label="Image joint module", group="departure",
                                choices=JOINT_MODULES, paper="paper")
    # --- optimisation (AdamW, cosine schedule over the epochs) ---
    # 100 (ours; the paper trains 50): measured in benchmarks/README "How long to train". Capped at
    # ``tied_layout_epochs`` when the layout ties perturbations to well positions (below).
    epochs: int = setting(100, "training epochs", label="Epochs", group="basic", range=(1, 2000),
                          paper=50)
    # Position effects the layout ties to the treatments (a replicated treatment kept in one row or column,
    # ``layout.position_confounding`` >= 0.5) with the all-wells adversary (ours; docs/model.md "Position
    # effects tied to the treatments"). A discriminator that learns from every well cannot tell such a row
    # from its treatments. "skip" (default): leave them uncorrected, with a warning, when another effect
    # remains (else correct them all, as the paper, for at most ``tied_layout_epochs``). "controls": their
    # discriminators learn from the negative controls (frozen, applied to every well) where there are
    # enough of them at 2+ levels; the others are skipped. "correct": the paper.
    tied_effects: str = setting("skip", "position effects the layout ties to the treatments (a replicated "
                                "treatment kept in one row or column): skip (leave them uncorrected, with a "
                                "warning, when another effect remains), controls (learn them from the negative "
                                "controls) or correct (as the paper)",
                                label="Position tied to treatments", group="departure", choices=TIED_EFFECTS,
                                paper="correct")
    # With the all-wells adversary and a layout that ties perturbations to well positions (a replicated
    # treatment kept in one row or column, ``layout.position_confounding`` >= 0.5 for row or column), the
    # row/column discriminators remove biology along with position, and more of it the longer they train:
    # such fits stop at this many epochs. None: no limit.
    tied_layout_epochs: int | None = setting(50, "with a layout that ties perturbations to well positions (and "
                                             "the all-wells adversary), train at most this many epochs "
                                             "(none: no limit)", label="Epochs if positions are tied",
                                             group="departure", range=(0, 2000), off=0, paper=None)
    batch_size: int = setting(256, "mini-batch size", label="Batch size", group="basic", range=(2, 65536))
    lr: float = setting(1e-3, "learning rate of the encoder/decoder", label="Learning rate", group="basic",
                        range=(1e-6, 1.0), fmt="%.4f")
    lr_discriminator: float = 3e-3
    weight_decay: float = 0.01       # torch's AdamW default, as in the reference
    ema_decay: float | None = None   # None: 1 - 5 / epochs, updated once per epoch as in the reference
    # At least this many optimiser steps in total: small screens (a few hundred wells = 2 steps per
    # epoch) get longer epochs by reusing wells. 0 (default) = the paper's 50 epochs, whatever their length.
    min_steps: int = setting(0, "at least this many training steps in total (0 = the paper's epochs only)",
                             label="Minimum training steps", group="departure", range=(0, 1_000_000), paper=0)
    # --- input handling inside the model (ours, not the paper's; benchmark in benchmarks/README.md) ---
    # "negcon": ZCA whitening fitted on negative-control wells; "auto": negcon when the profiles have
    # at least ``sphering_min_controls`` negative controls, else none (with a warning).
    sphering: str = setting("none", "whiten the model input on negative controls first (auto: when there are "
                            ">= 10 negative controls)", label="Sphere input on negative controls",
                            group="departure", choices=SPHERING, paper="none")
    sphering_min_controls: int = 10
    sphering_regularization: float = 1e-3  # ridge, relative to the mean eigenvalue of the control covariance
    # The model input minus the additive batch/row/column effects a ridge model fits on the negative
    # controls (ours; docs/model.md "Controls' additive effects removed first"): "none" (paper) or
    # "negcon_linear" (every effect). The coefficients are saved with the model and applied by level name
    # in ``transform``; wells at a level without controls keep that level's effect (with a warning).
    # "tied": only the effects the layout ties to the treatments, which the model leaves out
    # (``tied_effects="skip"``) or corrects only because every effect is tied. "auto" (default): "tied"
    # when the negative controls sit on 2+ plates (from one plate's controls each level's coefficient is
    # their own noise), else "none" (docs/model.md "Tied effects learnt from the controls' additive model").
    input_correction: str = setting("auto", "remove the additive batch/row/column effects fitted on the negative "
                                    "controls from the model input first: negcon_linear (every effect), tied "
                                    "(the effects the layout ties to the treatments) or auto (tied, when the "
                                    "controls sit on 2+ plates)",
                                    label="Remove the controls' additive effects", group="departure",
                                    choices=INPUT_CORRECTIONS, paper="none", auto_default="tied")
    # What the embedding is (ours; docs/model.md "The input minus the decoder's technical shift"): "latent"
    # (the paper: the posterior mean of z) or "corrected_input" (the model input minus the shift the
    # conditional decoder gives each well's batch/row/column levels, reduced by PCA to ``latent_dim``;
    # ``model/corrected_input.py``). Needs a conditional decoder; "auto": corrected_input when the decoder
    # is told every corrected effect, else latent.
    output: str = setting("auto", "what the embedding is: latent (the posterior mean of z), corrected_input "
                          "(the model input minus the technical shift the conditional decoder learnt for each "
                          "well's batch/row/column, reduced by PCA) or auto (corrected_input when the decoder "
                          "is told every corrected effect, else latent)", label="Embedding from", group="departure",
                          choices=OUTPUTS, paper="latent", auto_default="corrected_input")
    # --- runtime ---
    seed: int = setting(0, "random seed", label="Seed", group="basic", range=(0, 2**31 - 1))
    device: str = setting("auto", "device (auto: CUDA > MPS > CPU)", label="Device", group="basic", choices=DEVICES)
    # mixed precision on CUDA (bf16 where supported, else fp16 + GradScaler); bf16 on CPUs with native bf16
    amp: bool = setting(True, "mixed precision (bf16/fp16 autocast on CUDA, bf16 on CPUs with native bf16)",
                        label="Mixed precision")
    neighbor_method: str = "auto"
    checkpoint_every: int = 0        # epochs between checkpoints in a run dir (0: only the final model)

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def paper(cls, **changes: Any) -> CpDistillerConfig:
        """The paper's settings: every departure (``docs/model.md``) at the paper's value, then ``changes``."""
        return cls(**{**paper_values(cls), **changes})

    # ----- derived values ------------------------------------------------------------------------
    @property
    def ema_alpha(self) -> float:
        """EMA decay per epoch: ``ema_decay`` or the paper's 1 - 5 / epochs (clipped at 0)."""
        if self.ema_decay is not None:
            return float(self.ema_decay)
        return max(0.0, 1.0 - 5.0 / max(self.epochs, 1))

    def loss_weights(self, n_input: int) -> tuple[float, float, float]:
        """(w_elbo, w_dis, w_con) for an input of ``n_input`` dimensions."""
        return self.w_elbo, self.w_dis_per_feature * n_input, self.w_con_per_feature * n_input

    # ----- validation and (de)serialisation ------------------------------------------------------
    def validate(self) -> None:
        checks = [
            (self.hidden_dim >= 1, "hidden_dim must be >= 1"),
            (self.latent_dim >= 1, "latent_dim must be >= 1"),
            (self.n_components >= 1, "n_components must be >= 1"),
            (0 < self.temperature_min <= self.temperature_start, "need 0 < temperature_min <= temperature_start"),
            (self.temperature_decay >= 0, "temperature_decay must be >= 0"),
            (0.0 < self.soft_label_alpha < 1.0, "soft_label_alpha must be in (0, 1)"),
            (0.0 <= self.soft_label_eps <= 1.0, "soft_label_eps must be in [0, 1]"),
            (self.triplet_margin >= 0, "triplet_margin must be >= 0"),
            (self.k_knn >= 1 and self.k_mnn >= 1, "k_knn and k_mnn must be >= 1"),
            (0.0 <= self.triplet_knn_share <= 1.0, "triplet_knn_share must be in [0, 1]"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.tied_layout_epochs is None or self.tied_layout_epochs >= 1, "tied_layout_epochs must be >= 1"),
            (self.batch_size >= 2, "batch_size must be >= 2"),
            (self.lr > 0 and self.lr_discriminator > 0, "learning rates must be > 0"),
            (self.ema_decay is None or 0.0 <= self.ema_decay < 1.0, "ema_decay must be in [0, 1)"),
            (self.min_steps >= 0, "min_steps must be >= 0"),
            (self.sphering in SPHERING, f"sphering must be one of {SPHERING}"),
            (self.adversary_wells in ADVERSARY_WELLS, f"adversary_wells must be one of {ADVERSARY_WELLS}"),
            (self.sphering_regularization >= 0, "sphering_regularization must be >= 0"),
            (self.device in DEVICES, f"device must be one of {DEVICES}"),
            (self.neighbor_combine in ("intersection", "union"), "neighbor_combine must be intersection or union"),
            (self.neighbor_space in NEIGHBOR_SPACES, f"neighbor_space must be one of {NEIGHBOR_SPACES}"),
            (self.adversary_encoder in ADVERSARY_ENCODER, "adversary_encoder must be 'same' or 'all'"),
            (self.adversary_objective in ("reverse", "confusion"), "adversary_objective must be 'reverse' or 'confusion'"),
            (self.adversary_view in LATENT_VIEWS, "adversary_view must be 'sample' or 'mean'"),
            (self.triplet_view in LATENT_VIEWS, "triplet_view must be 'sample' or 'mean'"),
            (self.decoder_covariates in DECODER_COVARIATES,
             f"decoder_covariates must be one of {DECODER_COVARIATES}"),
            (self.triplet_controls in TRIPLET_CONTROLS, f"triplet_controls must be one of {TRIPLET_CONTROLS}"),
            (self.joint_module in JOINT_MODULES, f"joint_module must be one of {JOINT_MODULES}"),
            (self.tied_effects in TIED_EFFECTS, f"tied_effects must be one of {TIED_EFFECTS}"),
            (self.input_correction in INPUT_CORRECTIONS, f"input_correction must be one of {INPUT_CORRECTIONS}"),
            (self.output in OUTPUTS, f"output must be one of {OUTPUTS}"),
            (self.output != "corrected_input" or self.decoder_covariates != "none",
             "output 'corrected_input' removes the technical shift the conditional decoder learnt: it needs "
             "decoder_covariates other than 'none'"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
        ]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise CpDistillerError("invalid cpDistiller settings: " + "; ".join(bad) + ".")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | None = None) -> CpDistillerConfig:
        return config_from_dict(cls, d, source)

    @classmethod
    def from_file(cls, path: str | Path) -> CpDistillerConfig:
        """Read settings from a JSON or YAML file (only the keys to change are needed)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CpDistillerError(f"{path}: cannot read settings file ({exc.strerror}).") from None
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
            raise CpDistillerError(f"{path}: cannot parse settings ({exc}).") from None
        if not isinstance(data, dict):
            raise CpDistillerError(f"{path}: settings must be a mapping of name -> value.")
        return cls.from_dict(data, source=str(path))

    def replace(self, **changes: Any) -> CpDistillerConfig:
        return dataclasses.replace(self, **changes)


def parse_effects(effects: str | Any) -> tuple[str, ...]:
    """'batch,row,col' or a sequence -> canonical ('batch', 'row', 'column'), order kept, no duplicates."""
    items = [e.strip() for e in effects.split(",")] if isinstance(effects, str) else [str(e).strip() for e in effects]
    items = [e for e in items if e]
    out: list[str] = []
    for e in items:
        canon = _EFFECT_ALIASES.get(e.lower())
        if canon is None:
            raise CpDistillerError(f"unknown effect {e!r}; choose from batch, row, column (or col).")
        if canon not in out:
            out.append(canon)
    if not out:
        raise CpDistillerError("no effects to correct: give at least one of batch, row, column.")
    return tuple(out)
