#!/usr/bin/env python3
"""Writes a full-size diffusers folder with random weights: SDXL-base or SD3-medium, every component.

End-to-end timings (text encoders, denoiser, VAE) need a whole pipeline folder; speed does not depend on the
weights' values, so no public checkpoint has to be downloaded. The components are built by diffusers and
transformers from the full-size configs of the fixtures folder beside the checkout (../shared/fixtures/configs;
torch's default initialisation, seed 0) and saved in fp16 safetensors with `save_pretrained`, so hybridiff,
diffusers and the reference implementation load the same folder:

    python3 bench/random_model.py --family sdxl --configs ../shared/fixtures/configs \\
        --tokenizers ../shared/fixtures/tiny-sdxl --out /tmp/sdxl-random [--device cuda]

The tokenizers are the tiny fixtures' (a small BPE vocabulary: token ids stay below the encoders' vocabulary size;
the text encoders' bos/eos/pad ids are set to that vocabulary's so the pooled embedding is read at the end token).
SD3 is written without T5 (text_encoder_3 = None, as diffusers allows): its 256 T5 positions are zeros, so the
transformer's sequence and step time are those of the full model; only T5's own encoding time is missing.
"""
import argparse
import shutil
import sys
from pathlib import Path

import torch


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", required=True, choices=["sdxl", "sd3"])
    parser.add_argument("--configs", required=True, type=Path, help="../shared/fixtures/configs")
    parser.add_argument("--tokenizers", required=True, type=Path,
                        help="a folder with tokenizer/ and tokenizer_2/ (../shared/fixtures/tiny-sdxl or tiny-sd3)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to initialise the weights (cuda is much faster)")
    return parser.parse_args()


def main():
    args = parse_args()
    import diffusers
    import transformers

    for folder in ("tokenizer", "tokenizer_2"):
        if not (args.tokenizers / folder / "vocab.json").is_file():
            sys.exit(f"random_model.py: {args.tokenizers / folder}/vocab.json is missing")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(args.tokenizers / "tokenizer")
    tokenizer_2 = transformers.CLIPTokenizer.from_pretrained(args.tokenizers / "tokenizer_2")
    torch.manual_seed(0)

    def fp16(module):
        return module.to(device=args.device, dtype=torch.float16).eval()

    def build(factory, config_name):
        with torch.device(args.device):  # initialise where it is fast, then store as fp16
            return fp16(factory(args.configs / config_name))

    def text_encoder(cls, config_name, tok):
        config = transformers.CLIPTextConfig.from_pretrained(args.configs / config_name)
        config.bos_token_id, config.eos_token_id, config.pad_token_id = (
            tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        with torch.device(args.device):
            return fp16(cls(config))

    def denoiser(cls):
        return lambda folder: cls.from_config(cls.load_config(folder))

    vae_config = "sdxl-vae" if args.family == "sdxl" else "sd3-vae"
    vae = build(denoiser(diffusers.AutoencoderKL), vae_config)
    if args.family == "sdxl":
        pipeline = diffusers.StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder(transformers.CLIPTextModel, "clip-vit-l-text", tokenizer),
            text_encoder_2=text_encoder(transformers.CLIPTextModelWithProjection, "clip-vit-bigg-text", tokenizer_2),
            tokenizer=tokenizer, tokenizer_2=tokenizer_2,
            unet=build(denoiser(diffusers.UNet2DConditionModel), "sdxl-unet"),
            scheduler=diffusers.EulerDiscreteScheduler.from_pretrained(args.configs / "sdxl-scheduler"))
    else:
        pipeline = diffusers.StableDiffusion3Pipeline(
            vae=vae,
            text_encoder=text_encoder(transformers.CLIPTextModelWithProjection, "clip-vit-l-text", tokenizer),
            text_encoder_2=text_encoder(transformers.CLIPTextModelWithProjection, "clip-vit-bigg-text", tokenizer_2),
            text_encoder_3=None, tokenizer=tokenizer, tokenizer_2=tokenizer_2, tokenizer_3=None,
            transformer=build(denoiser(diffusers.SD3Transformer2DModel), "sd3-medium-transformer"),
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(args.configs / "sd3-scheduler"))
    if args.out.exists():
        shutil.rmtree(args.out)
    pipeline.save_pretrained(args.out, safe_serialization=True)
    for folder in ("tokenizer", "tokenizer_2"):  # the fixtures' files as they are (transformers 5 writes only
        shutil.rmtree(args.out / folder)        # tokenizer.json; hybridiff reads vocab.json and merges.txt)
        shutil.copytree(args.tokenizers / folder, args.out / folder)
    print(f"wrote {args.out} ({sum(f.stat().st_size for f in args.out.rglob('*') if f.is_file()) / 2**30:.1f} GiB)")


if __name__ == "__main__":
    main()
