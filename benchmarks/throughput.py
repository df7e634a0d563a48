#!/usr/bin/env python
"""Training and data throughput of MAE and i-MAE, measured against the machine's own matmul rate.

    python benchmarks/throughput.py --cifar10 /path/to/cifar10          # all sections (about 30 min on 2 CPU cores)
    python benchmarks/throughput.py --sizes tiny4 --skip-epoch             # a quick look

Writes ``benchmarks/results/throughput-<device>.json`` and ``.md``. Everything is measured in one
process: a train step is forward + backward + AdamW through the same objective code as ``imae pretrain``;
the MAE and i-MAE arms are interleaved (warm-up first, then the median of the timed steps), so noise from
other work on the machine hits both alike. FLOPs are counted analytically (``imae.models.flops``, equal to
torch's FlopCounterMode). Utilisation is achieved FLOP/s over the machine's matmul rate measured in
the same rounds: a large matmul (the fastest size found at start) is timed between the steps, as one more
interleaved arm, and the best of its timings is the reference, so a shared machine that slows down
for a while slows the reference too (the rate found at start is recorded beside it).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from imae.config import build_config
from imae.data.datasets import ImageSet
from imae.data.loader import Batch
from imae.engine.objectives import build_objective
from imae.models.flops import imae_train_flops, mae_train_flops
from imae.runtime import precision
from imae.runtime.optim import build_adamw

SIZES = {  # name: (model, batch size on CPU, batch size on GPU)
    "tiny4": ("mae_vit_tiny_patch4", 128, 1024),
    "small8": ("mae_vit_small_patch8", 64, 512),
    "base16": ("mae_vit_base_patch16", 8, 128),
}
RESULTS = Path(__file__).resolve().parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, dtype: torch.dtype) -> dict:
    """Best GFLOP/s over square matmuls of a few sizes (each: warm-up, then the best of 5)."""
    best = {}
    for n in (1024, 2048, 4096) + ((8192,) if device.type == "cuda" else ()):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        times = []
        for _ in range(5):
            sync(device)
            t = time.perf_counter()
            a @ b
            sync(device)
            times.append(time.perf_counter() - t)
        best[n] = 2 * n**3 / min(times) / 1e9
    return {"per_size_gflops": best, "best_gflops": max(best.values()), "best_size": max(best, key=best.get)}


def make_matmul(n: int, device: torch.device, dtype: torch.dtype):
    """A closure doing one n x n matmul (2 n^3 FLOPs): the reference arm timed between the training steps."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return lambda: a @ b


def make_objectives(model: str, device: torch.device, tmp: Path) -> dict:
    """MAE and i-MAE objectives of one size (the i-MAE distils from a same-size MAE teacher)."""
    mae_cfg = build_config(None, {"model.name": model, "device": str(device)})
    torch.manual_seed(0)
    mae = build_objective(mae_cfg)
    teacher = tmp / f"{model}-teacher.pth"
    torch.save({"model": mae.model.state_dict(), "kind": "mae", "arch": mae.model.arch.to_dict()}, teacher)
    imae_cfg = build_config(None, {"method": "imae", "model.name": model, "imae.teacher": str(teacher),
                                   "imae.same_class_p": 1.0, "device": str(device)})
    imae = build_objective(imae_cfg)
    return {"mae": mae, "imae": imae}


def make_step(objective, device: torch.device, batch_size: int, amp: bool, compile: bool = False):
    """A closure running one training step exactly as the loop does (without logging); ``compile``: through
    ``torch.compile`` of the model, as ``train.compile`` runs it."""
    model = objective.model.to(device).train()
    net = torch.compile(model) if compile else model
    size = model.arch.img_size
    images = torch.randn(batch_size, 3, size, size, device=device)
    labels = torch.arange(batch_size, device=device) // 2  # pairs of the same class
    if hasattr(objective, "prepare"):
        classes = [str(i) for i in range(batch_size // 2)]
        objective.prepare(ImageSet("synthetic", "train", labels.cpu(), classes, (0.5,) * 3, (0.25,) * 3), device)
    opt = build_adamw(model, 1e-4, 0.05, (0.9, 0.95), device)
    autocast = precision.autocast(device, amp)  # bf16 on CUDA and on CPUs with bf16 units, as the loop
    gen = torch.Generator(device=device)

    def step() -> None:
        gen.manual_seed(0)
        batch = Batch(images, labels, torch.arange(batch_size, device=device), gen)
        with autocast:
            out = objective(net, batch, 0.75)
        loss = out["loss"]
        assert bool(torch.isfinite(loss))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_arms(steps: dict, device: torch.device, warmup: int, repeats: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for f in steps.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for k, f in steps.items():  # interleaved
            sync(device)
            t = time.perf_counter()
            f()
            sync(device)
            times[k].append(time.perf_counter() - t)
    return times


def bench_size(name: str, device: torch.device, amp: bool, matmul: dict, tmp: Path, repeats: int,
               decoder_ab: bool = False) -> dict:
    model, cpu_batch, gpu_batch = SIZES[name]
    batch = gpu_batch if device.type == "cuda" else cpu_batch
    objs = make_objectives(model, device, tmp)
    arch = objs["mae"].model.arch
    flops = {"mae": mae_train_flops(arch), "imae": imae_train_flops(arch)}
    steps = {k: make_step(o, device, batch, amp) for k, o in objs.items()}
    if decoder_ab:  # the alternative the model does not use: each branch through the decoder on its own
        alt = make_objectives(model, device, tmp)["imae"]
        m = alt.model
        m.decode_branches = lambda z_sub, z_dom, ids: (m.decode_tokens(z_sub, ids), m.decode_tokens(z_dom, ids))
        steps["imae_separate_decoder"] = make_step(alt, device, batch, amp)
    n = matmul["best_size"]
    steps["matmul"] = make_matmul(n, device, torch.bfloat16 if precision.uses_bf16(device, amp) else torch.float32)
    nb = n if device.type == "cuda" or precision.cpu_has_bf16() else 512  # emulated bf16: a size that ends soon
    if device.type == "cpu":  # the CPU's other rate: utilisation against fp32 and against bf16 matmuls
        steps["matmul_bf16"] = make_matmul(nb, device, torch.bfloat16)
        steps["matmul_fp32"] = make_matmul(n, device, torch.float32)
    times = time_arms(steps, device, 2, repeats)
    peak = 2 * n**3 / min(times["matmul"]) / 1e9
    out = {"model": model, "img_size": arch.img_size, "batch_size": batch, "reference_gflops": peak,
           "reference_gflops_all": [2 * n**3 / t / 1e9 for t in times["matmul"]],
           "precision": precision.name(device, amp)}
    if device.type == "cpu":
        out["matmul_gflops"] = {"fp32": 2 * n**3 / min(times["matmul_fp32"]) / 1e9,
                                "bf16": 2 * nb**3 / min(times["matmul_bf16"]) / 1e9, "bf16_size": nb}
    if decoder_ab:
        out["decoder_batched_over_separate_time"] = (statistics.median(times["imae"])
                                                     / statistics.median(times["imae_separate_decoder"]))
    for k in ("mae", "imae"):
        med = statistics.median(times[k])
        out[k] = {"step_s": med, "images_per_s": batch / med, "mflop_per_image": flops[k] / 1e6,
                  "gflops": flops[k] * batch / med / 1e9, "utilisation": flops[k] * batch / med / 1e9 / peak,
                  "step_s_all": times[k]}
        for dt, rate in out.get("matmul_gflops", {}).items():
            if dt in ("fp32", "bf16"):
                out[k][f"utilisation_{dt}"] = out[k]["gflops"] / rate
    out["imae_over_mae_time"] = out["imae"]["step_s"] / out["mae"]["step_s"]
    out["imae_over_mae_flops"] = flops["imae"] / flops["mae"]
    out["imae_flops_rate_over_mae"] = out["imae"]["gflops"] / out["mae"]["gflops"]
    for o in objs.values():
        o.model.to("cpu")
    return out


def bench_data(cifar10: str, device: torch.device, batch: int, steps: int) -> dict:
    """Images per second of the in-memory pipeline alone: index, crop, flip, normalise on the device."""
    from imae.data.datasets import load_split
    from imae.data.loader import build_train_loader

    data = load_split("cifar10", "train", cifar10, 32)
    loader = build_train_loader(data, batch, 32, device, seed=0)
    it = loader.batches(0)
    for _ in range(3):
        next(it)
    sync(device)
    t = time.perf_counter()
    n = 0
    for _, (_, b) in zip(range(steps), it):
        n += b.images.shape[0]
    sync(device)
    return {"images_per_s": n / (time.perf_counter() - t), "batch_size": batch, "steps": steps}


def bench_epoch(cifar10: str, device: torch.device, max_steps: int | None, tmp: Path) -> dict:
    """One real `imae pretrain` epoch of MAE ViT-Tiny/4 on CIFAR-10: wall time against the sum of its steps."""
    from imae.engine.train import pretrain

    sets = {"model.name": "mae_vit_tiny_patch4", "data.dataset": "cifar10", "data.path": cifar10,
            "train.epochs": 1, "train.warmup_epochs": 0, "train.batch_size": 128, "output_dir": str(tmp / "epoch"),
            "device": str(device), "train.log_every": 10**9}
    if max_steps:
        sets["data.max_per_class"] = max_steps * 128 // 10
    pretrain(build_config(None, sets))
    rec = [json.loads(x) for x in (tmp / "epoch" / "log.jsonl").read_text().splitlines()]
    epoch = next(r for r in rec if r["kind"] == "epoch")
    start = next(r for r in rec if r["kind"] == "event")
    steps_s = epoch["time_s"] - epoch["data_wait_s"]
    return {"images": start["images"], "steps": start["steps_per_epoch"], "epoch_s": epoch["time_s"],
            "data_wait_s": epoch["data_wait_s"], "sum_of_steps_s": steps_s,
            "epoch_over_steps": epoch["time_s"] / steps_s, "shortened": bool(max_steps)}


def bench_eval(cifar10: str, device: torch.device, tmp: Path, train_per_class: int, eval_per_class: int) -> dict:
    """Feature extraction once vs linear probe + kNN + separability on the cached features (ViT-Tiny/4)."""
    from imae.eval.run import evaluate

    torch.manual_seed(0)
    cfg = build_config("cifar10-mae-tiny", {"data.path": cifar10})
    mae = build_objective(cfg).model
    ck = tmp / "eval-subject.pth"
    torch.save({"model": mae.state_dict(), "kind": "mae", "arch": mae.arch.to_dict(), "config": cfg.to_dict()}, ck)
    over = {"device": str(device), "data.train_per_class": train_per_class, "data.eval_per_class": eval_per_class,
            "features.cache_dir": str(tmp / "features"), "output_dir": str(tmp / "eval")}
    out = {"train_images": 10 * train_per_class, "eval_images": 10 * eval_per_class, "model": "mae_vit_tiny_patch4"}
    for cmd in ("linprobe", "knn", "separability"):
        out[cmd] = evaluate(cmd, ck, overrides=over)["timing"]
    clean = out["linprobe"]["extract_s"]  # train + eval images, extracted once (kNN then reads the cache)
    on_cache = sum(out[c]["fit_s"] for c in ("linprobe", "knn", "separability"))
    out.update(clean_extract_s=clean, mixture_extract_s=out["separability"]["extract_s"], on_cache_s=on_cache,
               on_cache_over_extract=on_cache / clean)
    out["summary"] = (f"ViT-Tiny/4 on {out['train_images']} + {out['eval_images']} CIFAR-10 images: one clean "
                      f"feature extraction {clean:.1f} s (plus {out['mixture_extract_s']:.1f} s for the 5 alphas' "
                      f"mixtures); linear probe + kNN + separability on the cached features {on_cache:.1f} s = "
                      f"{on_cache / clean:.2f} x the extraction.")
    return out


def to_markdown(res: dict) -> str:
    dev = res["device"]
    lines = [f"Device: {dev}; matmul rate at start {res['matmul']['best_gflops']:.0f} GFLOP/s "
             f"({res['matmul']['dtype']}, best of sizes {', '.join(map(str, res['matmul']['per_size_gflops']))}); "
             f"{res['date']}. Utilisation is against the same matmul timed between the steps of each model "
             f"(column 'matmul').", "",
             "| model | batch | arm | img/s | MFLOP/img | GFLOP/s | matmul GFLOP/s | utilisation |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in res["sizes"]:
        ref = s.get("reference_gflops", res["matmul"]["best_gflops"])
        for k, label in (("mae", "MAE"), ("imae", "i-MAE")):
            a = s[k]
            lines.append(f"| {s['model']} ({s['img_size']} px) | {s['batch_size']} | {label} | "
                         f"{a['images_per_s']:.1f} | {a['mflop_per_image']:.0f} | {a['gflops']:.1f} | {ref:.0f} | "
                         f"{a['utilisation']:.2f} |")
    both = [s for s in res["sizes"] if "matmul_gflops" in s]
    if both:
        lines += ["", "Utilisation against both CPU matmul rates, timed in the same rounds (steps in "
                      f"{both[0]['precision']}):", "",
                  "| model | arm | fp32 matmul GFLOP/s | of fp32 | bf16 matmul GFLOP/s | of bf16 |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for s in both:
            m = s["matmul_gflops"]
            for k, label in (("mae", "MAE"), ("imae", "i-MAE")):
                lines.append(f"| {s['model']} | {label} | {m['fp32']:.0f} | {s[k]['utilisation_fp32']:.2f} | "
                             f"{m['bf16']:.1f} ({m['bf16_size']}^2) | {s[k]['utilisation_bf16']:.2f} |")
    lines += ["", "| model | i-MAE/MAE step time | i-MAE/MAE FLOPs | i-MAE FLOP/s / MAE FLOP/s |",
              "| --- | --- | --- | --- |"]
    for s in res["sizes"]:
        lines.append(f"| {s['model']} | {s['imae_over_mae_time']:.2f} | {s['imae_over_mae_flops']:.2f} | "
                     f"{s['imae_flops_rate_over_mae']:.2f} |")
    ab = [s for s in res["sizes"] if "decoder_batched_over_separate_time" in s]
    if ab:
        lines += ["", f"i-MAE decoder, both branches in one batched pass vs one pass per branch ({ab[0]['model']}): "
                      f"step time ratio {ab[0]['decoder_batched_over_separate_time']:.3f} (below 1: batched is faster; "
                      f"the model uses the batched pass)."]
    if "data" in res:
        d = res["data"]
        lines += ["", f"Data pipeline alone (CIFAR-10 in memory, batched crop/flip/normalise, batch "
                      f"{d['batch_size']}): {d['images_per_s']:.0f} img/s."]
    if "epoch" in res:
        e = res["epoch"]
        note = " (shortened: a subset of the training set)" if e["shortened"] else ""
        lines += [f"One `imae pretrain` epoch of MAE ViT-Tiny/4 on CIFAR-10 ({e['images']} images, {e['steps']} "
                  f"steps){note}: {e['epoch_s']:.0f} s wall, {e['sum_of_steps_s']:.0f} s in training steps, "
                  f"{e['data_wait_s']:.1f} s waiting for data: epoch / steps = {e['epoch_over_steps']:.3f}."]
        tiny = next((s for s in res["sizes"] if s["model"] == "mae_vit_tiny_patch4" and s["batch_size"] == 128), None)
        if tiny:
            isolated = e["steps"] * tiny["mae"]["step_s"]
            lines[-1] += (f" Against {e['steps']} x the isolated step time of the table ({isolated:.0f} s): "
                          f"{e['epoch_s'] / isolated:.3f}.")
    if "eval" in res:
        v = res["eval"]
        lines += ["", f"Evaluation: {v['summary']}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--sizes", default="tiny4,small8,base16")
    p.add_argument("--repeats", type=int, default=9, help="timed steps per arm (after 2 warm-up steps)")
    p.add_argument("--cifar10", help="CIFAR-10 (ImageFolder tree or torchvision folder) for the data and epoch runs")
    p.add_argument("--skip-epoch", action="store_true")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--epoch-steps", type=int, help="shorten the epoch run to about this many steps")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--render", metavar="JSON", help="only rewrite the Markdown table of an earlier result file")
    args = p.parse_args()
    if args.render:
        res = json.loads(Path(args.render).read_text())
        Path(args.render).with_suffix(".md").write_text(to_markdown(res))
        print(to_markdown(res))
        return 0
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          (args.device if args.device != "auto" else "cpu"))
    amp = not args.no_amp
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtype = torch.bfloat16 if precision.uses_bf16(device, amp) else torch.float32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'CPU'} " \
        f"x{torch.get_num_threads()} threads"
    res: dict = {"device": name, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                 "command": " ".join(sys.argv)}
    res["matmul"] = {**matmul_rate(device, dtype), "dtype": str(dtype)}
    peak = res["matmul"]["best_gflops"]
    print(f"matmul: {peak:.1f} GFLOP/s", flush=True)
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        res["sizes"] = []
        for s in args.sizes.split(","):
            r = bench_size(s, device, amp, res["matmul"], tmp, args.repeats, decoder_ab=s == "tiny4")
            res["sizes"].append(r)
            print(f"{s}: matmul {r['reference_gflops']:.0f} GFLOP/s; MAE {r['mae']['images_per_s']:.1f} img/s "
                  f"({r['mae']['utilisation']:.2f}), i-MAE "
                  f"{r['imae']['images_per_s']:.1f} img/s ({r['imae']['utilisation']:.2f}), FLOP/s ratio "
                  f"{r['imae_flops_rate_over_mae']:.2f}", flush=True)
        if args.cifar10:
            res["data"] = bench_data(args.cifar10, device, SIZES["tiny4"][2 if device.type == "cuda" else 1], 50)
            print(f"data: {res['data']['images_per_s']:.0f} img/s", flush=True)
            if not args.skip_eval:
                res["eval"] = bench_eval(args.cifar10, device, tmp, 800, 200)
                print(res["eval"]["summary"], flush=True)
            if not args.skip_epoch:
                res["epoch"] = bench_epoch(args.cifar10, device, args.epoch_steps, tmp)
                print(f"epoch/steps: {res['epoch']['epoch_over_steps']:.3f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"throughput-{device.type}"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    (out / f"{stem}.md").write_text(to_markdown(res))
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
