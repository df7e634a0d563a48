"""The study scripts: each scale's committed results (digits, CIFAR-10 on the CPU) regenerate their own tables
and claims, and every scale's run.sh plans the arms of issue 11 (printed with IMAE=echo, nothing trained)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "studies"))


@pytest.fixture(params=["digits", "cifar10-cpu"])
def results(request, tmp_path):
    committed = ROOT / "studies" / request.param / "results"
    assert (committed / "claims.json").is_file(), f"{committed} has no committed results"
    out = tmp_path / "results"
    shutil.copytree(committed, out)
    return out, committed


def test_committed_table_and_claims_are_what_the_scripts_compute_from_the_committed_results(results):
    """A committed study of independent teachers: its tables per referee and its claims are what the scripts
    compute from its committed runs, every verdict follows the rule from its interval over teachers, and the
    per-teacher differences are those of the committed comparisons."""
    import claims
    import table

    results, committed = results
    recomputed = claims.main(results)
    assert recomputed == json.loads((committed / "claims.json").read_text())
    assert (results / "claims.md").read_text() == (committed / "claims.md").read_text()
    first = recomputed["referees"][0]
    for r in recomputed["referees"]:
        tab = table.main(results, referee=r)
        assert tab == (committed / f"table-referee-s{r}.md").read_text()
        unmasked = committed / f"table-referee-s{r}-unmasked.md"
        if unmasked.is_file():
            assert table.main(results, ratio="0", referee=r) == unmasked.read_text()
        assert tab.startswith("| arm | teachers |")
        for baseline in ("superposition", "pixels", "reference on mixture", "random init", "partner only"):
            assert f"| baseline: {baseline} (a-mae-continued-t0) |" in tab
        assert "| b-imae | 3 |" in tab and "| teacher | 3 |" in tab  # the three teachers pooled per arm
        # one teacher's arm: its un-mixing gain with the pair-bootstrap interval of its separability result
        g = table.separability(results / "c-imae-nodistill-t0", r).gain("sub")
        row = next(line for line in tab.splitlines() if line.startswith("| c-imae-nodistill |")).split(" | ")
        assert row[1] == "1" and row[5] == f"{g['gain']:.3f} [{g['ci'][0]:.3f}, {g['ci'][1]:.3f}]"

    def rule(entry: dict) -> None:
        lo, hi = entry["across_teachers"]["ci"]
        assert entry["verdict"] == ("holds" if lo > 0 else "does not hold" if hi < 0 else "cannot tell")

    for tag, c in recomputed["claim 1"]["vs"].items():
        for r, v in c["referees"].items():
            rule(v)
            for t, e in v["per_teacher"].items():  # straight from the committed comparison of that teacher
                m = json.loads((results / f"b-imae-t{t}" / f"eval-referee-s{r}" / f"vs-{tag}" /
                                "compare.json").read_text())["results"]["metrics"]
                assert e["diff"] == m["gain_sub"]["0.3"]["diff"]
    for c in recomputed["claim 2"]["vs"].values():
        assert c["probe"] == claims.VERDICT_PROBE and c["verdict"] == c["linprobe"]["verdict"]
        for m in claims.SEMANTICS:
            if m in c:
                rule(c[m])
    assert recomputed["claim 2"]["referee"] == first and len(recomputed["claim 2"]["l2"]) == 1  # one penalty


def test_plateau_test_uses_the_last_tenth_of_the_epochs(results):
    import curves

    results, committed = results
    p = curves.plateau([1.0] * 18 + [0.95, 0.90])  # 20 epochs: compares epoch 18 (index 17) with 20
    assert (p["window"], p["before"], p["last"]) == (2, 1.0, 0.90) and p["flat"] is False
    assert curves.plateau([1.0] * 29 + [0.99])["flat"] is True
    out = curves.main(results)
    b, a = "b-imae-t0", "a-mae-continued-t0"
    assert set(out) >= {a, b} and out[b]["loss"].startswith("distill")
    assert out == json.loads((committed / "plateau.json").read_text())  # the committed check is what it computes
    assert (results / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_headline_figure_draws_the_arms_and_their_difference_from_the_mae_with_claim_1s_interval(results):
    import claims
    import figure

    results, committed = results
    # per referee: b minus a of each teacher, the band the interval over teachers
    r = json.loads((committed / "claims.json").read_text())["referees"][0]
    _, minus_a = figure.teacher_curves(results, r)
    across = claims.main(results)["claim 1"]["vs"]["a"]["referees"][r]["across_teachers"]
    mean, lo, hi = minus_a["b-imae"]["0.3"]
    assert mean == pytest.approx(across["mean"]) and [lo, hi] == pytest.approx(across["ci"])
    out = figure.main(results)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _plan(script: str, **env) -> list[str]:
    """The printed commands of a dry run (DRY_RUN=1: IMAE and PY echo; the FLOP ratio and the checks run)."""
    res = subprocess.run(["bash", f"studies/{script}/run.sh"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "DRY_RUN": "1", "CALC": sys.executable, **env})
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()


def _flag(line: str, flag: str) -> str | None:
    words = line.split()
    return words[words.index(flag) + 1] if flag in words else None


ARMS = ("a-mae-continued", "ap-mae-flops", "b-imae", "d-imae-p0", "e-imae-prandom", "h-mae-distill")
FIRST_ONLY = ("c-imae-nodistill", "f-imae-sub", "g-mae-unmixed")


@pytest.fixture(scope="module", params=["digits", "cifar10-cpu", "cifar10-gpu"])
def dry_run(request, tmp_path_factory):
    """(scale, OUT, the printed lines) of each scale's dry run, made once for the tests that read it."""
    tmp = tmp_path_factory.mktemp(request.param)
    out = tmp / "out"
    return request.param, out, _plan(request.param, OUT=str(out), DATA=str(tmp / "data"), RESULTS=str(tmp / "r"))


def test_each_scale_plans_every_arm_for_every_teacher_scored_against_referees_that_start_nothing(dry_run):
    script, out, lines = dry_run
    r1, r2 = (4, 5) if script == "digits" else (3, 4)  # digits: referee s3 failed its start check; s5 replaced it
    refs = {f"{out}/referee-s{r1}", f"{out}/referee-s{r2}"}
    # CIFAR-10 on the CPU: each teacher's probe must beat the untrained encoder's by 5 points before any arm
    assert any(line.startswith("check: teacher-s0 pending: its linear probe must be at least 0.05 above")
               for line in lines) == (script == "cifar10-cpu")
    assert lines[0].startswith(f"plan: teachers (seeds 0 1 2) and referees (seeds {r1} {r2})")
    assert (out / "plan.txt").read_text().splitlines()[0] == lines[0]  # kept beside the runs
    assert any(line.startswith("python studies/estimate.py") for line in lines)  # the estimate comes first
    assert any(line.startswith("check: referees pending") for line in lines)  # checked once they are trained
    trains = [line for line in lines if line.startswith("imae pretrain")]
    starts = {_flag(line, "--output-dir") for line in trains if "--init-from" not in line}
    assert starts == {f"{out}/teacher-s{s}" for s in (0, 1, 2)} | {f"{out}/referee-s{s}" for s in (r1, r2)}
    for line in trains:
        if "--init-from" not in line:  # teachers and referees from scratch, each with its own seed
            assert _flag(line, "--seed") == _flag(line, "--output-dir").rsplit("-s", 1)[1]
    arms = {_flag(line, "--output-dir").rsplit("/", 1)[1]: line for line in trains if "--init-from" in line}
    assert sorted(arms) == sorted([*(f"{a}-t{t}" for a in ARMS for t in range(3)), *(f"{a}-t0" for a in FIRST_ONLY)])
    for name, line in arms.items():
        t = name.rsplit("-t", 1)[1]
        assert _flag(line, "--init-from") == f"{out}/teacher-s{t}" and _flag(line, "--seed") == t  # its own teacher
        assert ("--teacher" in line.split()) == (not name.startswith(("a-", "ap-")))
        assert "referee" not in line  # no referee is any arm's start or teacher
    assert "--set imae.same_class_p=self --set imae.branches=sub" in arms["h-mae-distill-t1"]  # (h): clean, one branch
    assert "imae.distill=false" not in arms["h-mae-distill-t1"]
    # every evaluation is scored against the referees: separability against each, in its own folder
    evals = [line for line in lines if line.startswith(("imae separability", "imae compare"))]
    assert evals and all(_flag(line, "--reference") in refs for line in evals)
    # semantics computes only what the claims read (probe, kNN, NMI): no mixtures, so no reference
    sem_lines = [line for line in lines if line.startswith("imae semantics")]
    assert sem_lines and all("semantics.separability=false" in line and "--reference" not in line
                             for line in sem_lines)
    assert not any("same_class_p=1.0" in line for line in evals)  # class-independent pairs, the default
    seps = {(line.split()[2], _flag(line, "--reference"), _flag(line, "--output-dir"))
            for line in lines if line.startswith("imae separability")}
    runs = {f"{out}/{n}" for n in [*arms, "untrained", "teacher-s0", "teacher-s1", "teacher-s2"]}
    assert seps == {(r, f"{out}/referee-s{s}", f"{r}/eval-referee-s{s}") for r in runs for s in (r1, r2)}
    semantics = [line.split()[2] for line in lines if line.startswith("imae semantics")]
    assert set(semantics) == runs | refs  # once each (a dry run skips nothing)
    # claim 2's fine-tuning: (a) and (b) of every teacher, with the teacher's seed, where the scale budgets it
    tunes = {(line.split()[2].rsplit("/", 1)[1], _flag(line, "--seed"), _flag(line, "--output-dir"))
             for line in lines if line.startswith("imae finetune")}
    want = {(f"{x}-t{t}", str(t), f"{out}/{x}-t{t}/finetune") for t in range(3) for x in ("a-mae-continued", "b-imae")}
    assert tunes == (want if script == "digits" else set())
    assert any(line.startswith("fine-tuning: " + ("arms a b" if script == "digits" else "none")) for line in lines)
    compares = {(line.split()[2].rsplit("/", 1)[1], line.split()[3].rsplit("/", 1)[1], _flag(line, "--reference"))
                for line in lines if line.startswith("imae compare")}
    counted = next(line for line in lines if line.startswith("evaluations: ")).split()
    n_cmp = int(counted[counted.index("comparisons") - 1])
    assert (int(counted[1]), n_cmp) == (len(seps), len(compares))  # the plan counts what runs
    assert compares == {(f"{x}-t{t}", f"b-imae-t{t}", f"{out}/referee-s{s}") for t in range(3) for s in (r1, r2)
                        for x in ("a-mae-continued", "ap-mae-flops", "h-mae-distill")} | \
        {(f"b-imae-t{t}", f"{x}-t{t}", f"{out}/referee-s{s}") for t in range(3) for s in (r1, r2)
         for x in ("d-imae-p0", "e-imae-prandom")}
    # the attentive probe beside the linear one against the first referee only (claim 2 reads it there)
    assert {_flag(line, "--reference") for line in lines
            if line.startswith("imae compare") and _flag(line, "--head") == "attentive"} == {f"{out}/referee-s{r1}"}


def test_the_flop_matched_arm_trains_the_epochs_of_the_printed_flop_ratio(dry_run):
    from flops import ratio

    script, _, lines = dry_run
    flops = next(line for line in lines if line.startswith("flops: FLOP ratio"))
    printed = float(flops.split("included): ")[1].split()[0])
    trains = [line for line in lines if line.startswith("imae pretrain") and "--init-from" in line]
    epochs = {_flag(line, "--output-dir").rsplit("/", 1)[1].rsplit("-t", 1)[0]: int(_flag(line, "--epochs"))
              for line in trains}
    base = epochs["a-mae-continued"]
    assert len({v for k, v in epochs.items() if k != "ap-mae-flops"}) == 1  # the same epochs for every other arm
    assert epochs["ap-mae-flops"] == int(base * printed + 0.5) > base
    assert flops.endswith(f"round({base} x {printed:.3f}) = {epochs['ap-mae-flops']}")
    # the ratio is the project's FLOP count of the two presets (i-MAE with its two teacher passes)
    presets = {"digits": ("digits-mae", "digits-imae"), "cifar10-gpu": ("cifar10-mae-tiny", "cifar10-imae-tiny"),
               "cifar10-cpu": ("studies/cifar10-cpu/mae.yaml", "studies/cifar10-cpu/imae.yaml")}[script]
    old = os.getcwd()
    os.chdir(ROOT)
    try:
        assert printed == pytest.approx(ratio(*presets, [])[2], abs=5e-4) and 1.5 < printed < 2.2
    finally:
        os.chdir(old)


def test_the_verdict_over_teachers_reads_the_95_percent_t_interval_on_planted_numbers():
    import claims

    def rule(xs):
        return claims.verdict_over_teachers(claims.t_interval(xs))

    assert rule([0.05, 0.06, 0.07]) == "holds"  # mean 0.06, t-interval [0.035, 0.085]
    assert rule([-0.05, -0.06, -0.07]) == "does not hold"
    assert rule([0.10, -0.02, 0.01]) == "cannot tell"  # a large mean that the teachers do not agree on
    assert rule([0.01, 0.30, 0.02]) == "cannot tell"  # t with 2 degrees of freedom: 4.30 x sd / sqrt(3)
    assert rule([0.05]) == "cannot tell (one teacher)"
    lo, hi = claims.t_interval([0.05, 0.06, 0.07])["ci"]
    assert (lo, hi) == pytest.approx((0.06 - 4.3027 * 0.01 / 3**0.5, 0.06 + 4.3027 * 0.01 / 3**0.5), abs=1e-4)
    assert claims.against_each(["holds", "holds"]) == "holds"
    assert claims.against_each(["holds", "cannot tell"]) == "cannot tell"  # claim 1 holds only against each referee
    assert claims.against_each(["holds", "does not hold"]) == "cannot tell"
    assert claims.against_each(["does not hold", "does not hold"]) == "does not hold"
    assert claims.change_verdict([{"ci": [-0.01, 0.02]}, {"ci": [-0.05, -0.01]}]) == "holds"  # either sign
    assert claims.change_verdict([{"ci": [-0.01, 0.02]}, {"ci": None}]) == "cannot tell"


def _planted(folder: Path, teacher: int, referee: int, b_arm: str, tag: str, metrics: dict) -> None:
    path = folder / f"{b_arm}-t{teacher}" / f"eval-referee-s{referee}" / f"vs-{tag}" / "compare.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": "compare", "results": {"metrics": metrics}}))


def _entry(diff: float, within: float = 0.01) -> dict:
    return {"a": 0.5, "b": 0.5 + diff, "diff": diff, "ci": [diff - within, diff + within]}


def _planted_study(tmp_path: Path) -> None:
    """Planted comparisons, semantics and fine-tunes of a study of three teachers and referees s3, s4."""
    gains = {  # (b) minus the control, per referee, per teacher 0 1 2
        "a": {3: [0.05, 0.06, 0.07], 4: [0.05, -0.05, 0.02]},  # holds against s3 only: cannot tell
        "ap": {3: [0.04, 0.05, 0.06], 4: [0.03, 0.04, 0.05]},  # holds against each
        "h": {3: [-0.04, -0.05, -0.06], 4: [-0.03, -0.04, -0.05]},  # below 0 against each
    }
    probes = {"a": [0.02, 0.03, 0.04], "ap": [0.01, -0.01, 0.0], "h": [-0.02, -0.03, -0.025],
              "d": [-0.03, -0.04, -0.05], "e": [0.01, -0.01, 0.005]}
    nmi = {"b": [0.5, 0.6, 0.55], "a": [0.4, 0.5, 0.45], "ap": [0.5, 0.6, 0.56], "h": [0.5, 0.61, 0.55],
           "d": [0.5, 0.6, 0.55], "e": [0.5, 0.6, 0.55]}
    names = {"a": "a-mae-continued", "ap": "ap-mae-flops", "b": "b-imae", "h": "h-mae-distill", "d": "d-imae-p0",
             "e": "e-imae-prandom"}
    tuned = {"a": [0.90, 0.91, 0.92], "b": [0.93, 0.95, 0.97]}  # fine-tuned (a) and (b) only: (b) - (a) 0.02 .. 0.05
    for t in range(3):
        for tag, arm in names.items():
            sem = tmp_path / f"{arm}-t{t}" / "eval" / "semantics.json"
            sem.parent.mkdir(parents=True, exist_ok=True)
            sem.write_text(json.dumps({"results": {"nmi": nmi[tag][t], "linprobe": {"top1": 0.9}}}))
            if tag in tuned:
                ft = tmp_path / f"{arm}-t{t}" / "finetune" / "finetune.json"
                ft.parent.mkdir()
                ft.write_text(json.dumps({"results": {"top1": 0.5, "final_top1": tuned[tag][t]}}))
        for r in (3, 4):
            # the attentive probe only against the first referee, as studies/lib.sh measures it: here it says
            # the opposite of the linear probe about (a), and the verdict still rests on the linear one
            attentive = {"attentive": {**_entry(-probes["a"][t]), "lr": 1e-3, "weight_decay": 0.05}} if r == 3 else {}
            for tag in ("a", "ap", "h"):
                _planted(tmp_path, t, r, "b-imae", tag, {
                    "gain_sub": {"0.1": _entry(0.5), "0.3": _entry(gains[tag][r][t])},
                    "linprobe": {**_entry(probes[tag][t] + (0.5 if r == 4 else 0)), "l2": 1e-3 if r == 3 else 1e-2},
                    "knn": _entry(probes[tag][t]), "where": {"headline_alpha": "0.3"}, **attentive})
            for tag in ("d", "e"):
                _planted(tmp_path, t, r, names[tag], "b", {"linprobe": {**_entry(probes[tag][t]), "l2": 1e-3},
                                                           "knn": _entry(0.0), **attentive})


def test_claims_of_independent_teachers_on_planted_results(tmp_path):
    import claims

    _planted_study(tmp_path)
    out = claims.main(tmp_path)
    assert out["teachers"] == ["0", "1", "2"] and out["referees"] == ["3", "4"]
    one = out["claim 1"]["vs"]
    assert [one["a"]["referees"][r]["verdict"] for r in ("3", "4")] == ["holds", "cannot tell"]
    assert (one["a"]["verdict"], one["ap"]["verdict"], one["h"]["verdict"]) == ("cannot tell", "holds", "does not hold")
    assert one["a"]["referees"]["3"]["across_teachers"]["mean"] == pytest.approx(0.06)  # at the headline alpha
    # the pair-bootstrap intervals stay, per teacher, labelled as within one teacher
    assert one["a"]["referees"]["3"]["per_teacher"]["1"]["ci_within_teacher"] == pytest.approx([0.05, 0.07])
    two = out["claim 2"]
    assert two["referee"] == "3" and two["l2"] == [1e-3]  # the one penalty of the first referee's comparisons
    assert [two["vs"][t]["verdict"] for t in ("a", "ap", "h")] == ["holds", "cannot tell", "does not hold"]
    assert two["vs"]["a"]["nmi"]["across_teachers"]["mean"] == pytest.approx(0.1)
    # fine-tuning: the last epoch's top-1, (b) minus (a) per teacher, where both were fine-tuned (not (a+), (h))
    assert two["vs"]["a"]["finetune"]["per_teacher"]["2"]["diff"] == pytest.approx(0.05)
    assert two["vs"]["a"]["finetune"]["verdict"] == "holds" and "finetune" not in two["vs"]["ap"]
    # the attentive probe is read beside the linear one (first referee), and the verdict names its probe
    assert two["vs"]["a"]["attentive"]["verdict"] == "does not hold" and two["vs"]["a"]["verdict"] == "holds"
    assert two["vs"]["a"]["probe"] == "linear probe on the cls token at the one penalty"
    assert out["claim 3"]["minus_b"]["d"]["attentive"]["across_teachers"]["n"] == 3
    three = out["claim 3"]
    # a change of either sign: (d) below (b) is a change, so its measure and the claim hold
    assert three["minus_b"]["d"]["linprobe"]["verdict"] == "holds" and three["verdict"] == "holds"
    assert out["claims"]["1 separability"] == {f"vs {claims.CONTROLS[t]}": v for t, v in
                                               (("a", "cannot tell"), ("ap", "holds"), ("h", "does not hold"))}
    md = (tmp_path / "claims.md").read_text()
    assert "within one teacher" in md and "| (b) − (a) MAE continued, referee s4 |" in md
    assert "| finetune: (b) − (a) MAE continued |" in md and "| attentive: (b) − (a) MAE continued |" in md
    assert "| 2 semantics | vs (a) MAE continued | holds | linear probe on the cls token at the one penalty |" in md
    assert json.loads((tmp_path / "claims.json").read_text()) == out


def test_arm_h_is_the_mae_loss_plus_distillation_towards_the_teacher_on_the_clean_image_under_the_same_mask():
    """Arm (h) is the i-MAE path with p = self and one branch: each image mixed with itself is the clean image;
    its loss is the MAE reconstruction loss plus the MSE to the teacher's tokens of that image, same mask."""
    import torch
    import torch.nn.functional as F

    from imae.data.pairing import choose_partners
    from imae.models.imae import IMAE, IMAEOptions
    from imae.models.mae import MaskedAutoencoder
    from imae.models.registry import create_model

    torch.manual_seed(0)
    teacher: MaskedAutoencoder = create_model("mae_vit_micro_patch2")
    student = IMAE(teacher.arch, IMAEOptions(branches="sub", distill=True))
    student.load_mae_state_dict(teacher.state_dict())
    with torch.no_grad():  # the student moved away from its start, as after some training
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    student.attach_teacher(teacher)
    x = torch.rand(4, 3, 16, 16)
    partner, _ = choose_partners(torch.arange(4), "self")
    assert partner.tolist() == [0, 1, 2, 3]  # p = self: the image is its own partner
    noise = torch.rand(4, teacher.arch.num_patches)
    alpha = torch.tensor([0.1, 0.3, 0.45, 0.5])
    out = student(x, x[partner], alpha, mask_ratio=0.75, noise=noise)
    assert torch.allclose(out["mixture"], x, atol=1e-6)  # the clean image (up to rounding)
    assert set(out) & {"rec_dom", "distill_dom"} == set()
    # the MAE loss of the same weights (decoder_embed := the one branch map) on the clean image and mask
    mae = create_model("mae_vit_micro_patch2")
    mae.load_state_dict(student.mae_state_dict())
    rec = mae(x, mask_ratio=0.75, noise=noise)["loss"]
    latent, _, _ = teacher.forward_encoder(x, 0.75, noise)  # the teacher on the clean image, the same mask
    h, _, _ = student.forward_encoder(x, 0.75, noise)
    distill = F.mse_loss(student.decoder_embed_sub(h), teacher.decoder_embed(latent))
    assert torch.allclose(out["rec_sub"], rec, atol=1e-5) and torch.allclose(out["distill_sub"], distill, atol=1e-6)
    assert torch.allclose(out["loss"], rec + distill, atol=1e-5)


def test_the_start_checks_name_a_referee_that_trained_worse_and_a_teacher_that_did_not_learn(tmp_path):
    import check_start

    def run(name: str, loss: float | None = None, probe: float | None = None) -> None:
        d = tmp_path / name
        (d / "eval").mkdir(parents=True)
        if loss is not None:  # a log whose last epoch record is the final loss
            recs = [{"kind": "epoch", "epoch": 0, "loss": 1.0}, {"kind": "step", "loss": 0.1},
                    {"kind": "epoch", "epoch": 1, "loss": loss}]
            (d / "log.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
        if probe is not None:
            (d / "eval" / "semantics.json").write_text(json.dumps({"results": {"linprobe": {"top1": probe}}}))

    for s, loss in ((0, 0.27), (1, 0.28), (2, 0.29)):
        run(f"teacher-s{s}", loss, 0.42 + s / 100)
    run("referee-s3", 0.30, 0.42)  # within 10% of the teachers' mean 0.28 (limit 0.308)
    run("referee-s4", 0.345, 0.42)  # the quickstart's seed-2 referee: 0.345 against 0.278
    run("untrained", probe=0.387)
    lines, ok = check_start.check_referees(tmp_path, ["0", "1", "2"], ["3", "4"], 0.10, 0.03)
    assert not ok and lines[0].endswith(": ok") and "referee-s4: final loss 0.3450" in lines[1]
    assert lines[1].endswith("FAILS; train a further referee with seed 5 in its place (REFEREE_SEEDS)")
    lines, ok = check_start.check_teachers(tmp_path, ["0", "1", "2"], 0.05)  # 0.42-0.44 against 0.387 + 0.05
    assert not ok and [line.endswith(": ok") for line in lines] == [False, False, True]
    assert "linear probe 0.420, untrained encoder 0.387" in lines[0]
    assert check_start.main([str(tmp_path), "--teachers", "0 1 2", "--referees", "3"]) == 0
    assert check_start.main([str(tmp_path), "--teachers", "0 1 2", "--referees", "3", "--min-probe-gain", "0.05"]) == 1
    lines, ok = check_start.check_referees(tmp_path / "none", ["0"], ["3"], 0.1, 0.03)
    assert ok and "pending" in lines[0]  # a dry run: nothing trained yet


def test_the_gpu_budget_mode_plans_the_largest_version_that_fits_with_each_runs_time(tmp_path):
    import budget

    out = tmp_path / "out"
    lines = _plan("cifar10-gpu", OUT=str(out), DATA=str(tmp_path / "data"), RESULTS=str(tmp_path / "r"),
                  BUDGET_S="600", MAE_IMG_S="20000", IMAE_IMG_S="11000", PLAN_ONLY="1")
    times = {line[len("budget:   "):].rsplit(": ", 1)[0]: int(line.rsplit(": ", 1)[1].split()[0])
             for line in lines if line.startswith("budget:   ")}
    total = int(next(line for line in lines if line.startswith("budget: total")).split()[2])
    assert sum(times.values()) == pytest.approx(total, abs=len(times)) and total <= 600
    # at least a referee, two teachers and arms (a) and (b) of each, every run with its time
    assert {"teacher-s0", "teacher-s1", "referee-s2", "a-t0", "b-t0", "a-t1", "b-t1"} <= set(times)
    assert lines[0].startswith("plan: teachers (seeds 0 1) and referees (seeds 2)")
    assert not any(line.startswith("imae pretrain") for line in lines)  # PLAN_ONLY: nothing else
    epochs = next(line for line in lines if line.startswith("budget: no version") or "largest version" in line)
    te = int(epochs.split("teachers and referees ")[1].split()[0])
    assert f"each cifar10-mae-tiny for {te} epochs" in lines[0]
    # a larger budget plans a larger version: every arm, three teachers, two referees, more epochs
    kw = dict(r=1.8, sec={"mae": 50000 / 20000, "imae": 50000 / 11000}, startup=15.0, eval_s=20.0)
    small = budget.fit(budget.VERSIONS[0], 1000, 400, 600, **kw)
    big = budget.fit(budget.VERSIONS[-1], 1000, 400, 50_000, **kw)
    assert small["te"] == te and small["total"] <= 600 and big["te"] > 10 and big["total"] <= 50_000
    assert {"c-t0", "h-t2", "ap-t1", "referee-s4"} <= {n for n, _ in big["runs"]}
    assert budget.fit(budget.VERSIONS[0], 1000, 400, 100, **kw) is None  # does not fit at all


def test_table_and_figure_read_a_study_of_independent_teachers_per_referee(tmp_path):
    import figure
    import table

    folder = tmp_path / "teachers"
    shutil.copytree(ROOT / "studies" / "digits" / "results", folder)
    gains, minus_a = figure.teacher_curves(folder, "4")
    per = {t: table.separability(folder / f"b-imae-t{t}", "4").gain("sub")["gain"] -
           table.separability(folder / f"a-mae-continued-t{t}", "4").gain("sub")["gain"] for t in range(3)}
    mean, lo, hi = minus_a["b-imae"]["0.3"]
    assert mean == pytest.approx(sum(per.values()) / 3) and lo < mean < hi  # the interval over teachers
    assert {"a-mae-continued", "b-imae", "h-mae-distill"} <= set(gains)
    assert figure.main(folder).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tab = table.main(folder, referee="4")
    row = next(line for line in tab.splitlines() if line.startswith("| b-imae |")).split(" | ")
    assert row[1] == "3"  # the three teachers pooled in one row
    referees = [line.split(" | ")[:2] for line in tab.splitlines() if line.startswith("| referee")]
    assert referees == [["| referee-s3", "1"], ["| referee-s4", "1"], ["| referee-s5", "1"]]  # never pooled
    assert table.main(folder, referee="4") != table.main(folder, referee="5")  # each referee its own scores
    with pytest.raises(SystemExit, match="against referee 9; give --referee one of: 4, 5$"):
        table.main(folder, referee="9")  # s3 failed its start check: no run is scored against it either


def test_the_start_checks_read_every_probe_at_the_first_teachers_penalty(tmp_path):
    """A referee whose own one-SE choice fell on another grid point is judged at the teachers' penalty."""
    import check_start

    grid = [1e-5, 1e-4, 1e-3, 1e-2]

    def run(name: str, l2: float, curve: list[float]) -> None:
        d = tmp_path / name
        (d / "eval").mkdir(parents=True)
        recs = [{"kind": "epoch", "epoch": 1, "loss": 0.29}]
        (d / "log.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
        top1 = curve[grid.index(l2)]
        rec = {"top1": top1, "l2": l2, "l2_curve": {"grid": grid, "top1": curve}}
        (d / "eval" / "semantics.json").write_text(json.dumps({"results": {"linprobe": rec}}))

    for s in (0, 1, 2):
        run(f"teacher-s{s}", 1e-3, [0.95, 0.95, 0.933, 0.897])
    run("referee-s3", 1e-3, [0.93, 0.936, 0.894, 0.867])  # worse at the shared penalty: fails
    run("referee-s5", 1e-2, [0.928, 0.933, 0.931, 0.900])  # its own choice (1e-2) says 0.900; at 1e-3 0.931
    lines, ok = check_start.check_referees(tmp_path, ["0", "1", "2"], ["3", "5"], 0.10, 0.03)
    assert "referee-s3" in lines[0] and "probe at l2 0.001 0.894" in lines[0] and "FAILS" in lines[0]
    assert "probe at l2 0.001 0.931" in lines[1] and lines[1].endswith(": ok") and not ok


def test_the_plans_evaluation_estimate_is_the_median_wall_time_of_each_kind_timed_here(tmp_path):
    from estimate import eval_estimate

    times = tmp_path / "eval-times.tsv"  # what studies/lib.sh's `timed` appends: "kind seconds"
    times.write_text("semantics 30\nsemantics 90\nsemantics 60\nseparability 120\n")
    line = eval_estimate(times, "separability 10 semantics 4 compare 3 finetune 0")
    # 10 x 2 min + 4 x 1 min (the median of 30, 60, 90 s); comparisons not timed yet; no fine-tuning planned
    assert line.startswith("expected evaluation time: 24 min (10 separability x 2.0 min (median of 1 timed here); "
                           "4 semantics x 1.0 min (median of 3 timed here)); not timed yet: 3 compare")
    assert "finetune" not in line
    two = eval_estimate(times, "separability 10 semantics 4", jobs=2)  # JOBS=2: two at a time
    assert two.startswith("expected evaluation time: 12 min (") and two.endswith(", 2 at a time")
    assert eval_estimate(tmp_path / "none.tsv", "semantics 2").startswith("expected evaluation time: 0 min; not timed")


FAKE_IMAE = """#!/usr/bin/env bash
# records "<start|end> <time> <threads> <command and run>" and sleeps; fails where FAIL_ON names its output folder
echo "start $(date +%s.%N) ${OMP_NUM_THREADS:-unset} $1 ${*: -3}" >> "$LOG"
[[ -n "${FAIL_ON:-}" && " $* " == *"$FAIL_ON "* ]] && exit 3
sleep 0.05
echo "end $(date +%s.%N) ${OMP_NUM_THREADS:-unset} $1" >> "$LOG"
"""


def _fake_study(tmp_path: Path, **env) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    tmp_path.mkdir(exist_ok=True)
    fake = tmp_path / "fake-imae"
    fake.write_text(FAKE_IMAE)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    res = subprocess.run(["bash", "studies/digits/run.sh"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "IMAE": str(fake), "PY": "true", "CALC": sys.executable, "LOG": str(log),
                              "OUT": str(tmp_path / "out"), "RESULTS": str(tmp_path / "r"), **env})
    return res, [line.split() for line in log.read_text().splitlines()]


def test_jobs_run_each_phase_two_at_a_time_on_one_thread_each_and_a_failure_stops_the_study(tmp_path):
    res, calls = _fake_study(tmp_path, JOBS="2", THREADS="1")
    assert res.returncode == 0, res.stderr
    starts = [c for c in calls if c[0] == "start"]
    assert len(starts) == len([line for line in _plan("digits", OUT=str(tmp_path / "dry"), RESULTS=str(tmp_path))
                               if line.startswith("imae ")])  # every command of the dry run, once
    assert {c[2] for c in calls} == {"1"}  # each on THREADS threads
    running, most = 0, 0
    for c in sorted(calls, key=lambda c: (float(c[1]), c[0] == "start")):
        running += 1 if c[0] == "start" else -1
        most = max(most, running)
    assert most == 2  # side by side, never more than JOBS
    ends = {kind: max(float(c[1]) for c in calls if c[0] == "end" and c[3] == kind) for kind in ("separability",)}
    first_compare = min(float(c[1]) for c in starts if c[3] == "compare")
    assert first_compare > ends["separability"]  # the comparisons read what every separability stored
    assert (tmp_path / "out" / "logs" / "teacher-s0.log").is_file()

    res, calls = _fake_study(tmp_path / "failing", JOBS="2", FAIL_ON="referee-s5")
    assert res.returncode != 0 and "FAILED referee-s5" in res.stderr and "the same command resumes it" in res.stderr
    assert not [c for c in calls if c[0] == "start" and "--init-from" in c]  # no arm started
    assert [c for c in calls if c[0] == "end" and c[3] == "pretrain"]  # the other runs of the phase ended


def test_the_readme_verdict_table_reads_each_scales_claims_with_intervals_over_teachers(tmp_path):
    import claims
    import verdicts

    digits, cifar = tmp_path / "digits", tmp_path / "cifar"
    _planted_study(digits)
    out = claims.main(digits)
    cifar.mkdir()
    text = verdicts.table({"digits": digits, "cifar10-cpu": cifar})
    lines = text.splitlines()
    assert lines[0] == ("| claim (measure) | (b) i-MAE against | digits (16 px) (3 teachers, referees s3, s4) | "
                        "CIFAR-10, CPU scale (running) |")
    row = next(line for line in lines if "| (a+) MAE, FLOP-matched |" in line and "s3:" in line).split(" | ")
    across = out["claim 1"]["vs"]["ap"]["referees"]["3"]["across_teachers"]
    lo, hi = across["ci"]
    assert row[2] == (f"s3: {across['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]; s4: "
                      + verdicts._interval(out["claim 1"]["vs"]["ap"]["referees"]["4"]) + " **holds**")
    assert row[3] == "running |"  # the scale without results yet
    probe = next(line for line in lines if line.startswith("| 2. more semantics")).split(" | ")
    assert probe[1] == "(a) MAE continued" and probe[2].endswith("**holds**")
    assert "| either interval excludes 0 | **holds** | running |" in text
    assert len(lines) == 2 + 3 + 3 + 3  # one row per control and claim: short enough for the README


def test_the_readme_shows_the_verdict_table_the_committed_claims_give(tmp_path):
    import verdicts

    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(verdicts.BEGIN) + len(verdicts.BEGIN), readme.index(verdicts.END)
    assert readme[start:end] == "\n" + verdicts.main([])
    copy = tmp_path / "README.md"
    copy.write_text(readme.replace(verdicts.BEGIN, ""))
    with pytest.raises(SystemExit, match="no verdict markers"):
        verdicts.write(copy, "x")
