"""Linear separability of the latent space (METHOD.md section 4): token-level, objective-matched, with
baselines and bootstrap intervals.

For every held-out pair (:mod:`imae.eval.pairs`) and one seeded mask per pair (:mod:`imae.eval.tokens`):

- the evaluated encoder E encodes the mixture ``alpha * x_sub + (1 - alpha) * x_dom`` under the mask;
- the reference R (one fixed MAE for every model of a comparison; default the i-MAE run's teacher)
  encodes each *clean* source under the same mask. Targets: R's tokens in the distillation space
  (``decoder_embed`` output, what i-MAE distils towards: ``distill``) and R's encoder tokens (``encoder``);
- one ridge map shared by every token position, tokens centred per position (:mod:`imae.eval.token_ridge`),
  penalty chosen on the validation pairs, variance-weighted R^2 on the test pairs;
- for an i-MAE, ``branches``: its own branch maps (and adapter) applied to E's tokens, nothing refitted.

Scored at the training mask ratio (the headline) and at ratio 0 (E sees every patch, tokens read at the
same positions). Baselines on the same pairs and masks: ``superposition`` (the line
alpha^2 / (alpha^2 + (1-alpha)^2) that a linear mix of two independent, equal-variance sources gives),
``pixels`` (the mixture's own patch pixels), ``reference_on_mixture`` (R applied to the mixture: a model
never trained on mixtures), ``random_init`` (an untrained encoder of E's architecture) and
``partner_only`` (E on the dominant image alone: the floor set by class confounds in same-class pairs).
R^2(sub) + R^2(dom) above the superposition sum (1) means the encoder un-mixes.

Classification: one linear head per alpha on E's pooled mixture latent (at ratio 0 when it is scored,
else at the training ratio) predicts the subordinate's and the dominant's class; baselines ``pixels``
(pooled mixture pixels), ``partner_only`` (E on the dominant image) and majority-class chance.

Every score carries a 95% paired-bootstrap interval over test pairs (:mod:`imae.eval.bootstrap`) and is
also given for same-class and different-class test pairs, with their counts.
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
from imae.eval.data import Split
from imae.eval.linear import fit_cached_many, predict
from imae.eval.pairs import PairSet
from imae.eval.subject import Subject
from imae.eval.threads import threads_for
from imae.eval.token_ridge import PairErrors, direct_errors, fit_tokens
from imae.eval.tokens import distill_map, encoder_tokens, pair_noise, pixel_tokens, positions, random_encoder

SOURCES = ("sub", "dom")


def alpha_key(alpha: float) -> str:
    return f"{alpha:g}"


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
            out[tag] = None if n < 2 else {
                "r2": float(1 - e.sse[keep].sum() / e.sst[keep].sum().clamp_min(1e-300)),
                "ci": self.rs.interval(self.rs.r2_draws(e.sse, e.sst, keep)), "n": n}
        return out

    def r2_sum(self, a: PairErrors, b: PairErrors) -> dict[str, Any]:
        draws = self.rs.r2_draws(a.sse, a.sst) + self.rs.r2_draws(b.sse, b.sst)
        return {"r2": a.r2 + b.r2, "ci": self.rs.interval(draws)}

    def accuracy(self, correct: torch.Tensor) -> dict[str, Any]:
        out: dict[str, Any] = {"acc": float(correct.double().mean()),
                               "ci": self.rs.interval(self.rs.mean_draws(correct))}
        for tag, keep in self.subsets():
            n = int(keep.sum())
            out[tag] = None if n == 0 else {"acc": float(correct[keep].double().mean()),
                                            "ci": self.rs.interval(self.rs.mean_draws(correct, keep)), "n": n}
        return out


@dataclass
class Measurement:
    """A separability evaluation: the JSON ``results``, its ``timing``, and the per-test-pair ``raw`` scores
    that :mod:`imae.eval.compare` pairs across models (``("r2", ratio, predictor, space, source, alpha)`` ->
    PairErrors; ``("acc", source, alpha)`` -> correctness [n_test])."""

    results: dict[str, Any]
    timing: dict[str, float]
    raw: dict[tuple, Any]
    scorer: Scorer


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


def _pooled(tokens: tuple[torch.Tensor, torch.Tensor, torch.Tensor], pool: str) -> torch.Tensor:
    return tokens[1] if pool == "cls" else tokens[2]


def measure(subject: Subject, reference: Subject, split: Split, pairs: PairSet, cfg: EvalConfig, *,
            device: torch.device, show_progress: bool = True) -> Measurement:
    """Every score of the scheme for every alpha of ``cfg.separability.alphas`` (see the module docstring).
    ``cfg.separability.mask_ratio`` must be resolved (a number) by the caller."""
    s = cfg.separability
    model, ref = subject.model, reference.model
    ratio = float(s.mask_ratio)
    noise = pair_noise(len(pairs), model.arch.num_patches, cfg.seed)
    pos = positions(noise, ratio)
    scorer = Scorer(pairs, Resampler.draw(int(pairs.rows("test").numel()), s.bootstrap, cfg.seed, s.ci), s.penalties)
    passes = _Passes(split, pairs, noise, pos, cfg.features.batch_size, device, show_progress)
    dmap = distill_map(ref)
    baselines = [b for b in BASELINES if b in s.baselines]
    rand = random_encoder(model.arch, s.random_init_seed).to(device) if "random_init" in baselines else None
    ratios = [ratio] + ([0.0] if s.unmasked and ratio > 0 else [])
    cls_ratio = ratios[-1]  # classification on the unmasked mixture when it is scored
    pool = cfg.features.pool
    fit_s = 0.0
    raw: dict[tuple, Any] = {}
    tokens: dict[str, Any] = {}
    pooled: dict[str, Any] = {}
    cls_inputs: dict[str, torch.Tensor] = {}
    for r in ratios:
        rk = alpha_key(r)

        def sources(xs, xd, nz, ps, r=r):
            out = {}
            for who, x in (("sub", xs), ("dom", xd)):
                t = encoder_tokens(ref, x, nz, r, ps)
                out[f"enc_{who}"], out[f"cls_{who}"], out[f"mean_{who}"] = t
                if dmap is not None:
                    out[f"distill_{who}"] = dmap(t[0])
            e = encoder_tokens(model, xd, nz, r, ps)  # partner_only: E on the dominant image alone
            out["partner"], out["partner_pool"] = e[0], _pooled(e, pool)
            return out

        src = passes.run(sources, f"reference on clean sources (mask ratio {rk})")
        spaces = (["distill"] if dmap is not None else []) + ["encoder"]
        y, groups = _target_table(src, spaces, "distill", "enc")
        t0 = time.perf_counter()
        block: dict[str, Any] = {"encoder": {}, "baselines": {b: {} for b in baselines}}
        if "partner_only" in baselines:
            errs = _fit(src["partner"], y, pos, groups, scorer)
            block["baselines"]["partner_only"] = _by_space(errs, scorer, raw, (rk, "partner_only"), None)
        fit_s += time.perf_counter() - t0
        if r == cls_ratio:
            cls_inputs["partner"] = src["partner_pool"]
        for alpha in s.alphas:
            ak = alpha_key(alpha)

            def mixtures(xs, xd, nz, ps, r=r, alpha=alpha):
                m = mix(xs, xd, alpha)
                e = mixture_tokens(model, xs, xd, alpha, nz, r, ps)
                out = {"enc": e[0], "cls": e[1], "mean": e[2], "pix": pixel_tokens(model, m, ps)}
                if r == cls_ratio:
                    out["pix_pool"] = F.adaptive_avg_pool2d(m, min(s.pixel_size, m.shape[-1])).flatten(1)
                if "reference_on_mixture" in baselines:
                    out["ref"] = encoder_tokens(ref, m, nz, r, ps)[0]
                if rand is not None:
                    out["rand"] = encoder_tokens(rand, m, nz, r, ps)[0]
                if subject.kind == "imae" and dmap is not None:
                    z_sub, z_dom = model.split(e[0])
                    out["branch_sub"] = model._adapt(z_sub)
                    if z_dom is not None:
                        out["branch_dom"] = model._adapt(z_dom)
                return out

            mx = passes.run(mixtures, f"mixtures alpha={ak} (mask ratio {rk})")
            t0 = time.perf_counter()
            _put_alpha(block["encoder"], ak, _by_space(_fit(mx["enc"], y, pos, groups, scorer), scorer, raw,
                                                       (rk, "encoder"), ak))
            for name, key in (("pixels", "pix"), ("reference_on_mixture", "ref"), ("random_init", "rand")):
                if name in baselines:
                    errs = _fit(mx[key], y, pos, groups, scorer)
                    _put_alpha(block["baselines"][name], ak, _by_space(errs, scorer, raw, (rk, name), ak))
            branches = _branch_scores(mx, src, pos, scorer, raw, rk, ak)
            if branches:
                for who, entry in branches.items():
                    block.setdefault("branches", {}).setdefault(who, {})[ak] = entry
            for p in s.pooled:
                target = _pooled_targets(src, p, dmap)
                errs = _fit(mx[p].unsqueeze(1), target[0], torch.zeros(len(pairs), 1, dtype=torch.long),
                            target[1], scorer)
                _put_alpha(pooled.setdefault(p, {}).setdefault(rk, {}), ak,
                           _by_space(errs, scorer, raw, (rk, f"pooled_{p}"), ak))
            if r == cls_ratio:
                cls_inputs[f"enc/{ak}"] = mx["cls" if pool == "cls" else "mean"]
                cls_inputs[f"pix/{ak}"] = mx["pix_pool"]
            fit_s += time.perf_counter() - t0
        tokens[rk] = block
    results: dict[str, Any] = {
        "scheme": "tokens",
        "alphas": [float(a) for a in s.alphas],
        "mask_ratio": ratio,
        "ratios": [alpha_key(r) for r in ratios],
        "pairs": {**pairs.summary(), "same_class_p": s.same_class_p, "test_same": int(scorer.same.sum()),
                  "test_diff": int((~scorer.same).sum())},
        "reference": reference.identity(subject),
        "bootstrap": {"draws": s.bootstrap, "level": s.ci, "seed": cfg.seed},
        "targets": {"distill": dmap.out_features if dmap is not None else None, "encoder": ref.arch.embed_dim},
        "superposition": {alpha_key(a): {"sub": superposition(a), "dom": 1 - superposition(a)} for a in s.alphas},
        "tokens": tokens,
    }
    if pooled:
        results["pooled"] = pooled
    if s.classify and split.has_labels:
        t0 = time.perf_counter()
        results["classification"] = _classify(cls_inputs, split, scorer, cfg, device, raw)
        results["classification"]["ratio"] = alpha_key(cls_ratio)
        fit_s += time.perf_counter() - t0
    return Measurement(results, {"extract_s": passes.seconds, "fit_s": fit_s}, raw, scorer)


def run_separability(subject: Subject, reference: Subject, split: Split, pairs: PairSet, cfg: EvalConfig, *,
                     device: torch.device, show_progress: bool = True) -> dict[str, Any]:
    """The ``results`` and ``timing`` of :func:`measure` (what ``imae separability`` writes)."""
    m = measure(subject, reference, split, pairs, cfg, device=device, show_progress=show_progress)
    return {"results": m.results, "timing": m.timing}


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


def _by_space(errs: dict[str, PairErrors], scorer: Scorer, raw: dict, key: tuple,
              ak: str | None) -> dict[str, dict[str, Any]]:
    """{space: {"sub": entry, "dom": entry, "sum": entry}} of one predictor at one alpha (or alpha-free)."""
    out: dict[str, dict[str, Any]] = {}
    for group, e in errs.items():
        space, who = group.split("/")
        out.setdefault(space, {})[who] = scorer.r2(e)
        raw[("r2", *key, space, who, ak)] = e
    for space, entries in out.items():
        entries["sum"] = scorer.r2_sum(errs[f"{space}/sub"], errs[f"{space}/dom"])
    return out


def _put_alpha(dest: dict, ak: str, by_space: dict[str, dict[str, Any]]) -> None:
    """Store one alpha's {space: {source: entry}} as dest[space][source][alpha]."""
    for space, entries in by_space.items():
        for who, entry in entries.items():
            dest.setdefault(space, {}).setdefault(who, {})[ak] = entry


def _branch_scores(mx, src, pos, scorer: Scorer, raw: dict, rk: str, ak: str) -> dict[str, Any]:
    """An i-MAE's own branch maps against the reference's distillation targets, nothing refitted."""
    out = {}
    for who in SOURCES:
        pred, target = mx.get(f"branch_{who}"), src.get(f"distill_{who}")
        if pred is None or target is None or pred.shape[-1] != target.shape[-1]:
            continue
        e = direct_errors(pred, target, pos, scorer.fit, scorer.test)
        raw[("r2", rk, "branches", "distill", who, ak)] = e
        out[who] = scorer.r2(e)
    return out


def _classify(inputs: dict[str, torch.Tensor], split: Split, scorer: Scorer, cfg: EvalConfig,
              device: torch.device, raw: dict) -> dict[str, Any]:
    """Linear heads predicting (subordinate class, dominant class) from each pooled input, fitted on the fit +
    validation pairs, scored on the test pairs."""
    pairs = scorer.pairs
    train = torch.cat([scorer.fit, scorer.val])
    y = torch.stack([split.labels[pairs.sub], split.labels[pairs.dom]], dim=1)  # [P, 2]
    y_test = y[scorer.test]
    out: dict[str, Any] = {"pool": cfg.features.pool, "encoder": {}, "baselines": {"pixels": {}}}
    groups: dict[str, list[str]] = defaultdict(list)
    for name in inputs:
        groups[name.split("/")[0]].append(name)
    for kind, names in groups.items():  # inputs of one width are fitted as one batched problem
        fits = fit_cached_many([inputs[n][train] for n in names], y[train], split.num_classes, cfg.linprobe,
                               seed=cfg.seed, device=device)
        for name, fit in zip(names, fits):
            hit = predict(fit.head, inputs[name][scorer.test]).argmax(-1) == y_test  # [T, 2]
            entry = {who: scorer.accuracy(hit[:, k]) for k, who in enumerate(SOURCES)}
            ak = name.split("/")[1] if "/" in name else None
            if kind == "enc":
                out["encoder"][ak] = entry
                for k, who in enumerate(SOURCES):
                    raw[("acc", who, ak)] = hit[:, k]
            elif kind == "pix":
                out["baselines"]["pixels"][ak] = entry
            else:
                out["baselines"]["partner_only"] = entry
    out["chance"] = {who: _majority_rate(y_test[:, k]) for k, who in enumerate(SOURCES)}
    return out


def _majority_rate(labels: torch.Tensor) -> float:
    return float(torch.bincount(labels).max() / labels.numel()) if labels.numel() else float("nan")
