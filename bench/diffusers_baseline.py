#!/usr/bin/env python3
"""diffusers side by side with hybridiff: per-step latency of the same denoiser config with random weights.

Runs, in one invocation on one device: diffusers eager, diffusers torch.compile (what a user who wants speed
does), `hybridiff bench` eager and `hybridiff bench --cuda-graphs`; prints one JSON object with the medians
and the ratios (diffusers time / hybridiff time: > 1 means hybridiff is faster).

    python3 bench/diffusers_baseline.py --hybridiff build/hybridiff \\
        --config ../shared/fixtures/configs/sdxl-unet [--batch 1,2] [--size 1024] [--dtype fp16]

(../shared/fixtures: the fixtures folder beside the checkout.) diffusers is imported from the environment or from
--diffusers-path (e.g. an unpacked wheel or a checkout's src/ folder; never committed). Results:
docs/benchmarks.md. Inputs match `hybridiff bench`:
SDXL latents [B, 4, S/8, S/8], 77 context tokens, text_embeds and time_ids; SD3 latents [B, 16, S/8, S/8],
77 + 256 context tokens and pooled projections; timestep 500.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hybridiff", required=True, help="the hybridiff binary")
    parser.add_argument("--config", required=True, help="folder with the denoiser's config.json")
    parser.add_argument("--batch", default="1,2", help="batch sizes, e.g. 1,2")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (latents: /8)")
    parser.add_argument("--dtype", default="fp16", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--iters", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile: after compiling)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--fp8", action="store_true",
                        help="also time hybridiff bench --dtype fp8 (CUDA graphs where on CUDA): float8 linear layers")
    parser.add_argument("--diffusers-path", help="a folder to import diffusers from")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile N eager steps of each (torch.profiler; hybridiff bench --profile N) and "
                             "report the GPU time per step by kernel class, side by side")
    return parser.parse_args()


# The kernel classes of hybridiff's runtime::kernel_class (runtime/kernel_profile.cpp), same rules, same order:
# the first class with a pattern in the lower-cased kernel name.
KERNEL_CLASSES = [
    ("attention", ["flash", "fmha", "attention", "sdpa", "mem_eff"]),
    ("convolution", ["conv", "fprop", "dgrad", "wgrad", "winograd"]),
    ("gemm", ["gemm", "cutlass", "cublas", "nvjet", "xmma", "matmul"]),
    ("normalization", ["norm", "moments"]),
    ("reduction", ["reduce", "softmax"]),
    ("copy", ["memcpy", "memset", "copy", "cat", "transpose", "permute", "index"]),
    ("elementwise", ["elementwise", "vectorized", "unrolled", "silu", "gelu", "pointwise"]),
]


def kernel_class(name):
    name = name.lower()
    return next((c for c, patterns in KERNEL_CLASSES if any(p in name for p in patterns)), "other")


def main():
    args = parse_args()
    if args.diffusers_path:
        sys.path.insert(0, args.diffusers_path)
    try:
        import torch
        import diffusers
    except ImportError as missing:
        sys.exit(f"diffusers_baseline.py: cannot import {missing.name} (install diffusers and its dependencies, or "
                 f"give --diffusers-path)")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    device = torch.device(args.device)
    batches = [int(b) for b in args.batch.split(",")]
    with open(f"{args.config}/config.json") as file:
        config = json.load(file)
    class_name = config.get("_class_name")
    torch.manual_seed(0)
    if class_name == "UNet2DConditionModel":
        model = diffusers.UNet2DConditionModel.from_config(config)
    elif class_name == "SD3Transformer2DModel":
        model = diffusers.SD3Transformer2DModel.from_config(config)
    else:
        sys.exit(f"diffusers_baseline.py: {args.config}/config.json: {class_name} is not a supported denoiser")
    model = model.to(device, dtype).eval()
    latent = args.size // 8

    def inputs(batch):
        options = {"device": device, "dtype": dtype}
        if class_name == "UNet2DConditionModel":
            time_dim = config.get("addition_time_embed_dim") or 256
            pooled = (config.get("projection_class_embeddings_input_dim") or 2816) - 6 * time_dim
            context = config["cross_attention_dim"]
            context = context[-1] if isinstance(context, list) else context
            return dict(sample=torch.randn(batch, config["in_channels"], latent, latent, **options),
                        timestep=torch.tensor(500.0, device=device),
                        encoder_hidden_states=torch.randn(batch, 77, context, **options),
                        added_cond_kwargs={"text_embeds": torch.randn(batch, pooled, **options),
                                           "time_ids": torch.tensor([[args.size, args.size, 0, 0, args.size, args.size]],
                                                                    **options).repeat(batch, 1)})
        return dict(hidden_states=torch.randn(batch, config["in_channels"], latent, latent, **options),
                    timestep=torch.full((batch,), 500.0, device=device),
                    encoder_hidden_states=torch.randn(batch, 77 + 256, config["joint_attention_dim"], **options),
                    pooled_projections=torch.randn(batch, config["pooled_projection_dim"], **options))

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def time_steps(forward, batch):
        kwargs = inputs(batch)
        with torch.inference_mode():
            for _ in range(args.warmup):
                forward(**kwargs)
            synchronize()
            samples = []
            for _ in range(args.iters):
                start = time.perf_counter()
                forward(**kwargs)
                synchronize()
                samples.append((time.perf_counter() - start) * 1000.0)
        return statistics.median(samples)

    def profile_steps(forward, batch):
        """GPU ms per step by kernel class over --profile eager steps, as hybridiff bench --profile reports it."""
        kwargs = inputs(batch)
        with torch.inference_mode():
            forward(**kwargs)
            synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
                for _ in range(args.profile):
                    forward(**kwargs)
                synchronize()
        by_class, by_name, total = {}, {}, 0.0
        for event in profile.events():
            if event.device_type != torch.autograd.DeviceType.CUDA:
                continue
            ms = event.device_time / 1000.0  # microseconds
            group = kernel_class(event.name)
            by_class[group] = by_class.get(group, 0.0) + ms
            calls, summed = by_name.get(event.name, (0, 0.0))
            by_name[event.name] = (calls + 1, summed + ms)
            total += ms
        top = sorted(by_name.items(), key=lambda item: -item[1][1])[:15]
        return {"gpu_ms_per_step": total / args.profile,
                "classes": {c: {"ms_per_step": ms / args.profile, "share": ms / total} for c, ms in sorted(by_class.items())},
                "top_kernels": [{"name": name[:160], "class": kernel_class(name), "calls_per_step": calls / args.profile,
                                 "ms_per_step": ms / args.profile} for name, (calls, ms) in top]}

    def hybridiff(graphs, dtype=None):
        command = [args.hybridiff, "bench", "--model-config", args.config, "--batch", args.batch, "--size",
                   str(args.size), "--dtype", dtype or args.dtype, "--device", args.device, "--iters", str(args.iters),
                   "--warmup", str(args.warmup), "--log-level", "warn"] + (["--cuda-graphs"] if graphs else [])
        if args.profile and not graphs:
            command += ["--profile", str(args.profile)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"diffusers_baseline.py: {' '.join(command)} failed:\n{done.stdout}{done.stderr}")
        return {b["batch"]: b for b in json.loads(done.stdout)["batches"]}

    report = {"model": class_name, "config": args.config, "size": args.size, "dtype": args.dtype,
              "device": str(device), "torch": torch.__version__, "diffusers": diffusers.__version__, "batches": []}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    eager = {b: time_steps(model, b) for b in batches}
    compiled = {}
    if not args.no_compile:
        compiled_model = torch.compile(model)
        compiled = {b: time_steps(compiled_model, b) for b in batches}
    ours = hybridiff(False)
    ours_graphs = hybridiff(True) if device.type == "cuda" else {}
    ours_fp8 = hybridiff(device.type == "cuda", "fp8") if args.fp8 else {}
    for b in batches:
        row = {"batch": b, "diffusers_eager_ms": eager[b], "hybridiff_eager_ms": ours[b]["step_ms_median"],
               "eager_ratio": eager[b] / ours[b]["step_ms_median"]}
        if b in compiled:
            row["diffusers_compile_ms"] = compiled[b]
        if b in ours_graphs:
            row["hybridiff_cuda_graphs_ms"] = ours_graphs[b]["step_ms_median"]
        if args.profile:
            row["profile"] = {"diffusers_eager": profile_steps(model, b), "hybridiff_eager": ours[b]["profile"]}
        if b in ours_fp8:
            row["hybridiff_fp8_ms"] = ours_fp8[b]["step_ms_median"]
            row["fp8_relative_l2_error"] = ours_fp8[b]["relative_l2_error"]  # against the same weights unquantized
        best_theirs = compiled.get(b, eager[b])
        best_ours = row.get("hybridiff_cuda_graphs_ms", row["hybridiff_eager_ms"])
        row["best_ratio"] = best_theirs / best_ours  # > 1: hybridiff's best is faster than diffusers' best
        if b in ours_fp8:
            row["fp8_ratio"] = best_theirs / row["hybridiff_fp8_ms"]
        report["batches"].append(row)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
