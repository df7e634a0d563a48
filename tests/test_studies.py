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
    import claims
    import table

    results, committed = results
    tab = table.main(results)
    assert tab == (committed / "table.md").read_text()
    for baseline in ("superposition", "pixels", "reference on mixture", "random init", "partner only"):
        assert f"| baseline: {baseline} (a-mae-continued-s0) |" in tab  # the trivial models on the same pairs
    assert "| teacher | 1 | – | – | – | – | – | – | 0." in tab  # where every arm starts: semantics, scored
    # the committed results are of the old scheme, read through SeparabilityResult: said so, no R² sum; the gain
    # is the point value mixture R² minus partner-only R² at the headline alpha
    assert tab.startswith(table.OLD_SCHEME + "\n\n| arm |") and "R² sum" not in tab
    res = table.separability(results / "b-imae-s0")
    assert res.legacy and res.head["alpha"] == "0.3"
    row = next(line for line in tab.splitlines() if line.startswith("| f-imae-sub |")).split(" | ")
    sub = table.separability(results / "f-imae-sub-s0")
    assert row[5] == f"{sub.r2('sub')['r2'] - sub.partner('sub')['r2']:.3f}"
    if (committed / "table-unmasked.md").is_file():
        assert table.main(results, "0") == (committed / "table-unmasked.md").read_text()
    recomputed = claims.main(results)
    assert recomputed == json.loads((committed / "claims.json").read_text())
    assert (results / "claims.md").read_text() == (committed / "claims.md").read_text()
    # the verdicts follow the stated rule from the intervals
    for measure in (*(v for k, v in recomputed["separability"].items() if k != "space"),
                    *recomputed["semantics"].values()):
        lo, hi = measure["across_seeds"]["ci"]
        assert measure["verdict"] == ("holds" if lo > 0 else "does not hold" if hi < 0 else "cannot tell")


def test_table_reads_a_new_scheme_result_with_its_gain_interval_and_no_old_scheme_line(tmp_path):
    import table

    from imae.eval.separability_result import SeparabilityResult

    out = tmp_path / "results"
    shutil.copytree(ROOT / "studies" / "digits" / "results", out)
    for path in out.glob("*/eval/separability.json"):  # the committed results in version 2's layout, with intervals
        rec = json.loads(path.read_text())
        data = SeparabilityResult.from_json(rec["results"]).to_json()
        del data["legacy"]
        for block in data["tokens"].values():
            for by_space in block["gain"].values():
                for by_source in by_space.values():
                    for by_alpha in by_source.values():
                        for e in by_alpha.values():
                            e["ci"] = [e["gain"] - 0.01, e["gain"] + 0.01]
        rec["results"] = data
        path.write_text(json.dumps(rec))
    tab = table.main(out)
    assert tab.startswith("| arm |") and table.OLD_SCHEME not in tab
    res = table.separability(out / "c-imae-nodistill-s0")
    assert not res.legacy
    g = res.gain("sub")["gain"]
    row = next(line for line in tab.splitlines() if line.startswith("| c-imae-nodistill |")).split(" | ")
    assert row[5] == f"{g:.3f} [{g - 0.01:.3f}, {g + 0.01:.3f}]"


def test_plateau_test_uses_the_last_tenth_of_the_epochs(results):
    import curves

    results, committed = results
    p = curves.plateau([1.0] * 18 + [0.95, 0.90])  # 20 epochs: compares epoch 18 (index 17) with 20
    assert (p["window"], p["before"], p["last"]) == (2, 1.0, 0.90) and p["flat"] is False
    assert curves.plateau([1.0] * 29 + [0.99])["flat"] is True
    out = curves.main(results)
    assert set(out) >= {"b-imae-s0", "a-mae-continued-s0"} and out["b-imae-s0"]["loss"].startswith("distill")
    assert out == json.loads((committed / "plateau.json").read_text())  # the committed check is what it computes
    assert (results / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_headline_figure_draws_the_arms_and_their_difference_from_the_mae_with_claim_1s_interval(results):
    import claims
    import figure

    results, _ = results
    compares = figure._compares(results)
    assert len(compares) == 3  # (b) minus (a), one per seed: the band of the right-hand panel
    across = claims.main(results)["separability"]["token_r2_sub@0.3"]["across_seeds"]
    assert sum(c["token_r2_sub"]["0.3"]["diff"] for c in compares) / 3 == pytest.approx(across["mean"])
    out = figure.main(results)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _plan(script: str, **env) -> list[str]:
    res = subprocess.run(["bash", f"studies/{script}/run.sh"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "IMAE": "echo imae", "PY": "echo python", **env})
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()


@pytest.mark.parametrize("script", ["digits", "cifar10-cpu", "cifar10-gpu"])
def test_each_scale_plans_every_arm_from_one_teacher_with_three_seeds_for_a_and_b(script, tmp_path):
    lines = _plan(script, OUT=str(tmp_path / "out"), DATA=str(tmp_path / "data"), RESULTS=str(tmp_path / "results"))
    assert lines[0].startswith("plan: teacher") and "11 arms" in lines[0]
    assert (tmp_path / "out" / "plan.txt").read_text().splitlines()[0] == lines[0]  # kept beside the runs
    assert any(line.startswith("python studies/estimate.py") for line in lines)  # the estimate comes first
    trains = [line for line in lines if line.startswith("imae pretrain")]
    assert "/teacher" in trains[0]
    arms = [line.split("--output-dir ")[1].split()[0].rsplit("/", 1)[1] for line in trains[1:]]
    assert sorted(arms) == sorted([*(f"a-mae-continued-s{s}" for s in range(3)), *(f"b-imae-s{s}" for s in range(3)),
                                   "c-imae-nodistill-s0", "d-imae-p0-s0", "e-imae-prandom-s0", "f-imae-sub-s0",
                                   "g-mae-unmixed-s0"])
    for line in trains[1:]:
        assert f"--init-from {tmp_path}/out/teacher" in line  # every arm from the same start
        assert ("--teacher " in line) == ("mae-continued" not in line)
    epochs = {line.split("--epochs ")[1].split()[0] for line in trains[1:]}
    assert len(epochs) == 1  # the same epochs for every arm
    semantics = [line.split()[2] for line in lines if line.startswith("imae semantics")]
    assert f"{tmp_path}/out/teacher" in semantics and len(semantics) == 13  # the 11 arms, untrained, the teacher
    compares = [line for line in lines if line.startswith("imae compare")]
    assert len(compares) == 3
