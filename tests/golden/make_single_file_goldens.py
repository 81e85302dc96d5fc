#!/usr/bin/env python3
"""A tiny SDXL single-file checkpoint (the original Stability/LDM key layout of A1111, ComfyUI and CivitAI files),
written from tiny-sdxl's diffusers folder, and what diffusers' `from_single_file` computes with it.

Writes into --out (tests/golden/single_file/ is the committed copy):
  tiny-sdxl-single-file-recipe.json
      how to write tiny-sdxl as one file (10 MB, so the tests write it from the fixture rather than commit it): for
      each key of the file, the component ("unet", "vae", "text_encoder", "text_encoder_2"), the keys of that
      component's weights it comes from, and an operation: "copy", "conv1x1" (a linear weight [O, I] as a 1×1
      convolution [O, I, 1, 1]: the VAE attention's projections), "transpose" (OpenCLIP's text_projection) or
      "concat" (OpenCLIP's fused in_proj of q, k, v along dim 0). The layout: the UNet under "model.diffusion_model."
      (input_blocks, middle_block, output_blocks), the VAE under "first_stage_model." (down/up/mid.block_1/attn_1),
      CLIP-L in transformers' layout under "conditioner.embedders.0.transformer." and CLIP-G in OpenCLIP's layout
      under "conditioner.embedders.1.model.". The file written by the recipe is checked here: diffusers'
      StableDiffusionXLPipeline.from_single_file(file, config=tiny-sdxl) reproduces the folder's golden latents.
  tiny-sdxl-single-file-golden.safetensors
      euler_latents: final latents of the from_single_file pipeline with tiny-sdxl-golden.json's prompt_pipe, steps,
      guidance and size, from its pipe_init_latents (output_type="latent")

    tests/golden/make_single_file_goldens.py --fixtures FIXTURES --out tests/golden/single_file
"""
import argparse
import json
import os
import re
import tempfile

from golden_environment import ensure_environment

RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                 "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def unet_key(name, config):
    """A diffusers UNet2DConditionModel key in the LDM layout (without "model.diffusion_model.")."""
    per_block = config["layers_per_block"] + 1  # LDM numbers resnets and the down/upsampler in one sequence
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    module, leaf = name.rsplit(".", 1)
    if module in fixed:
        return fixed[module] + "." + leaf

    def resnet(rest):
        part, tail = rest.split(".", 1)
        return RESNET_TO_LDM[part] + "." + tail

    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.*)", name)
    if m:
        block, kind, index, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":
            return "input_blocks.%d.0.op.%s" % (1 + block * per_block + config["layers_per_block"], rest.split(".", 1)[1])
        position = 1 + block * per_block + index
        return "input_blocks.%d.%s" % (position, "0." + resnet(rest) if kind == "resnets" else "1." + rest)
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", name)
    if m:
        if m[1] == "attentions":
            return "middle_block.1." + m[3]
        return "middle_block.%d.%s" % (2 * int(m[2]), resnet(m[3]))
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.*)", name)
    if m:
        block, kind, index, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "upsamplers":
            has_attention = config["up_block_types"][block].startswith("CrossAttn")
            return "output_blocks.%d.%d.%s" % (block * per_block + per_block - 1, 2 if has_attention else 1, rest)
        position = block * per_block + index
        return "output_blocks.%d.%s" % (position, "0." + resnet(rest) if kind == "resnets" else "1." + rest)
    raise ValueError("no LDM name for UNet key " + name)


def vae_key(name, config):
    """A diffusers AutoencoderKL key in the LDM layout (without "first_stage_model.") and whether the LDM tensor
    is a 1×1 convolution where diffusers has a linear layer (the mid-block attention's projections)."""
    levels = len(config["block_out_channels"])
    renames = [(r"^(encoder|decoder)\.conv_norm_out", r"\1.norm_out"),
               (r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
               (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
               (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: "decoder.up.%d.upsample." % (levels - 1 - int(m[1]))),
               (r"^decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: "decoder.up.%d.block." % (levels - 1 - int(m[1]))),
               (r"\.mid_block\.resnets\.(\d+)\.", lambda m: ".mid.block_%d." % (int(m[1]) + 1)),
               (r"\.mid_block\.attentions\.0\.", ".mid.attn_1."),
               (r"\.conv_shortcut\.", ".nin_shortcut."),
               (r"attn_1\.group_norm\.", "attn_1.norm."),
               (r"attn_1\.to_q\.", "attn_1.q."), (r"attn_1\.to_k\.", "attn_1.k."), (r"attn_1\.to_v\.", "attn_1.v."),
               (r"attn_1\.to_out\.0\.", "attn_1.proj_out.")]
    for pattern, replacement in renames:
        name = re.sub(pattern, replacement, name)
    is_projection = re.search(r"attn_1\.(q|k|v|proj_out)\.weight$", name) is not None
    return name, is_projection


def open_clip_recipe(layers):
    """Recipe entries of CLIP-G in OpenCLIP's layout from transformers' CLIPTextModelWithProjection keys."""
    source = "text_model.encoder.layers.%d."
    out = [("token_embedding.weight", ["text_model.embeddings.token_embedding.weight"], "copy"),
           ("positional_embedding", ["text_model.embeddings.position_embedding.weight"], "copy"),
           ("ln_final.weight", ["text_model.final_layer_norm.weight"], "copy"),
           ("ln_final.bias", ["text_model.final_layer_norm.bias"], "copy"),
           ("text_projection", ["text_projection.weight"], "transpose")]
    for i in range(layers):
        target = "transformer.resblocks.%d." % i
        layer = source % i
        for leaf in ("weight", "bias"):
            out.append((target + "attn.in_proj_" + leaf, [layer + "self_attn.%s_proj.%s" % (p, leaf) for p in "qkv"],
                        "concat"))
            for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                 ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out.append((target + ours + "." + leaf, [layer + theirs + "." + leaf], "copy"))
    return out


def apply(op, tensors):
    import torch
    if op == "copy":
        return tensors[0]
    if op == "conv1x1":
        return tensors[0][:, :, None, None]
    if op == "transpose":
        return tensors[0].t()
    if op == "concat":
        return torch.cat(tensors)
    raise ValueError(op)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", required=True, help="the fixtures folder (tiny-sdxl and its golden)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    ensure_environment()

    import torch
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file, save_file

    os.makedirs(args.out, exist_ok=True)
    folder = os.path.join(args.fixtures, "tiny-sdxl")
    settings = json.load(open(os.path.join(args.fixtures, "tiny-sdxl-golden.json")))
    fixture_golden = load_file(os.path.join(args.fixtures, "tiny-sdxl-golden.safetensors"))
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32)

    # The recipe: each single-file key, the component and keys it comes from, and the operation.
    recipe = []
    for name in pipe.unet.state_dict():
        recipe.append(("model.diffusion_model." + unet_key(name, pipe.unet.config), "unet", [name], "copy"))
    for name in pipe.vae.state_dict():
        key, is_projection = vae_key(name, pipe.vae.config)
        recipe.append(("first_stage_model." + key, "vae", [name], "conv1x1" if is_projection else "copy"))
    for name in pipe.text_encoder.state_dict():
        key = name if name.startswith("text_model.") else "text_model." + name
        recipe.append(("conditioner.embedders.0.transformer." + key, "text_encoder", [name], "copy"))
    for key, names, op in open_clip_recipe(pipe.text_encoder_2.config.num_hidden_layers):
        recipe.append(("conditioner.embedders.1.model." + key, "text_encoder_2", names, op))
    states = {c: getattr(pipe, c).state_dict() for c in ("unet", "vae", "text_encoder", "text_encoder_2")}
    single = {key: apply(op, [states[c][n] for n in names]).contiguous() for key, c, names, op in recipe}
    path = os.path.join(tempfile.mkdtemp(), "tiny-sdxl.safetensors")
    save_file(single, path)
    with open(os.path.join(args.out, "tiny-sdxl-single-file-recipe.json"), "w") as f:
        entries = [json.dumps({"key": k, "component": c, "from": n, "op": op}) for k, c, n, op in recipe]
        f.write("[\n" + ",\n".join(entries) + "\n]\n")

    loaded = StableDiffusionXLPipeline.from_single_file(path, config=folder, local_files_only=True,
                                                        torch_dtype=torch.float32)
    # from_single_file tells the two CLIP encoders apart by their widths, which tiny-sdxl's share (32): it reads
    # CLIP-L's weights (the same tensors) for text_encoder_2 too. Its OpenCLIP conversion, called directly, reads
    # CLIP-G's into a fresh encoder.
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    clip_g = type(loaded.text_encoder_2)(loaded.text_encoder_2.config)
    clip_g.load_state_dict(convert_open_clip_checkpoint(clip_g, load_file(path), prefix="conditioner.embedders.1.model."),
                           strict=True)
    loaded.text_encoder_2 = clip_g.eval()
    with torch.no_grad():
        latents = loaded(settings["prompt_pipe"], num_inference_steps=settings["steps"],
                         guidance_scale=settings["guidance_scale"], height=settings["size"], width=settings["size"],
                         latents=fixture_golden["pipe_init_latents"].clone(), output_type="latent").images
    folder_latents = fixture_golden["pipe_euler_latents"]
    difference = ((latents - folder_latents).abs().max() / folder_latents.abs().max()).item()
    print("from_single_file vs the folder's golden latents: %.3g (relative)" % difference)
    assert difference < 1e-4, "diffusers reads the single file differently from the folder"
    save_file({"euler_latents": latents.contiguous()},
              os.path.join(args.out, "tiny-sdxl-single-file-golden.safetensors"))


if __name__ == "__main__":
    main()
