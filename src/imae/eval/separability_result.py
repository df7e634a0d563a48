"""The separability result as one typed object: every reader (the command line, ``compare``, the quickstart,
``imae report``, ``studies/``) asks it for numbers instead of walking the JSON.

``results`` of ``separability.json`` (scheme version 2; docs/evaluation.md has the full schema)::

    {"scheme": "tokens", "version": 2, "alphas": [...], "mask_ratio", "ratios": ["0.75", "0"],
     "headline": {"alpha": "0.3", "ratio": "0.75", "space": "distill", "source": "sub"},
     "pairs", "reference", "bootstrap", "targets", "superposition",
     "tokens": {ratio: {"mixture": {predictor: {space: {source: {alpha: r2 entry}}}},
                        "partner": {predictor: {space: {source: r2 entry}}},
                        "gain":    {predictor: {space: {source: {alpha: gain entry}}}},
                        "branches": {source: {alpha: r2 entry}}}},          # i-MAE only
     "classification": {...}}

Predictors: ``encoder`` (the evaluated encoder), and the baselines ``pixels``, ``reference_on_mixture``,
``random_init``. An r2 entry is ``{"r2", "ci", "penalty", "val_r2", "same", "diff"}``; a gain entry
``{"gain", "ci", "mixture", "partner", "same", "diff"}`` (subsets: ``{"gain", "ci", "n"}`` or None).

Results written before the gain (version 1: ``encoder`` / ``baselines`` blocks) are read too, as ``legacy``:
their mixture R^2 is there, their partner-only R^2 only for the subordinate and no gain interval.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

HEADLINE_ALPHA = 0.3  # the one headline mixing weight; a result without it reports the scored alpha nearest to it
PREDICTORS = ("encoder", "pixels", "reference_on_mixture", "random_init")
SOURCES = ("sub", "dom")
VERSION = 2
# what a reference is to the evaluated model, and what tables print beside a row scored against it
ROLE_NOTES = {"referee": "", "self": "scored against itself", "teacher": "scored against its own teacher",
              "start": "scored against the checkpoint it started from",
              "unknown": "reference's role not recorded (old scheme)"}


def alpha_key(alpha: float | str) -> str:
    return f"{float(alpha):g}"


def headline_alpha(alphas: list[float] | list[str]) -> str:
    """The key of the headline alpha among those scored: 0.3, else the nearest (the smaller on a tie)."""
    return alpha_key(min((float(a) for a in alphas), key=lambda a: (abs(a - HEADLINE_ALPHA), a)))


@dataclass
class SeparabilityResult:
    """One separability evaluation's numbers (the ``results`` of ``separability.json``)."""

    data: dict[str, Any]

    @classmethod
    def from_json(cls, results: dict[str, Any]) -> SeparabilityResult:
        """Read ``results`` of either scheme version (a copy; the argument is left as it is)."""
        data = copy.deepcopy(results)
        if data.get("scheme") != "tokens":
            raise ValueError("not a token-level separability result (scheme 'tokens')")
        if data.get("version", 1) < VERSION:
            data = _from_v1(data)
        return cls(data)

    def to_json(self) -> dict[str, Any]:
        return self.data

    # -- what was scored ---------------------------------------------------------------------------------------
    @property
    def legacy(self) -> bool:
        """Written before the un-mixing gain: no gain intervals, no partner-only score of the dominant."""
        return bool(self.data.get("legacy"))

    @property
    def alphas(self) -> list[str]:
        return [alpha_key(a) for a in self.data["alphas"]]

    @property
    def ratios(self) -> list[str]:
        return list(self.data["ratios"])

    @property
    def head(self) -> dict[str, str]:
        """Where the headline is read: {"alpha", "ratio", "space", "source"}."""
        return self.data["headline"]

    @property
    def reference(self) -> dict[str, Any]:
        return self.data.get("reference") or {}

    @property
    def reference_note(self) -> str:
        """"" for a referee; else what the reference is to the evaluated model ("scored against its own teacher")."""
        return self.reference.get("note") or ""

    @property
    def pairs(self) -> dict[str, Any]:
        return self.data["pairs"]

    def _where(self, alpha, space, ratio) -> tuple[str | None, str, str]:
        ak = None if alpha is None else alpha_key(alpha)
        return ak, space or self.head["space"], ratio or self.head["ratio"]

    # -- scores ------------------------------------------------------------------------------------------------
    def r2(self, source: str, alpha: float | str | None = None, *, predictor: str = "encoder",
           space: str | None = None, ratio: str | None = None) -> dict[str, Any] | None:
        """R^2 of ``source``'s reference tokens from ``predictor``'s tokens of the mixture (None if not scored)."""
        ak, space, ratio = self._where(alpha if alpha is not None else self.head["alpha"], space, ratio)
        return _get(self.data["tokens"], ratio, "mixture", predictor, space, source, ak)

    def partner(self, source: str, *, predictor: str = "encoder", space: str | None = None,
                ratio: str | None = None) -> dict[str, Any] | None:
        """R^2 of ``source``'s reference tokens from ``predictor``'s tokens of the *other* image alone."""
        _, space, ratio = self._where(None, space, ratio)
        return _get(self.data["tokens"], ratio, "partner", predictor, space, source)

    def gain(self, source: str, alpha: float | str | None = None, *, predictor: str = "encoder",
             space: str | None = None, ratio: str | None = None) -> dict[str, Any] | None:
        """The un-mixing gain R^2(target | mixture) - R^2(target | partner alone), with its paired interval."""
        ak, space, ratio = self._where(alpha if alpha is not None else self.head["alpha"], space, ratio)
        return _get(self.data["tokens"], ratio, "gain", predictor, space, source, ak)

    def branch(self, source: str, alpha: float | str | None = None, *, ratio: str | None = None) -> dict | None:
        """An i-MAE's own branch map against the reference's distillation targets, nothing refitted."""
        ak, _, ratio = self._where(alpha if alpha is not None else self.head["alpha"], None, ratio)
        return _get(self.data["tokens"], ratio, "branches", source, ak)

    def class_accuracy(self, source: str, alpha: float | str | None = None, *, predictor: str = "encoder",
                       subset: str | None = "diff") -> dict[str, Any] | None:
        """Accuracy of the linear head predicting ``source``'s class from the pooled mixture latent, on the
        ``subset`` of test pairs ("diff": different-class pairs, the default; "same"; None: all). ``predictor``:
        "encoder", "pixels" (the mixture's pooled pixels) or "partner_only" (E on the other image alone)."""
        cls = self.data.get("classification")
        if not cls:
            return None
        ak = alpha_key(alpha if alpha is not None else self.head["alpha"])
        if predictor == "partner_only":  # the head on the other image alone: one entry, whatever alpha
            entry = cls["baselines"].get("partner_only")
        else:
            entry = (cls["encoder"] if predictor == "encoder" else cls["baselines"].get(predictor) or {}).get(ak)
        if not entry or source not in entry:
            return None
        return entry[source] if subset is None else entry[source].get(subset)

    def superposition(self, source: str = "sub", alpha: float | str | None = None) -> float:
        """The independent-sources line: alpha^2 / (alpha^2 + (1 - alpha)^2) for the subordinate."""
        return self.data["superposition"][alpha_key(alpha if alpha is not None else self.head["alpha"])][source]

    def headline(self) -> dict[str, Any]:
        """The numbers a table row shows: the gain of the headline source at the headline alpha with its interval,
        the R^2 it is the difference of, the trivial predictors' gains, and the reference's role."""
        h = self.head
        g, m, p = self.gain(h["source"]), self.r2(h["source"]), self.partner(h["source"])
        out: dict[str, Any] = {**h, "gain": g["gain"] if g else None, "gain_ci": g["ci"] if g else [None, None],
                               "r2_mixture": m["r2"] if m else None, "r2_ci": m["ci"] if m else [None, None],
                               "r2_partner": p["r2"] if p else None, "reference": self.reference.get("label"),
                               "reference_note": self.reference_note}
        for name in PREDICTORS[1:]:
            b = self.gain(h["source"], predictor=name)
            out[f"{name}_gain"] = b["gain"] if b else None
        dom = self.gain("dom")
        out["gain_dom"] = dom["gain"] if dom else None
        diff = (g or {}).get("diff")
        out["gain_diff_class"] = diff["gain"] if diff else None
        branch = self.branch(h["source"])
        out["branch_r2"] = branch["r2"] if branch else None
        acc = self.class_accuracy(h["source"])
        out["sub_class_acc_diff"] = acc["acc"] if acc else None
        return out


def _get(tree: dict[str, Any], *keys: str | None) -> Any:
    for k in keys:
        if not isinstance(tree, dict) or k not in tree:
            return None
        tree = tree[k]
    return tree


def _from_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 result (``encoder`` / ``baselines`` blocks) in version 2's layout, marked ``legacy``."""
    tokens = {}
    for rk, block in data["tokens"].items():
        mixture = {"encoder": _drop_sum(block["encoder"])}
        for name, values in block.get("baselines", {}).items():
            if name != "partner_only":
                mixture[name] = _drop_sum(values)
        new: dict[str, Any] = {"mixture": mixture, "partner": {}, "gain": {}}
        partner = block.get("baselines", {}).get("partner_only")
        if partner:  # version 1 ran E on the dominant image only: a partner-only score of the subordinate alone
            new["partner"]["encoder"] = {space: {"sub": v["sub"]} for space, v in partner.items()}
            new["gain"]["encoder"] = {
                space: {"sub": {ak: {"gain": e["r2"] - v["sub"]["r2"], "ci": [None, None], "mixture": e["r2"],
                                     "partner": v["sub"]["r2"], "same": None, "diff": None}
                                for ak, e in mixture["encoder"][space]["sub"].items()}}
                for space, v in partner.items()}
        if "branches" in block:
            new["branches"] = block["branches"]
        tokens[rk] = new
    data["tokens"] = tokens
    first = data["tokens"][data["ratios"][0]]["mixture"]["encoder"]
    data["headline"] = {"alpha": headline_alpha(data["alphas"]), "ratio": data["ratios"][0],
                        "space": "distill" if "distill" in first else "encoder", "source": "sub"}
    data["version"], data["legacy"] = VERSION, True
    ref = data.get("reference")
    if ref and "role" not in ref:  # version 1 recorded self and teacher only: any other reference is of unknown role
        ref["role"] = "self" if ref.get("is_self") else "teacher" if ref.get("is_teacher") else "unknown"
        ref["note"] = ROLE_NOTES[ref["role"]]
    return data


def _drop_sum(values: dict[str, Any]) -> dict[str, Any]:
    return {space: {who: v for who, v in by.items() if who in SOURCES} for space, by in values.items()}
