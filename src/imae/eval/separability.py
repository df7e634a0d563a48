"""Linear separability of the latent space (METHOD.md section 4): the un-mixing gain, against a referee, on
disjoint class-independent pairs, with baselines and bootstrap intervals.

For every held-out pair (:mod:`imae.eval.pairs`) and one seeded mask per pair (:mod:`imae.eval.tokens`):

- the evaluated encoder E encodes the mixture ``alpha * x_sub + (1 - alpha) * x_dom`` under the mask, and
  each source alone under the same mask;
- the reference R (one fixed MAE for every model of a comparison: by default a *referee*, an MAE none of
  them was trained towards) encodes each *clean* source under the same mask. Targets: R's tokens in the
  distillation space (``decoder_embed`` output: ``distill``) and R's encoder tokens (``encoder``);
- two ridges per target, fitted the same way (one map shared by every token position, tokens centred per
  position, :mod:`imae.eval.token_ridge`; penalty chosen on the validation pairs; variance-weighted R^2 on
  the test pairs): one from E's tokens of the **mixture**, one from E's tokens of the **partner alone** (for
  the subordinate's target the dominant image by itself, and the reverse);
- **gain** = R^2(target | mixture) - R^2(target | partner alone): what the mixture's latent says about a
  source beyond what its partner alone says. Class correlation between the partners and closeness of E to
  R both appear in the two terms alike and cancel. "E un-mixes" means the gain's interval lies above 0;
- for an i-MAE, ``branches``: its own branch maps (and adapter) applied to E's tokens, nothing refitted.

Scored at the training mask ratio (the headline) and, with ``separability.unmasked``, at ratio 0 (E sees
every patch, tokens read at the same positions). The same mixture / partner / gain triple is computed for
the baselines on the same pairs and masks: ``pixels`` (the images' own patch pixels), ``reference_on_mixture``
(R itself: a model never trained on mixtures) and ``random_init`` (an untrained encoder of E's
architecture); ``superposition`` is the analytic line alpha^2 / (alpha^2 + (1-alpha)^2) of two independent,
equal-variance sources (only that case: real partners are correlated).

Classification: one linear head per alpha on E's pooled mixture latent (at ratio 0 when it is scored, else
at the training ratio) predicts the subordinate's and the dominant's class; the subordinate's accuracy means
something only on different-class pairs (on same-class pairs it is the dominant's class), so every accuracy
is also given per subset. Baselines: ``pixels`` (pooled mixture pixels), ``partner_only`` (E on the
dominant image alone) and majority-class chance.

Every score carries a 95% paired-bootstrap interval over the (disjoint, hence independent) test pairs
(:mod:`imae.eval.bootstrap`) and is also given for same-class and different-class test pairs, with counts.
The numbers are read through :class:`imae.eval.separability_result.SeparabilityResult`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from imae.config.evaluate import SEPARABILITY_BASELINES as BASELINES
from imae.config.evaluate import EvalConfig
from imae.console import progress
from imae.data.augment import normalize
from imae.data.mixing import mix
from imae.eval.bootstrap import Resampler
from imae.eval.depth import combine, is_last_only, parse_layers
from imae.eval.eval_split import Split
from imae.eval.item_store import ItemStore, store_key
from imae.eval.pairs import PairSet
from imae.eval.probe_heads import fit_cached_many, predict
from imae.eval.separability_result import SOURCES, VERSION, SeparabilityResult, alpha_key, headline_alpha
from imae.eval.subject import Subject
from imae.eval.threads import threads_for
from imae.eval.token_ridge import PairErrors, direct_errors, fit_tokens
from imae.eval.tokens import (
    distill_map,
    encoder_layer_tokens,
    encoder_tokens,
    pair_noise,
    pixel_tokens,
    positions,
    random_encoder,
)


def superposition(alpha: float) -> float:
    """R^2 of the subordinate from a linear mix of two independent, equal-variance sources."""
    return alpha**2 / (alpha**2 + (1 - alpha) ** 2)


@dataclass
class Scorer:
    """What every score of one evaluation shares: the pairs' parts and the bootstrap resamples."""

    pairs: PairSet
    rs: Resampler
    penalties: list[float]
    fit: torch.Tensor = field(init=False)
    val: torch.Tensor = field(init=False)
    test: torch.Tensor = field(init=False)
    same: torch.Tensor = field(init=False)  # [n_test] bool

    def __post_init__(self) -> None:
        self.fit, self.val, self.test = (self.pairs.rows(p) for p in ("fit", "val", "test"))
        self.same = self.pairs.same[self.test]

    def subsets(self) -> tuple[tuple[str, torch.Tensor], ...]:
        return ("same", self.same), ("diff", ~self.same)

    def r2(self, e: PairErrors) -> dict[str, Any]:
        out: dict[str, Any] = {"r2": e.r2, "ci": self.rs.interval(self.rs.r2_draws(e.sse, e.sst))}
        if e.penalty is not None:
            out.update(penalty=e.penalty, val_r2=e.val_r2)
        for tag, keep in self.subsets():
            n = int(keep.sum())
            draws = self.rs.r2_draws(e.sse, e.sst, keep)
            out[tag] = None if n < 2 else {"r2": _r2(e, keep), "ci": self.rs.interval(draws), "n": n}
        return out

    def gain(self, mixture: PairErrors, partner: PairErrors) -> dict[str, Any]:
        """R^2(mixture) - R^2(partner alone) with its paired interval, overall and per subset."""
        def draws(keep=None):
            return (self.rs.r2_draws(mixture.sse, mixture.sst, keep)
                    - self.rs.r2_draws(partner.sse, partner.sst, keep))

        out: dict[str, Any] = {"gain": mixture.r2 - partner.r2, "ci": self.rs.interval(draws()),
                               "mixture": mixture.r2, "partner": partner.r2}
        for tag, keep in self.subsets():
            n = int(keep.sum())
            out[tag] = None if n < 2 else {"gain": _r2(mixture, keep) - _r2(partner, keep),
                                           "ci": self.rs.interval(draws(keep)), "n": n}
        return out

    def accuracy(self, correct: torch.Tensor) -> dict[str, Any]:
        out: dict[str, Any] = {"acc": float(correct.double().mean()),
                               "ci": self.rs.interval(self.rs.mean_draws(correct))}
        for tag, keep in self.subsets():
            n = int(keep.sum())
            out[tag] = None if n == 0 else {"acc": float(correct[keep].double().mean()),
                                            "ci": self.rs.interval(self.rs.mean_draws(correct, keep)), "n": n}
        return out


def _r2(e: PairErrors, keep: torch.Tensor) -> float:
    return float(1 - e.sse[keep].sum() / e.sst[keep].sum().clamp_min(1e-300))


@dataclass
class Measurement:
    """A separability evaluation: the typed ``result``, its ``timing``, and the per-test-pair ``raw`` scores that
    :mod:`imae.eval.compare` pairs across models: ``("mixture", ratio, predictor, space, source, alpha)`` and
    ``("partner", ratio, predictor, space, source)`` -> PairErrors; ``("branch", ratio, source, alpha)`` ->
    PairErrors; ``("acc", source, alpha)`` -> correctness [n_test]."""

    result: SeparabilityResult
    timing: dict[str, float]
    raw: dict[tuple, Any]
    scorer: Scorer
    layers: dict[int, Measurement] | None = None  # features.layers other than last: every block's (its own raw)

    def at_layer(self, k: int) -> Measurement:
        """The measurement at block ``k`` (this one when only the last block was measured)."""
        if self.layers is None:
            return self
        return self.layers[k]

    @property
    def results(self) -> dict[str, Any]:
        return self.result.to_json()


class _Passes:
    """Runs encoders over every pair in batches; the models, masks and data of one evaluation."""

    def __init__(self, split: Split, pairs: PairSet, noise: torch.Tensor, pos: torch.Tensor, batch_size: int,
                 device: torch.device, show_progress: bool) -> None:
        self.split, self.pairs, self.noise, self.pos = split, pairs, noise, pos
        self.batch_size, self.device, self.show_progress = batch_size, device, show_progress
        self.seconds = 0.0

    def run(self, fn: Callable[..., dict[str, torch.Tensor]], desc: str) -> dict[str, torch.Tensor]:
        """fn(x_sub, x_dom, noise, pos) on each batch -> dict of [b, ...] tensors, concatenated (float32, CPU)."""
        t0 = time.perf_counter()
        d, parts, start = self.split.data, defaultdict(list), 0
        bar = progress(len(self.pairs), desc=desc, enabled=self.show_progress)
        with torch.inference_mode():
            for u8 in self.split.batches(self.pairs.index, self.batch_size):  # [b, 2, 3, H, W]
                b = u8.shape[0]
                u8 = u8.to(self.device, non_blocking=True)
                xs, xd = normalize(u8[:, 0], d.mean, d.std), normalize(u8[:, 1], d.mean, d.std)
                sl = slice(start, start + b)
                for k, v in fn(xs, xd, self.noise[sl].to(self.device), self.pos[sl].to(self.device)).items():
                    parts[k].append(v.float().cpu())
                start += b
                bar.update(b)
        bar.close()
        self.seconds += time.perf_counter() - t0
        return {k: torch.cat(v) for k, v in parts.items()}


def mixture_tokens(model, x_sub: torch.Tensor, x_dom: torch.Tensor, alpha: float, noise: torch.Tensor, ratio: float,
                   pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The evaluated encoder on the mixture of x_sub, x_dom [B, C, H, W]: (tokens [B, T, D], cls, patch mean).
    (Tests plant encoders that see the sources here.)"""
    return encoder_tokens(model, mix(x_sub, x_dom, alpha), noise, ratio, pos)


# the token prefix of each predictor in the passes' outputs (of the mixture: mx[prefix]; of one source alone:
# src[prefix_sub], src[prefix_dom]); ``enc`` are the reference's own tokens
PREFIX = {"encoder": "E", "pixels": "pix", "reference_on_mixture": "enc", "random_init": "rand"}


def mixture_layer_tokens(model, x_sub: torch.Tensor, x_dom: torch.Tensor, alpha: float, noise: torch.Tensor,
                         ratio: float, pos: torch.Tensor,
                         layers: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`mixture_tokens` at each block of ``layers``: {k: (tokens, cls, patch mean)}, one pass."""
    return encoder_layer_tokens(model, mix(x_sub, x_dom, alpha), noise, ratio, pos, layers)


def _layer_view(d: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """The passes' outputs as one layer sees them: ``name@k`` read as ``name`` beside the layer-free entries."""
    out = {n: v for n, v in d.items() if "@" not in n}
    out.update({n.split("@")[0]: v for n, v in d.items() if n.endswith(f"@{k}")})
    return out


@dataclass
class _Layer:
    """What one measured block of the evaluated encoder accumulates."""

    raw: dict[tuple, Any] = field(default_factory=dict)
    tokens: dict[str, Any] = field(default_factory=dict)
    pooled: dict[str, Any] = field(default_factory=dict)
    cls_inputs: dict[str, torch.Tensor] = field(default_factory=dict)


def measure(subject: Subject, reference: Subject, split: Split, pairs: PairSet, cfg: EvalConfig, *,
            device: torch.device, show_progress: bool = True) -> Measurement:
    """Every score of the scheme for every alpha of ``cfg.separability.alphas`` (see the module docstring).
    ``cfg.separability.mask_ratio`` must be resolved (a number) by the caller.

    ``features.layers`` other than ``last``: the evaluated encoder's tokens are read at each of those blocks
    (:mod:`imae.eval.depth`) from the same passes; the targets, the baselines and the pairs are the same for
    every block (the baselines are fitted once), an i-MAE's branch maps are scored at the last block only. The
    returned Measurement is the deepest block's, with every block's in ``layers``."""
    s = cfg.separability
    model, ref = subject.model, reference.model
    depth = model.arch.depth
    layers = parse_layers(cfg.features.layers, depth)
    last_only = is_last_only(layers, depth)
    ratio = float(s.mask_ratio)
    noise = pair_noise(len(pairs), model.arch.num_patches, cfg.seed)
    pos = positions(noise, ratio)
    scorer = make_scorer(pairs, cfg)
    passes = _Passes(split, pairs, noise, pos, cfg.features.batch_size, device, show_progress)
    dmap = distill_map(ref, reference.has_decoder)
    predictors = ["encoder"] + [b for b in BASELINES if b in s.baselines]
    baselines = predictors[1:]
    rand = random_encoder(model.arch, s.random_init_seed).to(device) if "random_init" in predictors else None
    ratios = [ratio] + ([0.0] if s.unmasked and ratio > 0 else [])
    cls_ratio = ratios[-1]  # classification on the unmasked mixture when it is scored
    pool = "cls" if cfg.features.pool == "cls" else "mean"
    spaces = (["distill"] if dmap is not None else []) + ["encoder"]
    fit_s = 0.0
    state = {k: _Layer() for k in layers}
    shared: dict[tuple, Any] = {}  # the baselines' scores: the same at every block, so bootstrapped once
    cls_shared: dict[str, torch.Tensor] = {}  # classification inputs that are the same at every block (pixels)

    def evaluated(x, nz, r, ps):  # E's tokens of one input at every measured block
        if last_only:
            return {depth: encoder_tokens(model, x, nz, r, ps)}
        return encoder_layer_tokens(model, x, nz, r, ps, layers)

    for r in ratios:
        rk = alpha_key(r)

        def sources(xs, xd, nz, ps, r=r):
            out = {}
            for who, x in (("sub", xs), ("dom", xd)):
                t = encoder_tokens(ref, x, nz, r, ps)
                out[f"enc_{who}"], out[f"cls_{who}"], out[f"mean_{who}"] = t
                if dmap is not None:
                    out[f"distill_{who}"] = dmap(t[0])
                for k, e in evaluated(x, nz, r, ps).items():  # E on one source alone: the partner-only predictor
                    out[f"E_{who}@{k}"], out[f"Ecls_{who}@{k}"], out[f"Emean_{who}@{k}"] = e
                if "pixels" in predictors:
                    out[f"pix_{who}"] = pixel_tokens(model, x, ps)
                if rand is not None:
                    out[f"rand_{who}"] = encoder_tokens(rand, x, nz, r, ps)[0]
            return out

        src_all = passes.run(sources, f"sources alone (mask ratio {rk})")
        y, groups = _target_table(src_all, spaces, "distill", "enc")
        t0 = time.perf_counter()
        base_partner = {name: _partner_fit(src_all[f"{PREFIX[name]}_dom"], src_all[f"{PREFIX[name]}_sub"], y, pos,
                                           groups, scorer) for name in baselines}  # the same for every block
        pooled_targets = {p: _pooled_targets(src_all, p, dmap) for p in s.pooled}
        partners: dict[int, dict[str, dict[str, PairErrors]]] = {}
        pooled_partners: dict[int, dict[str, dict[str, PairErrors]]] = {}
        for k, st in state.items():
            src = _layer_view(src_all, k)
            block: dict[str, Any] = {"mixture": {}, "partner": {}, "gain": {}}
            partner = {"encoder": _partner_fit(src["E_dom"], src["E_sub"], y, pos, groups, scorer), **base_partner}
            for name, errs in partner.items():
                for group, e in errs.items():
                    space, who = group.split("/")
                    block["partner"].setdefault(name, {}).setdefault(space, {})[who] = _once(
                        shared if name in baselines else None, ("partner", rk, name, group), lambda e=e: scorer.r2(e))
                    st.raw[("partner", rk, name, space, who)] = e
            pooled_partner = {p: _partner_fit(src[f"E{p}_dom"].unsqueeze(1), src[f"E{p}_sub"].unsqueeze(1),
                                              pooled_targets[p][0], _zeros(len(pairs)), pooled_targets[p][1], scorer)
                              for p in s.pooled}
            for p, errs in pooled_partner.items():
                dest = st.pooled.setdefault(p, {}).setdefault(rk, {"mixture": {}, "partner": {}, "gain": {}})
                for group, e in errs.items():
                    space, who = group.split("/")
                    dest["partner"].setdefault("encoder", {}).setdefault(space, {})[who] = scorer.r2(e)
            if r == cls_ratio:
                st.cls_inputs["partner"] = src[f"E{pool}_dom"]
            st.tokens[rk] = block
            partners[k], pooled_partners[k] = partner, pooled_partner
        fit_s += time.perf_counter() - t0
        for alpha in s.alphas:
            ak = alpha_key(alpha)

            def mixtures(xs, xd, nz, ps, r=r, alpha=alpha):
                m = mix(xs, xd, alpha)
                if last_only:
                    per = {depth: mixture_tokens(model, xs, xd, alpha, nz, r, ps)}
                else:
                    per = mixture_layer_tokens(model, xs, xd, alpha, nz, r, ps, layers)
                out = {}
                for k, e in per.items():
                    out[f"E@{k}"], out[f"cls@{k}"], out[f"mean@{k}"] = e
                if "pixels" in predictors:
                    out["pix"] = pixel_tokens(model, m, ps)
                if r == cls_ratio:
                    out["pix_pool"] = F.adaptive_avg_pool2d(m, min(s.pixel_size, m.shape[-1])).flatten(1)
                if "reference_on_mixture" in predictors:
                    out["enc"] = encoder_tokens(ref, m, nz, r, ps)[0]
                if rand is not None:
                    out["rand"] = encoder_tokens(rand, m, nz, r, ps)[0]
                if subject.kind == "imae" and dmap is not None and depth in per:  # its branches read the output
                    z_sub, z_dom = model.split(per[depth][0])
                    out["branch_sub"] = model._adapt(z_sub)
                    if z_dom is not None:
                        out["branch_dom"] = model._adapt(z_dom)
                return out

            mx_all = passes.run(mixtures, f"mixtures alpha={ak} (mask ratio {rk})")
            t0 = time.perf_counter()
            base_errs = {name: _fit(mx_all[PREFIX[name]], y, pos, groups, scorer) for name in baselines}
            for k, st in state.items():
                mx = _layer_view(mx_all, k)
                block = st.tokens[rk]
                errs_of = {"encoder": _fit(mx["E"], y, pos, groups, scorer), **base_errs}
                for name in predictors:
                    _record(block, name, errs_of[name], partners[k][name], scorer, st.raw, rk, ak,
                            memo=shared if name in baselines else None)
                if k == depth:
                    for who, entry in _branch_scores(mx, src_all, pos, scorer, st.raw, rk, ak).items():
                        block.setdefault("branches", {}).setdefault(who, {})[ak] = entry
                for p in s.pooled:
                    errs = _fit(mx[p].unsqueeze(1), pooled_targets[p][0], _zeros(len(pairs)), pooled_targets[p][1],
                                scorer)
                    _record(st.pooled[p][rk], "encoder", errs, pooled_partners[k][p], scorer, st.raw, rk, ak,
                            key=f"pooled_{p}")
                if r == cls_ratio:
                    st.cls_inputs[f"enc/{ak}"] = mx[pool]
            if r == cls_ratio:
                cls_shared[f"pix/{ak}"] = mx_all["pix_pool"]
            fit_s += time.perf_counter() - t0
    common: dict[str, Any] = {
        "scheme": "tokens",
        "version": VERSION,
        "alphas": [float(a) for a in s.alphas],
        "mask_ratio": ratio,
        "ratios": [alpha_key(r) for r in ratios],
        "headline": {"alpha": headline_alpha(s.alphas), "ratio": alpha_key(ratio), "space": spaces[0],
                     "source": "sub"},
        "pairs": {**pairs.summary(), "same_class_p": s.same_class_p, "test_same": int(scorer.same.sum()),
                  "test_diff": int((~scorer.same).sum())},
        "reference": reference.identity(subject),
        "bootstrap": {"draws": s.bootstrap, "level": s.ci, "seed": cfg.seed},
        "targets": {"distill": dmap.out_features if dmap is not None else None, "encoder": ref.arch.embed_dim},
        "superposition": {alpha_key(a): {"sub": superposition(a), "dom": 1 - superposition(a)} for a in s.alphas},
    }
    out: dict[int, Measurement] = {}
    classify = s.classify and split.has_labels
    if classify:  # the pixel heads once, for every block
        t0 = time.perf_counter()
        pixel_hits = _class_hits(cls_shared, split, scorer, cfg, device)
        fit_s += time.perf_counter() - t0
    for k, st in state.items():
        results = {**common, "tokens": st.tokens}
        if st.pooled:
            results["pooled"] = st.pooled
        if classify:
            t0 = time.perf_counter()
            hits = {**_class_hits(st.cls_inputs, split, scorer, cfg, device), **pixel_hits}
            results["classification"] = _classify(hits, split, scorer, cfg, st.raw)
            results["classification"]["ratio"] = alpha_key(cls_ratio)
            fit_s += time.perf_counter() - t0
        out[k] = Measurement(SeparabilityResult(results), {}, st.raw, scorer)
    timing = {"extract_s": passes.seconds, "fit_s": fit_s}
    deepest = out[layers[-1]]
    if last_only:
        deepest.timing = timing
        return deepest
    combined = combine({k: m.results for k, m in out.items()}, depth)
    return Measurement(SeparabilityResult(combined), timing, deepest.raw, scorer, layers=out)


def make_scorer(pairs: PairSet, cfg: EvalConfig) -> Scorer:
    s = cfg.separability
    return Scorer(pairs, Resampler.draw(int(pairs.rows("test").numel()), s.bootstrap, cfg.seed, s.ci), s.penalties)


def measure_stored(subject: Subject, reference: Subject, split: Split, pairs: PairSet, cfg: EvalConfig, *,
                   device: torch.device, store: ItemStore | None, show_progress: bool = True) -> Measurement:
    """:func:`measure`, or its per-item scores from ``store`` when the same checkpoint was measured against the
    same reference, pairs and settings before (each block of ``features.layers`` is stored on its own; the last
    block under the key it had before layers existed)."""
    depth = subject.model.arch.depth
    layers = parse_layers(cfg.features.layers, depth)
    base = store_key(subject, reference, split, pairs, cfg) if store is not None and store.enabled else None
    keys = {k: None if base is None else base if k == depth else {**base, "layer": k} for k in layers}
    found = {k: store.get(key) for k, key in keys.items() if key is not None}
    if base is None or any(v is None for v in found.values()):
        m = measure(subject, reference, split, pairs, cfg, device=device, show_progress=show_progress)
        if base is not None:
            for k in layers:
                one = m.at_layer(k)
                store.put(keys[k], one.results, m.timing, one.raw)
        return m
    scorer = make_scorer(pairs, cfg)
    out = {k: Measurement(SeparabilityResult(results), {**timing, "stored": True}, raw, scorer)
           for k, (results, timing, raw) in found.items()}
    deepest = out[layers[-1]]
    if is_last_only(layers, depth):
        return deepest
    combined = combine({k: m.results for k, m in out.items()}, depth)
    return Measurement(SeparabilityResult(combined), deepest.timing, deepest.raw, scorer, layers=out)


def run_separability(subject: Subject, reference: Subject, split: Split, pairs: PairSet, cfg: EvalConfig, *,
                     device: torch.device, show_progress: bool = True,
                     store: ItemStore | None = None) -> dict[str, Any]:
    """The ``results`` and ``timing`` of :func:`measure` (what ``imae separability`` writes); the per-item scores
    are kept in ``store`` for ``imae compare``."""
    m = measure_stored(subject, reference, split, pairs, cfg, device=device, store=store,
                       show_progress=show_progress)
    return {"results": m.results, "timing": m.timing}


def _zeros(n: int) -> torch.Tensor:
    return torch.zeros(n, 1, dtype=torch.long)  # pooled predictors: one token at position 0


def _target_table(src: dict[str, torch.Tensor], spaces: list[str], distill: str,
                  enc: str) -> tuple[torch.Tensor, dict[str, slice]]:
    """Y [P, T, E]: the target groups ``<space>/<source>`` side by side, and each group's columns."""
    blocks, groups, start = [], {}, 0
    for space in spaces:
        for who in SOURCES:
            t = src[f"{distill if space == 'distill' else enc}_{who}"]
            groups[f"{space}/{who}"] = slice(start, start + t.shape[-1])
            start += t.shape[-1]
            blocks.append(t)
    return torch.cat(blocks, dim=-1), groups


def _pooled_targets(src: dict[str, torch.Tensor], pool: str, dmap) -> tuple[torch.Tensor, dict[str, slice]]:
    """Pooled targets [P, 1, E]: the reference's pooled tokens (and their distillation-space image)."""
    d = {f"enc_{w}": src[f"{pool}_{w}"].unsqueeze(1) for w in SOURCES}
    spaces = ["encoder"]
    if dmap is not None:
        w, b = dmap.weight.detach().float().cpu(), dmap.bias.detach().float().cpu()
        d.update({f"distill_{k}": d[f"enc_{k}"] @ w.T + b for k in SOURCES})
        spaces = ["distill", "encoder"]
    return _target_table(d, spaces, "distill", "enc")


def _fit(x: torch.Tensor, y: torch.Tensor, pos: torch.Tensor, groups: dict[str, slice],
         scorer: Scorer) -> dict[str, PairErrors]:
    with threads_for(x.numel() + y.numel()):
        return fit_tokens(x, y, pos, scorer.fit, scorer.val, scorer.test, groups, scorer.penalties)


def _partner_fit(of_dom: torch.Tensor, of_sub: torch.Tensor, y: torch.Tensor, pos: torch.Tensor,
                 groups: dict[str, slice], scorer: Scorer) -> dict[str, PairErrors]:
    """The partner-only ridges: the predictor's tokens of the dominant image alone -> the subordinate's targets,
    of the subordinate alone -> the dominant's."""
    errs: dict[str, PairErrors] = {}
    for x, who in ((of_dom, "sub"), (of_sub, "dom")):
        errs.update(_fit(x, y, pos, {g: c for g, c in groups.items() if g.endswith(f"/{who}")}, scorer))
    return errs


def _once(memo: dict[tuple, Any] | None, key: tuple, score: Callable[[], Any]) -> Any:
    """``score()``, computed once per key when a memo is given (a baseline's scores are the same at every block)."""
    if memo is None:
        return score()
    if key not in memo:
        memo[key] = score()
    return memo[key]


def _record(block: dict[str, Any], name: str, errs: dict[str, PairErrors], partner: dict[str, PairErrors],
            scorer: Scorer, raw: dict, rk: str, ak: str, key: str | None = None,
            memo: dict[tuple, Any] | None = None) -> None:
    """Store one predictor's mixture R^2 and gain at one alpha: block["mixture"|"gain"][name][space][source][ak].
    ``memo``: scores already computed for this predictor at another block (baselines only)."""
    for group, e in errs.items():
        space, who = group.split("/")
        at = (name, group, rk, ak)
        block["mixture"].setdefault(name, {}).setdefault(space, {}).setdefault(who, {})[ak] = _once(
            memo, ("mixture", *at), lambda e=e: scorer.r2(e))
        gains = block["gain"].setdefault(name, {}).setdefault(space, {}).setdefault(who, {})
        gains[ak] = _once(memo, ("gain", *at), lambda e=e, group=group: scorer.gain(e, partner[group]))
        raw[("mixture", rk, key or name, space, who, ak)] = e


def _branch_scores(mx, src, pos, scorer: Scorer, raw: dict, rk: str, ak: str) -> dict[str, Any]:
    """An i-MAE's own branch maps against the reference's distillation targets, nothing refitted."""
    out = {}
    for who in SOURCES:
        pred, target = mx.get(f"branch_{who}"), src.get(f"distill_{who}")
        if pred is None or target is None or pred.shape[-1] != target.shape[-1]:
            continue
        e = direct_errors(pred, target, pos, scorer.fit, scorer.test)
        raw[("branch", rk, who, ak)] = e
        out[who] = scorer.r2(e)
    return out


def _class_hits(inputs: dict[str, torch.Tensor], split: Split, scorer: Scorer, cfg: EvalConfig,
                device: torch.device) -> dict[str, torch.Tensor]:
    """Linear heads predicting (subordinate class, dominant class) from each pooled input [P, D] ("kind/alpha" or
    "kind"), fitted on the fit + validation pairs: each input's hits on the test pairs [T, 2] bool. Every head has
    the same fixed penalty (``linprobe.l2``, else :data:`imae.eval.probe_heads.DEFAULT_L2`), whatever the model;
    the inputs of one kind (one width) are fitted as one batched problem, always the same batch for a kind."""
    pairs = scorer.pairs
    train = torch.cat([scorer.fit, scorer.val])
    y = torch.stack([split.labels[pairs.sub], split.labels[pairs.dom]], dim=1)  # [P, 2]
    y_test = y[scorer.test]
    groups: dict[str, list[str]] = defaultdict(list)
    for name in inputs:
        groups[name.split("/")[0]].append(name)
    hits = {}
    for names in groups.values():
        fits = fit_cached_many([inputs[n][train] for n in names], y[train], split.num_classes, cfg.linprobe,
                               seed=cfg.seed, device=device)
        for name, fit in zip(names, fits):
            hits[name] = predict(fit.head, inputs[name][scorer.test]).argmax(-1) == y_test
    return hits


def _classify(hits: dict[str, torch.Tensor], split: Split, scorer: Scorer, cfg: EvalConfig,
              raw: dict) -> dict[str, Any]:
    """The classification entry from :func:`_class_hits`' hits of E's pooled mixture latents (``enc/<alpha>``),
    the pooled mixture pixels (``pix/<alpha>``) and E on the dominant image alone (``partner``)."""
    pairs = scorer.pairs
    y_test = torch.stack([split.labels[pairs.sub], split.labels[pairs.dom]], dim=1)[scorer.test]  # [T, 2]
    out: dict[str, Any] = {"pool": cfg.features.pool, "encoder": {}, "baselines": {"pixels": {}}}
    for name, hit in hits.items():
        entry = {who: scorer.accuracy(hit[:, k]) for k, who in enumerate(SOURCES)}
        kind, ak = name.split("/") if "/" in name else (name, None)
        if kind == "enc":
            out["encoder"][ak] = entry
            for k, who in enumerate(SOURCES):
                raw[("acc", who, ak)] = hit[:, k]
        elif kind == "pix":
            out["baselines"]["pixels"][ak] = entry
        else:
            out["baselines"]["partner_only"] = entry
    out["chance"] = {who: _majority_rate(y_test[:, k]) for k, who in enumerate(SOURCES)}
    diff = ~scorer.same  # where the subordinate's class is not the dominant's: the only pairs its accuracy means
    out["chance_diff"] = {who: _majority_rate(y_test[diff, k]) for k, who in enumerate(SOURCES)}
    return out


def _majority_rate(labels: torch.Tensor) -> float:
    return float(torch.bincount(labels).max() / labels.numel()) if labels.numel() else float("nan")
