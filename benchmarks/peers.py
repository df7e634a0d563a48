#!/usr/bin/env python
"""Our MAE training step against the peers', in one process, fp32 and bf16 autocast, with utilisation.

    python benchmarks/peers.py                        # ViT-Tiny/4, 32 px, batch 128, mask 0.75 (minutes on 2 cores)
    python benchmarks/peers.py --bf16 force           # also time the bf16 arms on a CPU without bf16 units

Arms (each a full training step: forward, backward, AdamW; warm-up first, then ``--rounds`` rounds in which
every arm runs once, interleaved, so load from other work hits all alike; the median per arm, and for the
ratios the median over rounds of the ratio within a round):

- ``imae-mae``: our MAE objective, as ``imae pretrain`` runs it (``benchmarks/throughput.py``'s step);
- ``imae-imae``: our i-MAE (distilling from a same-size MAE teacher): the FLOP/s ratio to our MAE;
- ``hf-mae``: transformers' ``ViTMAEForPreTraining``, same architecture, batch and mask ratio;
- ``lightly-mae``: lightly's MAE, only if lightly is installed (it is not a dependency): else a note;
- ``extract``: evaluation's feature extraction of one batch (mask-free encoder, inference mode);
- ``matmul``: square matmuls in fp32 and in bf16, the references of utilisation.

Each model arm runs in fp32 and under ``torch.autocast("cpu", bfloat16)``; the bf16 arms run by default only
where the CPU has bf16 units (``imae.runtime.precision``): elsewhere bf16 is emulated, several times slower than
fp32, and no peer's best setting. A peer's best setting is its faster one. FLOPs are counted analytically
(``imae.models.flops``; both implementations compute the same model). Writes
``benchmarks/results/peers-<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import make_objectives, make_step  # noqa: E402  (this folder's benchmark)

from imae.models.flops import imae_train_flops, mae_train_flops  # noqa: E402
from imae.runtime import precision  # noqa: E402
from imae.runtime.optim import build_adamw  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GOALS = {"mae_over_best_peer": 1.2, "imae_flops_rate_over_mae": 0.95, "utilisation_of_bf16_matmul": 0.5,
         "extraction_bf16_over_fp32": 1.6}


def hf_step(arch, batch: int, mask_ratio: float, bf16: bool):
    """transformers' ViTMAEForPreTraining with ``arch``'s sizes: one training step."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    cfg = ViTMAEConfig(hidden_size=arch.embed_dim, num_hidden_layers=arch.depth, num_attention_heads=arch.num_heads,
                       intermediate_size=int(arch.embed_dim * arch.mlp_ratio), image_size=arch.img_size,
                       patch_size=arch.patch_size, decoder_hidden_size=arch.decoder_embed_dim,
                       decoder_num_hidden_layers=arch.decoder_depth,
                       decoder_num_attention_heads=arch.decoder_num_heads,
                       decoder_intermediate_size=int(arch.decoder_embed_dim * arch.mlp_ratio), mask_ratio=mask_ratio,
                       norm_pix_loss=arch.norm_pix_loss, layer_norm_eps=arch.layer_norm_eps)
    torch.manual_seed(0)
    model = ViTMAEForPreTraining(cfg).train()
    opt = build_adamw(model, 1e-4, 0.05, (0.9, 0.95), torch.device("cpu"))
    x = torch.randn(batch, 3, arch.img_size, arch.img_size)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()

    def step() -> None:
        with ctx:
            loss = model(pixel_values=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def lightly_step(arch, batch: int, mask_ratio: float, bf16: bool):
    """lightly's MAE (a timm ViT encoder, lightly's decoder and masking), when lightly is installed."""
    import timm
    from lightly.models import utils
    from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM

    vit = timm.create_model("vit_tiny_patch16_224", img_size=arch.img_size, patch_size=arch.patch_size,
                            embed_dim=arch.embed_dim, depth=arch.depth, num_heads=arch.num_heads, num_classes=0)
    enc = MaskedVisionTransformerTIMM(vit=vit)
    dec = MAEDecoderTIMM(num_patches=vit.patch_embed.num_patches, patch_size=arch.patch_size,
                         embed_dim=arch.embed_dim, decoder_embed_dim=arch.decoder_embed_dim,
                         decoder_depth=arch.decoder_depth, decoder_num_heads=arch.decoder_num_heads)
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.AdamW(params, 1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    x = torch.randn(batch, 3, arch.img_size, arch.img_size)
    seq = vit.patch_embed.num_patches + 1
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()

    def step() -> None:
        with ctx:
            keep, mask = utils.random_token_mask(size=(batch, seq), mask_ratio=mask_ratio, device=x.device)
            z = enc.encode(images=x, idx_keep=keep)
            pred = _lightly_decode(dec, z, keep, batch, seq)
            pred = utils.get_at_index(pred, mask - 1)
            target = utils.get_at_index(utils.patchify(x, arch.patch_size), mask - 1)
            loss = torch.nn.functional.mse_loss(pred.float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _lightly_decode(dec, z, keep, batch: int, seq: int):
    from lightly.models import utils

    x = dec.embed(z)
    full = utils.repeat_token(dec.mask_token, (batch, seq))
    full = utils.set_at_index(full, keep, x.type_as(full))
    return dec.predict(dec.decode(full))[:, 1:]


def extract_arm(model, batch: int, bf16: bool):
    """Evaluation's feature extraction of one batch (``imae.eval.features.encode``: mask-free, inference mode)."""
    from imae.eval.features import encode

    x = torch.randn(batch, 3, model.arch.img_size, model.arch.img_size)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()

    def run() -> None:
        model.eval()
        with torch.inference_mode(), ctx:
            encode(model, x)
        model.train()

    return run


def matmul_arm(n: int, dtype: torch.dtype):
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return lambda: a @ b


def run(args) -> dict:
    bf16_units = precision.cpu_has_bf16()
    with_bf16 = args.bf16 == "force" or (args.bf16 == "auto" and bf16_units)
    precs = ("fp32", "bf16") if with_bf16 else ("fp32",)
    notes = ["bf16 arms not timed: this CPU has no bf16 units (bf16 would be emulated, several times slower than "
             "fp32; pass --bf16 force to time them)"] if not with_bf16 else []
    tmp = Path(tempfile.mkdtemp(prefix="imae-peers-"))  # the i-MAE's teacher checkpoint
    arch = make_objectives(args.model, torch.device("cpu"), tmp)["mae"].model.arch
    flops = {"mae": mae_train_flops(arch), "imae": imae_train_flops(arch)}
    arms: dict = {}
    kinds: dict[str, str] = {}
    for p in precs:
        amp = p == "bf16"
        objs = make_objectives(args.model, torch.device("cpu"), tmp)  # fresh models per precision
        for name, kind in (("imae-mae", "mae"), ("imae-imae", "imae")):
            step = make_step(objs[kind], torch.device("cpu"), args.batch, amp=False)
            arms[f"{name}/{p}"] = _under(step, amp)
            kinds[f"{name}/{p}"] = kind
        arms[f"hf-mae/{p}"] = hf_step(arch, args.batch, 0.75, amp)
        kinds[f"hf-mae/{p}"] = "mae"
        try:
            arms[f"lightly-mae/{p}"] = lightly_step(arch, args.batch, 0.75, amp)
            kinds[f"lightly-mae/{p}"] = "mae"
        except ImportError:
            if p == precs[0]:
                notes.append("lightly is not installed: its MAE was not timed (it is not a dependency of imae)")
        arms[f"extract/{p}"] = extract_arm(objs["mae"].model, args.batch, amp)  # evaluation's feature pass
    arms["matmul/fp32"] = matmul_arm(args.matmul_n, torch.float32)
    bf16_n = args.matmul_n if bf16_units or args.bf16 == "force" else 512  # emulated bf16: a size that ends soon
    arms["matmul/bf16"] = matmul_arm(bf16_n, torch.bfloat16)
    sizes = {"matmul/fp32": args.matmul_n, "matmul/bf16": bf16_n}
    for _ in range(args.warmup):
        for f in arms.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in arms}
    for r in range(args.rounds):
        for k, f in arms.items():  # interleaved
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {times[k][-1]:.3f}s" for k in arms), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    # the matmul references: their best round (as benchmarks/throughput.py), the rate the units reach
    rate = {p: 2 * sizes[f"matmul/{p}"] ** 3 / min(times[f"matmul/{p}"]) / 1e9 for p in ("fp32", "bf16")}
    res_arms = {}
    for k, kind in kinds.items():
        gflops = flops[kind] * args.batch / med[k] / 1e9
        res_arms[k] = {"step_s": med[k], "images_per_s": args.batch / med[k], "gflops": gflops,
                       "utilisation_fp32_matmul": gflops / rate["fp32"],
                       "utilisation_bf16_matmul": gflops / rate["bf16"], "step_s_all": times[k]}

    def best(impl: str) -> tuple[str, float]:
        got = {k: v["step_s"] for k, v in res_arms.items() if k.startswith(impl + "/")}
        k = min(got, key=got.get)
        return k, got[k]

    ours_k, ours_s = best("imae-mae")
    peers = [best(i) for i in ("hf-mae", "lightly-mae") if any(k.startswith(i + "/") for k in res_arms)]
    peer_k, peer_s = min(peers, key=lambda kv: kv[1])
    def ratio(a: str, b: str) -> float:
        """The median over rounds of time(a) / time(b) in the same round: load that changes between rounds
        cancels."""
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    imae_k = best("imae-imae")[0]
    goals = {
        "mae_over_best_peer": {"value": ratio(peer_k, ours_k), "ours": ours_k, "peer": peer_k},
        "imae_flops_rate_over_mae": {"value": ratio(ours_k, imae_k) * flops["imae"] / flops["mae"],
                                     "imae": imae_k, "mae": ours_k},
        "utilisation_of_bf16_matmul": {"value": res_arms[ours_k]["utilisation_bf16_matmul"], "arm": ours_k},
    }
    if "extract/bf16" in med:
        goals["extraction_bf16_over_fp32"] = {"value": ratio("extract/fp32", "extract/bf16")}
    else:
        notes.append("feature extraction in bf16 not timed (no bf16 arms): its goal (>= 1.6x fp32) is unmeasured here")
    res_extract = {k: {"step_s": med[k], "images_per_s": args.batch / med[k], "step_s_all": times[k]}
                   for k in med if k.startswith("extract/")}
    for g, v in goals.items():
        v["goal"] = GOALS[g]
        v["met"] = v["value"] >= GOALS[g]
    if not bf16_units:  # against an emulated bf16 rate, utilisation says nothing about bf16 units
        goals["utilisation_of_bf16_matmul"]["met"] = None
        notes.append("utilisation against the bf16 matmul rate: not applicable on a CPU without bf16 units (its "
                     "bf16 rate is emulated, far below fp32's)")
    return {"device": f"{platform.processor() or 'CPU'} x{torch.get_num_threads()} threads",
            "cpu_has_bf16_units": bf16_units, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
            "command": " ".join(sys.argv), "model": args.model, "batch_size": args.batch, "mask_ratio": 0.75,
            "rounds": args.rounds, "warmup": args.warmup, "matmul_gflops": rate, "matmul_sizes": sizes,
            "mflop_per_image": {k: v / 1e6 for k, v in flops.items()}, "arms": res_arms, "extraction": res_extract,
            "goals": goals,
            "notes": notes + ([args.note] if args.note else [])}


def _under(step, bf16: bool):
    if not bf16:
        return step

    def run_bf16() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            step()

    return run_bf16


def to_markdown(res: dict) -> str:
    r = res["matmul_gflops"]
    lines = [f"Device: {res['device']} (bf16 units: {'yes' if res['cpu_has_bf16_units'] else 'no'}); {res['date']}; "
             f"torch {res['torch']}. {res['model']}, batch {res['batch_size']}, mask ratio {res['mask_ratio']}; "
             f"median of {res['rounds']} interleaved rounds. Matmul in the same rounds (best round): "
             f"fp32 {r['fp32']:.0f} GFLOP/s "
             f"({res['matmul_sizes']['matmul/fp32']}^2), bf16 {r['bf16']:.1f} GFLOP/s "
             f"({res['matmul_sizes']['matmul/bf16']}^2).", "",
             "| arm | step s | img/s | GFLOP/s | of fp32 matmul | of bf16 matmul |",
             "| --- | --- | --- | --- | --- | --- |"]
    for k, a in res["arms"].items():
        lines.append(f"| {k} | {a['step_s']:.3f} | {a['images_per_s']:.1f} | {a['gflops']:.1f} | "
                     f"{a['utilisation_fp32_matmul']:.2f} | {a['utilisation_bf16_matmul']:.2f} |")
    for k, a in res.get("extraction", {}).items():
        lines.append(f"| {k} (features, no gradients) | {a['step_s']:.3f} | {a['images_per_s']:.1f} | | | |")
    lines += ["", "| goal | value | target | met |", "| --- | --- | --- | --- |"]
    for g, v in res["goals"].items():
        arms = ", ".join(f"{k}: {x}" for k, x in v.items() if k not in ("value", "goal", "met"))
        met = "n/a" if v["met"] is None else "yes" if v["met"] else "no"
        lines.append(f"| {g} ({arms}) | {v['value']:.2f} | {v['goal']} | {met} |")
    lines += [""] + [f"Note: {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mae_vit_tiny_patch4")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--bf16", choices=("auto", "force", "off"), default="auto")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--note", help="a note stored with the results (e.g. that the CPU was shared)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--render", metavar="JSON", help="only rewrite the Markdown of an earlier result file")
    args = p.parse_args()
    if args.render:
        res = json.loads(Path(args.render).read_text())
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        res = run(args)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "peers-cpu.json").write_text(json.dumps(res, indent=1))
        args.render = str(out / "peers-cpu.json")
    Path(args.render).with_suffix(".md").write_text(to_markdown(res))
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
