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


SD3_FIXED = {"pos_embed.pos_embed": "pos_embed", "pos_embed.proj": "x_embedder.proj",
             "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
             "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
             "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
             "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
             "context_embedder": "context_embedder", "proj_out": "final_layer.linear",
             "norm_out.linear": "final_layer.adaLN_modulation.1"}
SD3_BLOCK = {"attn.to_out.0": "x_block.attn.proj", "attn.to_add_out": "context_block.attn.proj",
             "attn.norm_q": "x_block.attn.ln_q", "attn.norm_k": "x_block.attn.ln_k",
             "attn.norm_added_q": "context_block.attn.ln_q", "attn.norm_added_k": "context_block.attn.ln_k",
             "attn2.to_out.0": "x_block.attn2.proj", "attn2.norm_q": "x_block.attn2.ln_q",
             "attn2.norm_k": "x_block.attn2.ln_k", "norm1.linear": "x_block.adaLN_modulation.1",
             "norm1_context.linear": "context_block.adaLN_modulation.1", "ff.net.0.proj": "x_block.mlp.fc1",
             "ff.net.2": "x_block.mlp.fc2", "ff_context.net.0.proj": "context_block.mlp.fc1",
             "ff_context.net.2": "context_block.mlp.fc2"}
SD3_QKV = {"attn": ("x_block.attn.qkv", ["attn.to_q", "attn.to_k", "attn.to_v"]),
           "context": ("context_block.attn.qkv", ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"]),
           "attn2": ("x_block.attn2.qkv", ["attn2.to_q", "attn2.to_k", "attn2.to_v"])}


def sd3_transformer_recipe(names, num_layers):
    """(key without "model.diffusion_model.", [diffusers keys], op) of SD3Transformer2DModel keys `names` in the
    original SD3/SD3.5 layout: fused qkv per stream, and the AdaLayerNormContinuous linears (the last block's
    context norm and norm_out) with their shift and scale halves swapped."""
    out = []
    names = set(names)
    for name in sorted(names):
        module, leaf = name.rsplit(".", 1) if name != "pos_embed.pos_embed" else (name, "")
        if module in SD3_FIXED:
            op = "swap_halves" if module == "norm_out.linear" else "copy"
            out.append((SD3_FIXED[module] + ("." + leaf if leaf else ""), [name], op))
            continue
        m = re.match(r"transformer_blocks\.(\d+)\.(.+)$", module)
        if not m:
            raise ValueError("no original name for SD3 key " + name)
        block, rest = int(m[1]), m[2]
        if any(rest in parts for _, parts in SD3_QKV.values()):
            continue  # written fused, below
        op = "swap_halves" if rest == "norm1_context.linear" and block == num_layers - 1 else "copy"
        out.append(("joint_blocks.%d.%s.%s" % (block, SD3_BLOCK[rest], leaf), [name], op))
    for block in range(num_layers):
        for fused, parts in SD3_QKV.values():
            for leaf in ("weight", "bias"):
                sources = ["transformer_blocks.%d.%s.%s" % (block, part, leaf) for part in parts]
                if sources[0] in names:
                    out.append(("joint_blocks.%d.%s.%s" % (block, fused, leaf), sources, "concat"))
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
    if op == "swap_halves":
        first, second = tensors[0].chunk(2, dim=0)
        return torch.cat([second, first])
    raise ValueError(op)


def write_single_file(pipe, recipe, recipe_path):
    """Writes the recipe as JSON to recipe_path, one entry per line, and the single file it describes from `pipe`'s
    components into a temporary folder; returns the file's path."""
    from safetensors.torch import save_file

    states = {c: getattr(pipe, c).state_dict() for c in sorted({c for _, c, _, _ in recipe})}
    single = {key: apply(op, [states[c][n] for n in names]).contiguous() for key, c, names, op in recipe}
    path = os.path.join(tempfile.mkdtemp(), os.path.basename(recipe_path).replace("-recipe.json", ".safetensors"))
    save_file(single, path)
    with open(recipe_path, "w") as f:
        entries = [json.dumps({"key": k, "component": c, "from": n, "op": op}) for k, c, n, op in recipe]
        f.write("[\n" + ",\n".join(entries) + "\n]\n")
    return path


def fresh_clip_g(encoder, state):
    """A new encoder of `encoder`'s class and config holding `state` (strict). from_single_file tells the two CLIP
    encoders apart by their widths, which the tiny models share: it reads CLIP-L's tensors (the very same tensors)
    for text_encoder_2. Its own conversion of CLIP-G's prefix, called directly, gives `state`."""
    clip_g = type(encoder)(encoder.config)
    clip_g.load_state_dict(state, strict=True)
    return clip_g.eval()


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
    path = write_single_file(pipe, recipe, os.path.join(args.out, "tiny-sdxl-single-file-recipe.json"))

    loaded = StableDiffusionXLPipeline.from_single_file(path, config=folder, local_files_only=True,
                                                        torch_dtype=torch.float32)
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    loaded.text_encoder_2 = fresh_clip_g(loaded.text_encoder_2, convert_open_clip_checkpoint(
        loaded.text_encoder_2, load_file(path), prefix="conditioner.embedders.1.model."))
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
    make_sd3(args)


def make_sd3(args):
    """tiny-sd3's folder with tests/golden/sd35's transformer (qk_norm, dual attention) as one SD3.5-layout file."""
    import torch
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from safetensors.torch import load_file, save_file

    settings = json.load(open(os.path.join(args.fixtures, "tiny-sd3-golden.json")))
    fixture_golden = load_file(os.path.join(args.fixtures, "tiny-sd3-golden.safetensors"))
    folder = tempfile.mkdtemp()
    for entry in os.listdir(os.path.join(args.fixtures, "tiny-sd3")):
        if entry != "transformer":
            os.symlink(os.path.join(os.path.abspath(args.fixtures), "tiny-sd3", entry), os.path.join(folder, entry))
    sd35 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sd35", "transformer")
    os.symlink(sd35, os.path.join(folder, "transformer"))
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None,
                                                    torch_dtype=torch.float32)
    recipe = []
    transformer = pipe.transformer.state_dict()
    for key, names, op in sd3_transformer_recipe(transformer, pipe.transformer.config.num_layers):
        recipe.append(("model.diffusion_model." + key, "transformer", names, op))
    for name in pipe.vae.state_dict():
        key, is_projection = vae_key(name, pipe.vae.config)
        recipe.append(("first_stage_model." + key, "vae", [name], "conv1x1" if is_projection else "copy"))
    # CLIP-L without its projection, as SD3's single files hold it (loaders use an identity); CLIP-G with it.
    for component, prefix in (("text_encoder", "text_encoders.clip_l.transformer."),
                              ("text_encoder_2", "text_encoders.clip_g.transformer.")):
        for name in getattr(pipe, component).state_dict():
            if component == "text_encoder" and name == "text_projection.weight":
                continue
            key = name if name.startswith("text_model.") or name == "text_projection.weight" else "text_model." + name
            recipe.append((prefix + key, component, [name], "copy"))
    path = write_single_file(pipe, recipe, os.path.join(args.out, "tiny-sd35-single-file-recipe.json"))

    loaded = StableDiffusion3Pipeline.from_single_file(path, config=folder, local_files_only=True,
                                                       text_encoder_3=None, tokenizer_3=None,
                                                       torch_dtype=torch.float32)
    loaded.text_encoder_2 = fresh_clip_g(
        loaded.text_encoder_2, convert_ldm_clip_checkpoint(load_file(path), "text_encoders.clip_g.transformer."))
    with torch.no_grad():
        latents = loaded(settings["prompt"], num_inference_steps=settings["steps"],
                         guidance_scale=settings["guidance_scale"], height=settings["size"], width=settings["size"],
                         max_sequence_length=settings["max_sequence_length"],
                         latents=fixture_golden["pipe_init_latents"].clone(), output_type="latent").images
    # The same pipeline from the folder, with CLIP-L's projection an identity as the file implies: the same latents.
    with torch.no_grad():
        pipe.text_encoder.text_projection.weight.copy_(torch.eye(pipe.text_encoder.text_projection.weight.shape[0]))
        folder_latents = pipe(settings["prompt"], num_inference_steps=settings["steps"],
                              guidance_scale=settings["guidance_scale"], height=settings["size"],
                              width=settings["size"], max_sequence_length=settings["max_sequence_length"],
                              latents=fixture_golden["pipe_init_latents"].clone(), output_type="latent").images
    difference = ((latents - folder_latents).abs().max() / folder_latents.abs().max()).item()
    print("SD3.5 from_single_file vs the folder (identity CLIP-L projection): %.3g (relative)" % difference)
    assert difference < 1e-4, "diffusers reads the SD3.5 single file differently from the folder"
    save_file({"latents": latents.contiguous()}, os.path.join(args.out, "tiny-sd35-single-file-golden.safetensors"))


if __name__ == "__main__":
    main()
