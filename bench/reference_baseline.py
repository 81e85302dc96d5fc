#!/usr/bin/env python3
"""End-to-end speed of the reference Hybridiff implementation (kaist-dmlab/Hybridiff), as a baseline.

Measures one whole pipeline call per image (prompt encoding, the denoising steps, VAE decode, postprocessing),
timed with torch.cuda.synchronize() and time.perf_counter() around the call, as the reference's examples time it
(minus their per-step GPU-memory callback). The reference package is imported from its checkout (--reference); its
own pipeline classes (hybridiff.pipelines.*) are loaded with from_pretrained from a local diffusers folder (random
weights: bench/random_model.py) and wrapped in its HybridDiff (hybrid_sd for SDXL, hybrid_sd3 for SD3) as its
examples/run_{sdxl,sd3}_hybridiff.py do: same tau defaults, seeds, guidance, reset_state() before each image
(warm-up images with warm_up 15 for SDXL and 1 for SD3, timed ones with 1). Rank 0 prints one JSON object on stdout;
everything else (the reference prints every step) goes to stderr.

With the reference's pinned packages (diffusers 0.29.2, transformers 4.42.4, ...; torch, numpy and Pillow are the
environment's) installed in a folder of their own, and a checkout of the reference source:

    pip install -q --no-deps --target /tmp/refdeps diffusers==0.29.2 transformers==4.42.4 ...
    export PYTHONPATH=/tmp/refdeps
    torchrun --nproc_per_node 2 bench/reference_baseline.py --reference path/to/reference-checkout \\
        --model /tmp/sdxl-random --model_n 2 --stride 1 --steps 50 --size 1024
    python3 bench/reference_baseline.py --single --model /tmp/sdxl-random     # 1 GPU, diffusers 0.29.2, CFG batch 2

World size must be 2 or 4 and equal model_n + stride - 1: model_n 2 stride 1, model_n 4 stride 1, model_n 3
stride 2 (SDXL only: the reference's SD3 breaks with stride 2, see below).
--load-only checks the setup without a GPU (imports, from_pretrained, the model split) and prints the JSON untimed.

What the driver does around the reference (its files are not modified):
- Model split: HybridDiff picks the split by pipeline.config._name_or_path (pipe_config.py:1-445: Hub ids only),
  and from_pretrained stores the local folder there; the driver registers the Hub id of the family
  (stabilityai/stable-diffusion-xl-base-1.0, stabilityai/stable-diffusion-3-medium-diffusers) before wrapping.
- numpy: transformers 4.42.4 refuses numpy >= 2 when imported (its dependency check); with numpy 2 installed
  (a numpy 1.26 wheel is 18 MB more), the driver reports numpy as 1.26.4 to that check only (--strict-numpy: off).
- Null components of model_index.json (SD3 without T5) are passed as None: the reference's SD3 class lists no
  optional components (pipeline_stable_diffusion_3.py:167).
- The pipelines' __call__ returns None when return_dict=True (pipeline_stable_diffusion_xl.py:1486-1490,
  pipeline_stable_diffusion_3.py:1056-1060), so `.images[0]` in the examples fails; the driver ignores the result.
- SDXL tau_cap fallback: when tau1 is not detected, the pipeline sets tau1 = tau_cap at the end of step tau_cap-1
  (pipeline_stable_diffusion_xl.py:1382-1384); at step tau_cap every module plugin then has infer_step == warmup_n
  and no cache, and loads None (hybrid_sd.py:50-64), so the UNet crashes. Random weights often miss the detection.
  The driver hands HybridDiff tau1 - 1 in that case only (a property on the pipeline's tau_tensor, on the GPU, no
  host sync), which makes step tau_cap the fill step that a detected tau1 gets; --no-fallback-fix runs it as is.
  The JSON's tau1/tau2 are the pipeline's own values; tau_fallback says whether the fallback happened.
- SD3 stride 2 is refused: hybrid_sd3.py:182-193 sets a batch-2 timestep (torch.cat of two) at every step from
  warm_up on, CFG-only steps included, while each rank denoises batch 1: rank 0's latents become batch 2 and the
  latents broadcast (pipeline_stable_diffusion_3.py:996) mismatches at step 1 (gloo aborts; NCCL would hang).
- Folders written with transformers 5 (bench/random_model.py) store CLIPTextModel without the `text_model.` key
  prefix, so transformers 4.42.4 initialises SDXL's text_encoder afresh (random either way; speed is the same).
- --single: the reference classes need torch.distributed in __init__ and world size 2 or 4 in __call__
  (pipeline_stable_diffusion_xl.py:288, 1222), so the 1-GPU baseline is diffusers' own class of the same version.
"""
import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

FAMILIES = {  # the reference examples' defaults (examples/run_sdxl_hybridiff.py, run_sd3_hybridiff.py, README)
    "sdxl": dict(hub_id="stabilityai/stable-diffusion-xl-base-1.0", L_slope=12, eps_slope=0.4e-3, k=5, tau_cap=15,
                 seed=42, warmup_reset=15, call={}, module="hybrid_sd", cls="StableDiffusionXLPipeline",
                 ref_module="pipeline_stable_diffusion_xl"),
    "sd3": dict(hub_id="stabilityai/stable-diffusion-3-medium-diffusers", L_slope=15, eps_slope=0.5e-3, k=5,
                tau_cap=40, seed=20, warmup_reset=1, call=dict(negative_prompt="", guidance_scale=7.0),
                module="hybrid_sd3", cls="StableDiffusion3Pipeline", ref_module="pipeline_stable_diffusion_3"),
}
PROMPT = "Astronaut in a jungle, cold color palette, muted colors, detailed, 8k"  # the examples' .sh scripts


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", type=Path, help="the Hybridiff checkout (folder holding hybridiff/)")
    p.add_argument("--reference-commit", help="commit for the JSON (default: DIR/COMMIT or git rev-parse)")
    p.add_argument("--model", required=True, type=Path, help="local diffusers folder (model_index.json)")
    p.add_argument("--family", choices=sorted(FAMILIES), help="default: from model_index.json's _class_name")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--model_n", type=int, default=2)
    p.add_argument("--stride", type=int, default=1)
    for name, kind in (("L_slope", int), ("eps_slope", float), ("k", int), ("tau_cap", int), ("seed", int)):
        p.add_argument(f"--{name}", type=kind, help="default: the reference example's for the family")
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--warmup-images", type=int, default=1)
    p.add_argument("--images", type=int, default=1, help="timed images")
    p.add_argument("--single", action="store_true", help="1 GPU, diffusers' own pipeline, no HybridDiff")
    p.add_argument("--no-fallback-fix", action="store_true", help="run the SDXL tau_cap fallback as the reference")
    p.add_argument("--strict-numpy", action="store_true", help="let transformers reject numpy >= 2")
    p.add_argument("--load-only", action="store_true", help="stop after loading (works on CPU)")
    args = p.parse_args()
    if not args.single and args.reference is None:
        p.error("--reference is required unless --single")
    if args.family is None:
        class_name = json.loads((args.model / "model_index.json").read_text())["_class_name"]
        args.family = "sdxl" if "XL" in class_name else "sd3" if "3" in class_name else None
        if args.family is None:
            p.error(f"cannot tell the family of {class_name}: pass --family")
    for name in ("L_slope", "eps_slope", "k", "tau_cap", "seed"):
        if getattr(args, name) is None:
            setattr(args, name, FAMILIES[args.family][name])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not args.single and not args.load_only:
        if world not in (2, 4) or args.model_n + args.stride - 1 != world or args.stride not in (1, 2) \
                or args.model_n not in (2, 3, 4):
            p.error(f"world size {world} with model_n {args.model_n}, stride {args.stride}: the reference needs "
                    "world size 2 or 4 = model_n + stride - 1, model_n 2..4, stride 1 or 2")
        if args.family == "sd3" and args.stride == 2:
            p.error("SD3 with stride 2: the reference breaks at step 1 (hybrid_sd3.py:182-193 gives the transformer "
                    "a batch-2 timestep at every step >= warm_up, CFG steps too, while each rank runs batch 1; the "
                    "latents broadcast then mismatches, pipeline_stable_diffusion_3.py:996)")
        if args.tau_cap + args.k > args.steps:
            p.error(f"tau_cap + k = {args.tau_cap + args.k} > steps {args.steps}: the reference raises")
    return args


def import_transformers(strict_numpy):
    """transformers 4.42.4 checks numpy < 2 at import; tell that check 1.26.4 (see the docstring)."""
    import importlib.metadata as metadata
    import numpy
    real = metadata.version
    if not strict_numpy and int(numpy.__version__.split(".")[0]) >= 2:
        metadata.version = lambda name: "1.26.4" if name == "numpy" else real(name)
    try:
        import transformers  # noqa: F401
    finally:
        metadata.version = real


def reference_commit(args):
    if args.reference_commit:
        return args.reference_commit
    if (args.reference / "COMMIT").is_file():
        return (args.reference / "COMMIT").read_text().strip()
    git = subprocess.run(["git", "-C", str(args.reference), "rev-parse", "HEAD"], capture_output=True, text=True)
    return git.stdout.strip() if git.returncode == 0 else "unknown"


def guard_tau_fallback(cls, torch):
    """A subclass whose tau_tensor hands tau_cap - 1 instead of the fallback tau_cap on to HybridDiff."""
    def get(self):
        try:
            return self.__dict__["_guarded_tau"]
        except KeyError:
            raise AttributeError("tau_tensor") from None

    def put(self, value):
        self.__dict__["_reference_tau"] = value  # the pipeline's own decision, for the JSON
        fallback = (value[:1] == self.tau_cap).to(value.dtype)  # stays on the GPU: no sync
        self.__dict__["_guarded_tau"] = value - torch.cat([fallback, torch.zeros_like(fallback)])

    return type(cls.__name__, (cls,), {"tau_tensor": property(get, put), "__module__": cls.__module__})


def main():
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the reference prints every step: keep stdout for the one JSON object
    import torch
    import torch.distributed as dist
    import_transformers(args.strict_numpy)
    import diffusers
    family = FAMILIES[args.family]
    cuda = torch.cuda.is_available() and not args.load_only

    if args.single:
        cls, rank, world = getattr(diffusers, family["cls"]), 0, 1
    else:
        sys.path.insert(0, str(args.reference.resolve()))
        ref = importlib.import_module(f"hybridiff.pipelines.{family['ref_module']}")
        hybrid = importlib.import_module(f"hybridiff.{family['module']}")
        if not Path(hybrid.__file__).resolve().is_relative_to(args.reference.resolve()):
            sys.exit(f"reference_baseline.py: hybridiff imported from {hybrid.__file__}, not {args.reference}")
        cls = getattr(ref, family["cls"])
        if args.family == "sdxl" and not args.no_fallback_fix:
            cls = guard_tau_fallback(cls, torch)
        if "WORLD_SIZE" in os.environ:  # torchrun; the reference uses the global rank as the CUDA index
            if cuda:
                torch.cuda.set_device(int(os.environ["RANK"]))
            dist.init_process_group("nccl" if cuda else "gloo")
        else:  # --load-only without torchrun: the pipelines' __init__ still asks for the rank
            dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29517", rank=0, world_size=1)
        rank, world = dist.get_rank(), dist.get_world_size()

    model_index = json.loads((args.model / "model_index.json").read_text())
    kwargs = dict(torch_dtype=torch.float16, use_safetensors=True, low_cpu_mem_usage=True)
    kwargs.update({name: None for name, spec in model_index.items() if spec == [None, None]})
    if not args.single:
        kwargs.update(L_slope=args.L_slope, eps_slope=args.eps_slope, k=args.k, tau_cap=args.tau_cap)
    pipeline = cls.from_pretrained(str(args.model), **kwargs)

    result = {"implementation": f"diffusers {diffusers.__version__} {family['cls']} (1 GPU, CFG batched)"
              if args.single else f"reference (kaist-dmlab/Hybridiff {reference_commit(args)})",
              "family": args.family, "world_size": world, "model_n": None if args.single else args.model_n,
              "stride": None if args.single else args.stride, "steps": args.steps, "size": args.size,
              "prompt": args.prompt, "seed": args.seed}
    if not args.single:
        pipeline.register_to_config(_name_or_path=family["hub_id"])  # selects the reference's split
        result.update(L_slope=args.L_slope, eps_slope=args.eps_slope, k=args.k, tau_cap=args.tau_cap,
                      fallback_fix=args.family == "sdxl" and not args.no_fallback_fix)
    if args.load_only:
        if not args.single:
            split = importlib.import_module("hybridiff.pipe_config").splite_model(
                pipeline, pipeline.config._name_or_path, args.model_n)
            result["split_modules_per_stage"] = [len(stage) for stage in split]
        result.update(load_only=True, end_to_end_s=[],
                      pipeline_file=sys.modules[type(pipeline).__module__].__file__)
        if rank == 0:
            print(json.dumps(result), file=json_out, flush=True)
        return

    if args.single:
        pipeline.to("cuda")
    else:
        wrapper = hybrid.HybridDiff(pipeline, model_n=args.model_n, stride=args.stride, time_shift=False)

    def generate(warm_up):
        torch.manual_seed(args.seed)
        torch.cuda.manual_seed_all(args.seed)
        if not args.single:
            wrapper.reset_state(warm_up=warm_up)
            dist.barrier()
        torch.cuda.synchronize()
        start = time.perf_counter()
        pipeline(args.prompt, num_inference_steps=args.steps, height=args.size, width=args.size, **family["call"])
        torch.cuda.synchronize()
        return time.perf_counter() - start

    warmups = [generate(family["warmup_reset"]) for _ in range(args.warmup_images)]
    torch.cuda.reset_peak_memory_stats()
    times, taus = [], []
    for _ in range(args.images):
        times.append(generate(1))
        if not args.single:
            taus.append(pipeline.__dict__.get("_reference_tau", pipeline.__dict__.get("tau_tensor")).tolist())
    result.update(end_to_end_s=times, end_to_end_s_median=statistics.median(times), warmup_s=warmups,
                  peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30, gpu=torch.cuda.get_device_name())
    if taus:
        result.update(tau1=taus[-1][0], tau2=taus[-1][1], tau_fallback=taus[-1][0] == args.tau_cap)
        if len(taus) > 1:
            result["tau_per_image"] = taus
    if rank == 0:
        print(json.dumps(result), file=json_out, flush=True)
    if not args.single:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
