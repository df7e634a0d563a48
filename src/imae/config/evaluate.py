"""Typed configuration of the evaluation commands (``EvalConfig``); fine-tuning's is ``imae.config.finetune``.

Resolution order, lowest first: dataclass defaults -> the data section of the evaluated run's own training
configuration (data set, path, image size) -> ``--preset`` -> the common flags -> ``--set key=value``.
A ``--preset`` may be a pre-training preset (only its ``data`` section is used: it names the data set of
an official checkpoint) or a preset of this configuration; ``imae.config.tree.preset_tree`` takes the parts
that apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imae.config.tree import Settings, at_least, check_device, check_scale, check_seed, positive, short
from imae.errors import ConfigError

POOLS = ("cls", "mean")
PROBE_HEADS = ("linear", "attentive")
# the separability scheme's baseline predictors beside the analytic superposition line (imae.eval.separability);
# the partner-only predictor is no option: it is half of the un-mixing gain, always computed
SEPARABILITY_BASELINES = ("pixels", "reference_on_mixture", "random_init")


@dataclass
class EvalDataConfig:
    """Which images are evaluated. Only ``dataset``, ``path`` and ``img_size`` are taken from a run."""

    dataset: str | None = None  # None: the run's data set; an official checkpoint needs --set data.dataset=...
    path: str | None = None
    download: bool = False
    img_size: int | None = None  # None: the data set's native size, which must equal the model's
    in_memory: bool | None = None
    cache_dir: str | None = None  # decoded-image cache (see imae.data.decode)
    num_workers: int = 4  # file-based (ImageNet-scale) sets only
    train_per_class: int | None = None  # first N training images of each class (probe fit / kNN memory)
    eval_per_class: int | None = None  # first N evaluation images of each class
    skip_corrupt: bool = False


# keys of a run's (pre-training) data section that carry over to evaluation
RUN_DATA_KEYS = ("dataset", "path", "img_size", "cache_dir")


@dataclass
class FeatureConfig:
    pool: str = "cls"  # cls: the cls token after the final norm; mean: the mean of the patch tokens
    batch_size: int = 256
    cache: bool = True  # keep extracted features on disk, keyed by checkpoint and inputs
    cache_dir: str | None = None  # None: $IMAE_CACHE_DIR/features (default ~/.cache/imae/features)
    # the encoder blocks read (imae.eval.depth): last (the encoder's output), all, or a list such as 2,4,last;
    # each block's output with the final norm applied
    layers: str | list[Any] = "last"


@dataclass
class SeparabilityConfig:
    """Token-level separability (``imae.eval.separability``); every default is what docs/evaluation.md defines."""

    alphas: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.45])
    same_class_p: float | str = "random"  # partners: random = independent of class; a number = P(same class)
    fractions: tuple[float, float, float] = (0.4, 0.2, 0.4)  # fit / validation / test share of the images
    max_images: int | None = 10000  # at most N evaluation images (a seeded subset), paired disjointly: 2,000 test
    # pairs from CIFAR's 10,000 test images
    mask_ratio: float | None = None  # one seeded mask per pair; None: the evaluated run's training ratio (0.75)
    unmasked: bool = False  # also score ratio 0: the encoder sees every patch, tokens read at the same positions
    baselines: list[str] = field(default_factory=lambda: list(SEPARABILITY_BASELINES))
    pooled: list[str] = field(default_factory=list)  # also pooled variants (cls, mean) of the same passes
    penalties: list[float] = field(default_factory=lambda: [10.0**k for k in range(-6, 4)])  # x mean eigenvalue
    pixel_size: int = 16  # classification's pixel baseline: the mixture average-pooled to at most this per side
    reference: str | None = None  # the referee (an MAE no evaluated model was trained towards); None: see --reference
    classify: bool = True  # also the classification scheme (linear heads for both source classes)
    bootstrap: int = 1000  # paired-bootstrap resamples of the test pairs
    ci: float = 0.95  # confidence level of every interval
    random_init_seed: int = 0  # the untrained baseline encoder


@dataclass
class LinearProbeConfig:
    """MAE's linear probe head (BatchNorm without affine + linear) on the frozen encoder.

    ``cached`` (the fast path): the head is fitted to convergence on cached clean features by full-batch
    L-BFGS (cross-entropy + l2/2 |W|^2); BatchNorm then standardises with the training set's statistics.
    ``full``: MAE's ``main_linprobe.py`` recipe, augmented images through the encoder every step, LARS.

    The cached head's L2 penalty: ``l2`` when it is a number; ``None`` (default) chooses it from
    ``l2_grid`` on a seeded validation share (``l2_val_fraction``) of the *training* split, by the
    one-standard-error rule, then refits on the whole training split (``imae.eval.probe_heads.fit_probe``).
    """

    mode: str = "cached"  # cached | full
    l2: float | None = None  # cached: L2 penalty on the head's weights; None: chosen on validation (l2_grid)
    l2_grid: list[float] = field(default_factory=lambda: [10.0**k for k in range(-5, 2)])  # 1e-5 ... 10
    l2_val_fraction: float = 0.15  # share of each training class held out to choose l2
    max_iter: int = 300  # cached: L-BFGS iterations at most
    epochs: int = 90  # full: MAE's recipe from here on
    warmup_epochs: float = 10.0
    batch_size: int = 16384  # full: head batch (the encoder runs in chunks of features.batch_size)
    blr: float = 0.1  # full: lr = blr * batch_size / 256
    weight_decay: float = 0.0
    crop_scale: tuple[float, float] = (0.08, 1.0)  # full: RandomResizedCrop scale, plus a flip


@dataclass
class ProbeConfig:
    """Which probe heads semantics, linprobe and compare report (``imae.eval.attentive``): the linear probe
    always; ``head=attentive`` adds the attentive probe beside it."""

    head: str = "linear"  # linear | attentive
    queries: int = 1  # attentive: learned queries (each pools the tokens once)
    epochs: int = 20  # attentive: AdamW epochs of the queries over the cached tokens (cosine schedule)
    batch_size: int = 256
    lr_grid: list[float] = field(default_factory=lambda: [1e-2, 1e-1])  # AdamW; chosen on the validation share
    weight_decay_grid: list[float] = field(default_factory=lambda: [1e-4])
    lr: float | None = None  # both set: the setting is given, nothing is chosen
    weight_decay: float | None = None


@dataclass
class KNNConfig:
    k: int = 20
    temperature: float = 0.07  # votes weighted by exp(cosine / T), as InstDisc / DINO


@dataclass
class SemanticsConfig:
    same_class_p: float = 0.5  # pairs for the same- vs different-class separability split
    kmeans_restarts: int = 10
    separability: bool = True  # also the separability scheme on those pairs (false: probe, kNN and NMI only)


@dataclass
class FigureConfig:
    images: int = 4  # image pairs (or images) per figure
    mask_ratio: float = 0.75  # masking of the reconstructions in the mixture and ablation figures
    mask_ratios: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 0.9])
    alpha: float = 0.3  # the ablation grid's mixing weight
    layer: int = -1  # the block whose cls-token attention is drawn


@dataclass
class EvalConfig(Settings):
    preset: str | None = None
    seed: int = 0  # pairs, penalties' splits, head initialisation, k-means
    device: str = "auto"
    output_dir: str | None = None  # None: <run dir>/eval
    num_heads: int | None = None  # official checkpoints only: encoder heads when not the standard for the width
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    separability: SeparabilityConfig = field(default_factory=SeparabilityConfig)
    linprobe: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    knn: KNNConfig = field(default_factory=KNNConfig)
    semantics: SemanticsConfig = field(default_factory=SemanticsConfig)
    figures: FigureConfig = field(default_factory=FigureConfig)

    def validate(self) -> EvalConfig:
        check_device_and_data(self)
        if self.features.pool not in POOLS:
            raise ConfigError(f"features.pool must be one of {', '.join(POOLS)}, got {short(self.features.pool)}")
        at_least("features", self.features, ("batch_size",), 1)
        self.features.layers = check_layers_spec(self.features.layers)
        s = self.separability
        if not s.alphas or not all(0.0 < a <= 0.5 for a in s.alphas):
            raise ConfigError(f"separability.alphas must be values in (0, 0.5], got {short(s.alphas)}")
        from imae.data.pairing import parse_p

        s.same_class_p = parse_p("random" if s.same_class_p is None else s.same_class_p, "separability.same_class_p")
        if s.same_class_p == "self":
            raise ConfigError("separability.same_class_p=self would mix each image with itself; use a number or random")
        if len(s.fractions) != 3 or not min(s.fractions) > 0 or not abs(sum(s.fractions) - 1.0) <= 1e-6:
            raise ConfigError(f"separability.fractions (fit, validation, test) must be positive and sum to 1, "
                              f"got {short(list(s.fractions))}")
        if not s.penalties or not min(s.penalties) > 0:
            raise ConfigError(f"separability.penalties must be positive numbers, got {short(s.penalties)}")
        # the patch count is the evaluated model's: imae.eval.subject.separability_defaults checks the ratio again
        if s.mask_ratio is not None and not 0.0 <= s.mask_ratio < 1.0:
            raise ConfigError(f"separability.mask_ratio must lie in [0, 1), got {short(s.mask_ratio)}")
        if "partner_only" in s.baselines:
            raise ConfigError("separability.baselines: partner_only is half of the un-mixing gain and always computed; "
                              "drop it from the list")
        if unknown := [b for b in s.baselines if b not in SEPARABILITY_BASELINES]:
            raise ConfigError(f"separability.baselines: unknown {short(unknown)}; choose from "
                              f"{', '.join(SEPARABILITY_BASELINES)}")
        if unknown := [p for p in s.pooled if p not in POOLS]:
            raise ConfigError(f"separability.pooled: unknown {short(unknown)}; choose from {', '.join(POOLS)}")
        if not s.bootstrap >= 10 or not 0.5 <= s.ci < 1.0:
            raise ConfigError(f"separability.bootstrap must be at least 10 and separability.ci in [0.5, 1), got "
                              f"{short(s.bootstrap)} and {short(s.ci)}")
        at_least("separability", s, ("pixel_size",), 1)
        at_least("separability", s, ("max_images",), 1, unset="null: every evaluation image")
        check_seed("separability.random_init_seed", s.random_init_seed)
        p = self.linprobe
        if p.mode not in ("cached", "full"):
            raise ConfigError(f"linprobe.mode must be 'cached' or 'full', got {short(p.mode)}")
        if not (p.epochs >= 1 and p.batch_size >= 2 and p.max_iter >= 1 and (p.l2 is None or p.l2 >= 0)):
            raise ConfigError(f"linprobe.epochs and max_iter must be at least 1, batch_size at least 2, l2 >= 0; got "
                              f"{p.epochs}, {p.max_iter}, {p.batch_size}, {short(p.l2)}")
        if not p.l2_grid or not min(p.l2_grid) >= 0:
            raise ConfigError(f"linprobe.l2_grid must be non-negative numbers, got {short(p.l2_grid)}")
        if not 0.0 < p.l2_val_fraction < 1.0:
            raise ConfigError(f"linprobe.l2_val_fraction must lie in (0, 1), got {short(p.l2_val_fraction)}")
        positive("linprobe", p, ("blr",))
        at_least("linprobe", p, ("warmup_epochs", "weight_decay"), 0)
        check_scale("linprobe.crop_scale", p.crop_scale)
        q = self.probe
        if q.head not in PROBE_HEADS:
            raise ConfigError(f"probe.head must be one of {', '.join(PROBE_HEADS)}, got {short(q.head)}")
        at_least("probe", q, ("queries", "epochs", "batch_size"), 1)
        if not q.lr_grid or not q.weight_decay_grid or min(q.lr_grid) <= 0 or min(q.weight_decay_grid) < 0:
            raise ConfigError(f"probe.lr_grid must be positive and probe.weight_decay_grid non-negative numbers, got "
                              f"{short(q.lr_grid)} and {short(q.weight_decay_grid)}")
        if (q.lr is None) != (q.weight_decay is None) or (q.lr is not None and (q.lr <= 0 or q.weight_decay < 0)):
            raise ConfigError(f"probe.lr and probe.weight_decay are given together (lr > 0, weight_decay >= 0), got "
                              f"{short(q.lr)} and {short(q.weight_decay)}")
        if not (self.knn.k >= 1 and self.knn.temperature > 0):
            raise ConfigError(f"knn.k must be at least 1 and knn.temperature positive, got {short(self.knn)}")
        if not 0.0 <= self.semantics.same_class_p <= 1.0:
            raise ConfigError(f"semantics.same_class_p must lie in [0, 1], got {short(self.semantics.same_class_p)}")
        at_least("semantics", self.semantics, ("kmeans_restarts",), 1)
        f = self.figures
        if not f.images >= 1 or not 0.0 <= f.mask_ratio < 1.0 or not all(0.0 <= r < 1.0 for r in f.mask_ratios):
            raise ConfigError(f"figures.images must be at least 1 and mask ratios in [0, 1), got {short(f.images)}, "
                              f"{short(f.mask_ratio)} and {short(f.mask_ratios)}")
        if not 0.0 < f.alpha <= 0.5:
            raise ConfigError(f"figures.alpha must lie in (0, 0.5], got {short(f.alpha)}")
        return self


def check_device_and_data(cfg: Any) -> None:
    """The checks of an evaluation's or a fine-tune's top level and ``data`` section (``EvalDataConfig``)."""
    check_device(cfg.device)
    check_seed("seed", cfg.seed)
    at_least("", cfg, ("num_heads",), 1, unset="null: the standard count for the width")
    at_least("data", cfg.data, ("train_per_class", "eval_per_class", "num_workers"), 0)
    at_least("data", cfg.data, ("img_size",), 1, unset="null: the data set's native size")


def check_layers_spec(spec: Any) -> str:
    """``features.layers`` as given (``last``, ``all``, ``2,4,last``, an int or a list) -> its canonical text,
    checked for syntax only (the encoder's depth is known later)."""
    if isinstance(spec, bool) or spec is None:
        raise ConfigError(f"features.layers must be last, all or a list of block numbers such as 2,4,last; "
                          f"got {spec!r}")
    items = [str(v).strip() for v in spec] if isinstance(spec, (list, tuple)) else str(spec).split(",")
    items = [v.strip().lower() for v in items if v.strip()]
    if not items:
        raise ConfigError("features.layers is empty; use last, all or a list such as 2,4,last")
    if "all" in items and len(items) > 1:
        raise ConfigError(f"features.layers: 'all' stands alone, got {','.join(items)}")
    for v in items:
        if v not in ("last", "all") and not (v.isdigit() and int(v) >= 1):
            raise ConfigError(f"features.layers: {v!r} is no block number (1 = the first block), last or all")
    return ",".join(items)
