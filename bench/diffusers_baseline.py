#!/usr/bin/env python3
"""diffusers side by side with hybridiff: per-step latency of the same denoiser config with random weights.

Runs, in one invocation on one device: diffusers eager, diffusers torch.compile (what a user who wants speed
does), `hybridiff bench` eager and `hybridiff bench --cuda-graphs`; prints one JSON object with the medians
and the ratios (diffusers time / hybridiff time: > 1 means hybridiff is faster).

    python3 bench/diffusers_baseline.py --hybridiff build-gpu/hybridiff \\
        --config ../shared/fixtures/configs/sdxl-unet [--batch 1,2] [--size 1024] [--dtype fp16]

diffusers is imported from the environment or from --diffusers-path (e.g. an unpacked wheel or a checkout's
src/ folder carried to the GPU machine in an ignored folder; never committed). Inputs match `hybridiff bench`:
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
    parser.add_argument("--diffusers-path", help="a folder to import diffusers from")
    return parser.parse_args()


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

    def hybridiff(graphs):
        command = [args.hybridiff, "bench", "--model-config", args.config, "--batch", args.batch, "--size",
                   str(args.size), "--dtype", args.dtype, "--device", args.device, "--iters", str(args.iters),
                   "--warmup", str(args.warmup), "--log-level", "warn"] + (["--cuda-graphs"] if graphs else [])
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"diffusers_baseline.py: {' '.join(command)} failed:\n{done.stdout}{done.stderr}")
        return {b["batch"]: b["step_ms_median"] for b in json.loads(done.stdout)["batches"]}

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
    for b in batches:
        row = {"batch": b, "diffusers_eager_ms": eager[b], "hybridiff_eager_ms": ours[b],
               "eager_ratio": eager[b] / ours[b]}
        if b in compiled:
            row["diffusers_compile_ms"] = compiled[b]
        if b in ours_graphs:
            row["hybridiff_cuda_graphs_ms"] = ours_graphs[b]
        best_theirs = compiled.get(b, eager[b])
        best_ours = ours_graphs.get(b, ours[b])
        row["best_ratio"] = best_theirs / best_ours  # > 1: hybridiff's best is faster than diffusers' best
        report["batches"].append(row)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
