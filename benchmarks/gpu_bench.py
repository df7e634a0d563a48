#!/usr/bin/env python
"""The device run of issue 15, for one GPU (written for an H200; run by ``benchmarks/gpu.sh``).

    python benchmarks/gpu_bench.py --out $OUT --cifar10 /path/to/cifar10
    python benchmarks/gpu_bench.py --out /tmp/x --cifar10 ... --dry-run     # CPU, tiny sizes: checks the code

Sections (each one's failure is recorded in the JSON and the next one runs):
- ``steps``: MAE and i-MAE training steps (forward + backward + fused AdamW, the objectives of ``imae
  pretrain``) at tiny/4 B1024 and base/16 B128, bf16 autocast, eager and ``torch.compile``; img/s and
  achieved TFLOP/s (analytic FLOPs, ``imae.models.flops``) against the bf16 dense peak.
- ``hf``: the same MAE step of Hugging Face's ``ViTMAEForPreTraining`` (built from a ``ViTMAEConfig`` of the
  same size, no download) and ``lightly``'s MAE when lightly is installed, in the same process.
- ``epoch``: one CIFAR-10 ``imae pretrain`` epoch with the GPU-resident pipeline: epoch time / sum of steps.
- ``eval``: feature extraction (bf16) of the CIFAR-10 training and test splits and kNN, as img/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import sync  # noqa: E402

from imae.config import build_config  # noqa: E402
from imae.data.datasets import ImageSet  # noqa: E402
from imae.data.loader import Batch  # noqa: E402
from imae.engine.objectives import build_objective  # noqa: E402
from imae.models.flops import imae_train_flops, mae_train_flops  # noqa: E402
from imae.runtime.optim import build_adamw  # noqa: E402

H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA's H100/H200 SXM dense bf16 tensor-core peak (no sparsity)
SIZES = {"tiny4": ("mae_vit_tiny_patch4", 1024), "base16": ("mae_vit_base_patch16", 128)}
DRY = {"model.depth": 1, "model.decoder_depth": 1}  # --dry-run: one block each, small batches


def objectives(model: str, device: torch.device, tmp: Path, over: dict) -> dict:
    torch.manual_seed(0)
    mae = build_objective(build_config(None, {"model.name": model, "device": str(device), **over}))
    teacher = tmp / f"{model}-teacher.pth"
    torch.save({"model": mae.model.state_dict(), "kind": "mae", "arch": mae.model.arch.to_dict()}, teacher)
    imae = build_objective(build_config(None, {"method": "imae", "model.name": model, "imae.teacher": str(teacher),
                                               "imae.same_class_p": 1.0, "device": str(device), **over}))
    return {"mae": mae, "imae": imae}


def train_step(objective, device: torch.device, batch: int, compile_: bool):
    model = objective.model.to(device).train()
    net = torch.compile(model) if compile_ else model
    size = model.arch.img_size
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.arange(batch, device=device) // 2
    if hasattr(objective, "prepare"):
        objective.prepare(ImageSet("synthetic", "train", labels.cpu(), [str(i) for i in range(batch // 2)],
                                   (0.5,) * 3, (0.25,) * 3), device)
    opt = build_adamw(model, 1e-4, 0.05, (0.9, 0.95), device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    gen = torch.Generator(device=device)

    def step() -> None:
        gen.manual_seed(0)
        with amp:
            out = objective(net, Batch(images, labels, torch.arange(batch, device=device), gen), 0.75)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def hf_step(arch, device: torch.device, batch: int):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    cfg = ViTMAEConfig(image_size=arch.img_size, patch_size=arch.patch_size, hidden_size=arch.embed_dim,
                       num_hidden_layers=arch.depth, num_attention_heads=arch.num_heads,
                       intermediate_size=int(arch.embed_dim * arch.mlp_ratio),
                       decoder_hidden_size=arch.decoder_embed_dim, decoder_num_hidden_layers=arch.decoder_depth,
                       decoder_num_attention_heads=arch.decoder_num_heads,
                       decoder_intermediate_size=int(arch.decoder_embed_dim * arch.mlp_ratio), mask_ratio=0.75,
                       norm_pix_loss=arch.norm_pix_loss, attn_implementation="sdpa")
    model = ViTMAEForPreTraining(cfg).to(device).train()
    x = torch.randn(batch, 3, arch.img_size, arch.img_size, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cuda", "cpu"))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def step() -> None:
        with amp:
            loss = model(pixel_values=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def lightly_step(arch, device: torch.device, batch: int):
    """lightly's MAE (its documented recipe: a timm ViT as encoder, MAEDecoderTIMM), when installed."""
    from lightly.models import utils
    from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=arch.img_size, patch_size=arch.patch_size, embed_dim=arch.embed_dim,
                            depth=arch.depth, num_heads=arch.num_heads, mlp_ratio=arch.mlp_ratio)
    enc = MaskedVisionTransformerTIMM(vit=vit).to(device)
    dec = MAEDecoderTIMM(num_patches=vit.patch_embed.num_patches, patch_size=arch.patch_size,
                         embed_dim=arch.embed_dim, decoder_embed_dim=arch.decoder_embed_dim,
                         decoder_depth=arch.decoder_depth, decoder_num_heads=arch.decoder_num_heads,
                         mlp_ratio=arch.mlp_ratio).to(device)
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type in ("cuda", "cpu"))
    x = torch.randn(batch, 3, arch.img_size, arch.img_size, device=device)
    seq = vit.patch_embed.num_patches + 1
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def step() -> None:
        idx_keep, idx_mask = utils.random_token_mask(size=(batch, seq), mask_ratio=0.75, device=device)
        with amp:
            latent = enc.encode(images=x, idx_keep=idx_keep)
            tokens = utils.repeat_token(dec.mask_token, (batch, seq))
            tokens = utils.set_at_index(tokens, idx_keep, dec.embed(latent))
            pred = dec.predict(dec.decode(tokens))
            pred = utils.get_at_index(pred, idx_mask - 1)
            target = utils.get_at_index(utils.patchify(x, arch.patch_size), idx_mask - 1)
            loss = torch.nn.functional.mse_loss(pred.float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_steps(steps: dict, device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    for _ in range(warmup):
        for f in steps.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for k, f in steps.items():  # interleaved, so that drift hits every arm alike
            sync(device)
            t = time.perf_counter()
            f()
            sync(device)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def rate(step_s: float, batch: int, flops: float, peak: float) -> dict:
    tflops = flops * batch / step_s / 1e12
    return {"step_s": step_s, "images_per_s": batch / step_s, "tflops": tflops, "of_peak": tflops / peak}


def bench_steps(device, tmp, args, over) -> list[dict]:
    out = []
    for name, (model, batch) in SIZES.items():
        batch = 4 if args.dry_run else batch
        objs = objectives(model, device, tmp, over)
        arch = objs["mae"].model.arch
        flops = {"mae": mae_train_flops(arch), "imae": imae_train_flops(arch)}
        modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.compile]
        for compile_ in modes if not args.dry_run else (False,):
            arms = {k: train_step(o, device, batch, compile_) for k, o in objs.items()}
            if name == "tiny4" and not compile_ and not args.no_others:
                for label, make in (("hf_vitmae", hf_step), ("lightly_mae", lightly_step)):
                    try:
                        f = make(arch, device, batch)
                        f()  # a failing other implementation must not take our arms with it
                        arms[label] = f
                        flops[label] = flops["mae"]  # the same architecture and mask ratio
                    except ImportError as e:
                        out.append({"model": model, "arm": label, "skipped": f"not installed ({e})"})
                    except Exception as e:
                        out.append({"model": model, "arm": label, "skipped": f"failed: {type(e).__name__}: {e}"})
            times = time_steps(arms, device, 3 if compile_ else 2, args.repeats)
            for k, s in times.items():
                out.append({"model": model, "batch_size": batch, "arm": k, "compile": compile_,
                            **rate(s, batch, flops[k], args.peak_tflops)})
                print(json.dumps(out[-1]), flush=True)
        for o in objs.values():
            o.model.to("cpu")
        del objs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def bench_epoch(device, tmp, args, over) -> dict:
    """One `imae pretrain` epoch of MAE tiny/4 on CIFAR-10 (in memory on the GPU): wall time vs sum of steps."""
    from imae.engine.train import pretrain

    batch = 16 if args.dry_run else 1024
    sets = {"model.name": "mae_vit_tiny_patch4", "data.dataset": "cifar10", "data.path": args.cifar10,
            "train.epochs": 1, "train.warmup_epochs": 0, "train.batch_size": batch, "output_dir": str(tmp / "epoch"),
            "device": str(device), "train.log_every": 10**9, **over}
    if args.dry_run:
        sets["data.max_per_class"] = 4
    pretrain(build_config(None, sets))
    rec = [json.loads(x) for x in (tmp / "epoch" / "log.jsonl").read_text().splitlines()]
    epoch = next(r for r in rec if r["kind"] == "epoch")
    start = next(r for r in rec if r["kind"] == "event")
    steps_s = epoch["time_s"] - epoch["data_wait_s"]
    return {"images": start["images"], "steps": start["steps_per_epoch"], "batch_size": batch,
            "epoch_s": epoch["time_s"], "data_wait_s": epoch["data_wait_s"], "sum_of_steps_s": steps_s,
            "epoch_over_steps": epoch["time_s"] / max(steps_s, 1e-9), "images_per_s": epoch["images_per_s"]}


def bench_eval(device, tmp, args, over) -> dict:
    """Feature extraction (bf16 on CUDA) of the CIFAR-10 splits with tiny/4, then kNN on the GPU."""
    from imae.config.evaluate import EvalDataConfig
    from imae.eval.eval_split import load_eval_split
    from imae.eval.features import extract
    from imae.eval.knn import knn_accuracy

    per = {"train_per_class": 20, "eval_per_class": 10} if args.dry_run else {}
    dcfg = EvalDataConfig(dataset="cifar10", path=args.cifar10, **per)
    train = load_eval_split(dcfg, "train", 32, progress=False)
    test = load_eval_split(dcfg, "eval", 32, progress=False)
    model = objectives("mae_vit_tiny_patch4", device, tmp, over)["mae"].model.to(device)
    out = {}
    for name, split in (("train", train), ("test", test)):
        extract(model, split, "bench", batch_size=1024, device=device, show_progress=False)  # warm-up
        sync(device)
        f = extract(model, split, "bench", batch_size=1024, device=device, show_progress=False)
        out[f"extract_{name}"] = {"images": len(split), "seconds": f.seconds, "images_per_s": len(split) / f.seconds}
        out[f"features_{name}"] = f
    sync(device)
    t = time.perf_counter()
    acc = knn_accuracy(out["features_train"].cls, train.labels, out["features_test"].cls, test.labels,
                       train.num_classes, device=device)
    sync(device)
    knn_s = time.perf_counter() - t
    del out["features_train"], out["features_test"]
    out["knn"] = {"bank": len(train), "queries": len(test), "seconds": knn_s, "queries_per_s": len(test) / knn_s,
                  "top1_random_init": acc["top1"]}
    return out


def to_markdown(res: dict) -> str:
    lines = [f"Device: {res['device']}; torch {res['torch']}; {res['date']}; bf16 peak {res['peak_tflops']:.0f} "
             f"TFLOP/s (dense).", "", "| model | batch | arm | compile | img/s | TFLOP/s | of peak |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in res.get("steps", []):
        if "skipped" in r:
            lines.append(f"| {r['model']} | | {r['arm']} | | skipped: {r['skipped']} | | |")
        elif "images_per_s" in r:
            lines.append(f"| {r['model']} | {r['batch_size']} | {r['arm']} | {r['compile']} | "
                         f"{r['images_per_s']:.0f} | {r['tflops']:.1f} | {r['of_peak']:.3f} |")
    if isinstance(res.get("epoch"), dict) and "epoch_s" in res["epoch"]:
        e = res["epoch"]
        lines += ["", f"One CIFAR-10 epoch (MAE tiny/4, B{e['batch_size']}, {e['steps']} steps): {e['epoch_s']:.1f} s "
                      f"wall, {e['sum_of_steps_s']:.1f} s in steps, {e['data_wait_s']:.2f} s waiting for data: "
                      f"epoch / sum of steps = {e['epoch_over_steps']:.3f}."]
    if isinstance(res.get("eval"), dict) and "knn" in res["eval"]:
        v = res["eval"]
        lines += ["", f"Feature extraction (tiny/4, bf16): {v['extract_train']['images_per_s']:.0f} img/s "
                      f"(train, {v['extract_train']['images']} images), {v['extract_test']['images_per_s']:.0f} img/s "
                      f"(test); kNN {v['knn']['queries']} queries against {v['knn']['bank']}: "
                      f"{v['knn']['seconds']:.2f} s."]
    for k in ("steps", "epoch", "eval"):
        if isinstance(res.get(k), dict) and "error" in res[k]:
            lines += ["", f"{k}: failed: {res[k]['error']}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--cifar10", help="CIFAR-10 (ImageFolder tree or torchvision folder); without it: steps only")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS)
    p.add_argument("--sections", default="steps,epoch,eval")
    p.add_argument("--dry-run", action="store_true", help="CPU, one block per model, tiny batches")
    p.add_argument("--compile", choices=("off", "on", "both"), default="both", help="steps: eager, compiled or both")
    p.add_argument("--no-others", action="store_true", help="steps: skip Hugging Face's and lightly's MAE")
    p.add_argument("--tag", default="throughput", help="output names: <tag>.json and <tag>.md under --out")
    args = p.parse_args()
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    over = DRY if args.dry_run else {}
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)",
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "peak_tflops": args.peak_tflops,
           "dry_run": args.dry_run, "command": " ".join(sys.argv)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = {"steps": bench_steps, "epoch": bench_epoch, "eval": bench_eval}
    with tempfile.TemporaryDirectory() as tmpd:
        for name in args.sections.split(","):
            if name != "steps" and not args.cifar10:
                res[name] = {"error": "no --cifar10"}
                continue
            t = time.perf_counter()
            try:
                res[name] = jobs[name](device, Path(tmpd), args, over)
            except Exception as e:  # record it and go on: one device run must bring back what it can
                res[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            print(f"{name}: {time.perf_counter() - t:.1f} s", flush=True)
            (out / f"{args.tag}.json").write_text(json.dumps(res, indent=1, default=str))
    (out / f"{args.tag}.md").write_text(to_markdown(res))
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
