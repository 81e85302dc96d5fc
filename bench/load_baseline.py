#!/usr/bin/env python3
"""Loading a full-size SDXL single-file checkpoint and fusing a LoRA: diffusers and hybridiff in one run.

Writes (once, into --work) a random-weight SDXL-base folder (bench/random_model.py), the same weights as one fp16
file in the original single-file layout (the layout tests/golden/make_single_file_goldens.py writes and checks
against diffusers), and a random PEFT LoRA of rank --rank on the UNet's and both text encoders' attention
projections (diffusers' save_lora_weights). Then, alternating, --iters times each:
  diffusers: StableDiffusionXLPipeline.from_single_file(file, config=folder, torch_dtype=fp16).to(device), then
             load_lora_weights + fuse_lora (+ unload_lora_weights: the fused weights stay, the adapters go)
  hybridiff: `hybridiff bench --load --model FILE --config-from FOLDER --lora LORA` (its own --iters loads with and
             without the LoRA)
and prints one JSON object: every time, the medians and the ratios diffusers ÷ hybridiff (> 1: hybridiff is faster).
The file is read from the page cache in both (it was just written, and every load reads it again).

    python3 bench/load_baseline.py --hybridiff build/hybridiff --fixtures FIXTURES --work /tmp/load-bench \\
        [--device cuda] [--iters 3] [--rank 32]

diffusers 0.42.1, transformers and PEFT are imported from the environment (PYTHONPATH for an unpacked set).
"""
import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "golden"))
from make_single_file_goldens import apply, open_clip_recipe, unet_key, vae_key  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hybridiff", required=True, help="the hybridiff binary")
    parser.add_argument("--fixtures", required=True, type=Path, help="the fixtures folder (configs/, tiny-sdxl/)")
    parser.add_argument("--work", required=True, type=Path, help="where the model, file and LoRA are written")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--rank", type=int, default=32, help="the LoRA's rank")
    return parser.parse_args()


def write_single_file(folder, path):
    """The folder's UNet, VAE and text encoders as one file in the original layout (fp16, as the folder)."""
    from safetensors.torch import load_file, save_file

    def component(name):
        config = json.loads((folder / name / "config.json").read_text())
        weights = next(p for p in sorted((folder / name).glob("*.safetensors")))
        return config, load_file(weights)

    unet_config, unet = component("unet")
    vae_config, vae = component("vae")
    _, clip_l = component("text_encoder")
    clip_g_config, clip_g = component("text_encoder_2")
    single = {"model.diffusion_model." + unet_key(k, unet_config): v for k, v in unet.items()}
    for k, v in vae.items():
        key, is_projection = vae_key(k, vae_config)
        single["first_stage_model." + key] = apply("conv1x1" if is_projection else "copy", [v])
    for k, v in clip_l.items():
        single["conditioner.embedders.0.transformer." + (k if k.startswith("text_model.") else "text_model." + k)] = v
    for key, names, op in open_clip_recipe(clip_g_config["num_hidden_layers"]):
        single["conditioner.embedders.1.model." + key] = apply(op, [clip_g[n] for n in names])
    save_file({k: v.contiguous() for k, v in single.items()}, path)


def write_lora(folder, path, rank):
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float16)
    torch.manual_seed(0)
    unet_config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                             target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    text_config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                             target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    pipe.unet.add_adapter(unet_config)
    pipe.text_encoder.add_adapter(text_config)
    pipe.text_encoder_2.add_adapter(text_config)
    layers = {name: {k: (v * 0.01 if "lora_B" in k else v).contiguous()
                     for k, v in get_peft_model_state_dict(getattr(pipe, name)).items()}
              for name in ("unet", "text_encoder", "text_encoder_2")}
    StableDiffusionXLPipeline.save_lora_weights(
        path.parent, unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers["text_encoder"],
        text_encoder_2_lora_layers=layers["text_encoder_2"], weight_name=path.name)


def time_diffusers(file, folder, lora, device):
    from diffusers import StableDiffusionXLPipeline

    def synchronize():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    start = time.perf_counter()
    pipe = StableDiffusionXLPipeline.from_single_file(str(file), config=str(folder), local_files_only=True,
                                                      torch_dtype=torch.float16).to(device)
    synchronize()
    loaded = time.perf_counter()
    pipe.load_lora_weights(str(lora))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    synchronize()
    fused = time.perf_counter()
    del pipe
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return loaded - start, fused - loaded


def main():
    args = parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    folder, file, lora = args.work / "sdxl-random", args.work / "sdxl-random.safetensors", args.work / "lora.safetensors"
    if not (folder / "model_index.json").exists():
        subprocess.check_call([sys.executable, str(HERE / "random_model.py"), "--family", "sdxl", "--configs",
                               str(args.fixtures / "configs"), "--tokenizers", str(args.fixtures / "tiny-sdxl"),
                               "--out", str(folder), "--device", args.device])
    if not file.exists():
        write_single_file(folder, file)
    if not lora.exists():
        write_lora(folder, lora, args.rank)

    diffusers_load, diffusers_merge = [], []
    for _ in range(args.iters):
        load_s, merge_s = time_diffusers(file, folder, lora, args.device)
        diffusers_load.append(load_s)
        diffusers_merge.append(merge_s)
    run = subprocess.run([args.hybridiff, "bench", "--load", "--model", str(file), "--config-from", str(folder),
                          "--lora", str(lora), "--device", args.device, "--dtype", "fp16", "--iters",
                          str(args.iters), "--log-level", "warn"], check=True, capture_output=True, text=True)
    ours = json.loads(run.stdout[run.stdout.index("{"):])
    diffusers = {"load_s": diffusers_load, "merge_s": diffusers_merge,
                 "median_load_s": statistics.median(diffusers_load),
                 "median_merge_s": statistics.median(diffusers_merge)}
    diffusers["median_total_s"] = diffusers["median_load_s"] + diffusers["median_merge_s"]
    report = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "file_gib": round(file.stat().st_size / 2**30, 2),
        "lora_rank": args.rank,
        "lora_mib": round(lora.stat().st_size / 2**20, 1),
        "diffusers": diffusers,
        "hybridiff": ours,
        "load_ratio": diffusers["median_load_s"] / ours["median_load_s"],
        "merge_ratio": diffusers["median_merge_s"] / max(ours["median_merge_s"], 1e-9),
        "total_ratio": diffusers["median_total_s"] / ours["median_load_with_loras_s"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
