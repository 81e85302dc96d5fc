#!/usr/bin/env python3
"""Golden tensors for LoRA loading: diffusers and PEFT make a LoRA for tiny-sdxl, fuse it, and record the result.

Writes into --out (tests/golden/lora/ is the committed copy):
  tiny-sdxl-lora-peft.safetensors   the LoRA as diffusers saves it (StableDiffusionXLPipeline.save_lora_weights):
                                    unet (attention projections and the resnets' 3×3 conv1: conv LoRA),
                                    text_encoder and text_encoder_2 (q, k, v, out projections); rank 4, alpha 8
                                    (in lora_adapter_metadata), random A and B (seed 0, B scaled by 0.1)
  tiny-sdxl-lora-kohya.safetensors  the same pairs in kohya's naming (lora_unet_/lora_te1_/lora_te2_ + the module
                                    path with '_', .lora_down.weight, .lora_up.weight, .alpha = 8)
  tiny-sdxl-lora-golden.safetensors what diffusers computes with the PEFT file loaded by load_lora_weights and
                                    fused by fuse_lora(lora_scale=0.7):
      prompt_embeds, pooled_prompt_embeds  encode_prompt(prompt_pipe)
      euler_latents  final latents of pipe(prompt_pipe, 8 steps, guidance 5, 32², latents=pipe_init_latents of
                     tiny-sdxl-golden.safetensors), output_type="latent"
    and, as a check that the kohya file means the same, the kohya file loaded the same way reproduces
    euler_latents (asserted here; diffusers converts kohya names itself).
  tiny-sdxl-lora-kohya-ldm-names.json
                                    the kohya file's UNet module names in the original (LDM) block layout that
                                    kohya's trainers write for SDXL checkpoints ("lora_unet_input_blocks_4_1_..."), as
                                    a renaming {diffusers-layout name: LDM-layout name}; the renamed file, loaded by
                                    diffusers, reproduces euler_latents too (asserted here)
  tiny-sd3-lora-peft.safetensors, tiny-sd3-lora-golden.safetensors  a LoRA of tiny-sd3's transformer (attention
                                    of both streams, feed-forward out; rank 4, alpha 4) and the final latents of the
                                    fixture's SD3 run with it fused at scale 1 ("latents")

Needs diffusers 0.42.1, transformers and peft (golden_environment.py installs them where they are missing):
    tests/golden/make_lora_goldens.py --fixtures FIXTURES --out tests/golden/lora
"""
import argparse
import json
import os
import tempfile

from golden_environment import ensure_environment
from make_single_file_goldens import unet_key


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", required=True, help="the fixtures folder (tiny-sdxl and its golden)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    ensure_environment()

    import torch
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    os.makedirs(args.out, exist_ok=True)
    folder = os.path.join(args.fixtures, "tiny-sdxl")
    settings = json.load(open(os.path.join(args.fixtures, "tiny-sdxl-golden.json")))
    init_latents = load_file(os.path.join(args.fixtures, "tiny-sdxl-golden.safetensors"))["pipe_init_latents"]

    torch.manual_seed(0)
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    unet_config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                             target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1"])
    text_config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                             target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    pipe.unet.add_adapter(unet_config)
    pipe.text_encoder.add_adapter(text_config)
    pipe.text_encoder_2.add_adapter(text_config)
    layers = {}
    for name, module in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder),
                         ("text_encoder_2", pipe.text_encoder_2)):
        state = get_peft_model_state_dict(module)
        # Smaller B: the merged model stays close to the base one (a LoRA's usual size).
        layers[name] = {k: (v * 0.1 if "lora_B" in k else v).contiguous() for k, v in state.items()}
    peft_path = os.path.join(args.out, "tiny-sdxl-lora-peft.safetensors")

    def metadata(config):  # the LoRA's config, without this machine's paths
        values = config.to_dict()
        values["base_model_name_or_path"] = None
        return values

    StableDiffusionXLPipeline.save_lora_weights(
        args.out, unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers["text_encoder"],
        text_encoder_2_lora_layers=layers["text_encoder_2"], weight_name="tiny-sdxl-lora-peft.safetensors",
        unet_lora_adapter_metadata=metadata(unet_config), text_encoder_lora_adapter_metadata=metadata(text_config),
        text_encoder_2_lora_adapter_metadata=metadata(text_config))

    kohya = {}
    for key, value in load_file(peft_path).items():
        component, rest = key.split(".", 1)
        prefix = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}[component]
        module, half = rest.rsplit(".lora_", 1)
        name = prefix + module.replace(".", "_")
        kohya[name + (".lora_down.weight" if half.startswith("A") else ".lora_up.weight")] = value
        kohya[name + ".alpha"] = torch.tensor(8.0)
    kohya_path = os.path.join(args.out, "tiny-sdxl-lora-kohya.safetensors")
    save_file(kohya, kohya_path)

    # The same kohya file as trainers write it for SDXL checkpoints in the original layout: the UNet's modules named
    # by input_blocks/middle_block/output_blocks. Committed as a renaming of the kohya file's module names.
    ldm_names = {}
    for key in load_file(peft_path):
        component, rest = key.split(".", 1)
        if component != "unet":
            continue
        module = rest.rsplit(".lora_", 1)[0]
        ldm_module = unet_key(module + ".weight", pipe.unet.config)[: -len(".weight")]
        ldm_names["lora_unet_" + module.replace(".", "_")] = "lora_unet_" + ldm_module.replace(".", "_")
    with open(os.path.join(args.out, "tiny-sdxl-lora-kohya-ldm-names.json"), "w") as f:
        json.dump(ldm_names, f, indent=0, sort_keys=True)
    ldm_path = os.path.join(tempfile.mkdtemp(), "tiny-sdxl-lora-kohya-ldm.safetensors")
    save_file({ldm_names.get(k.split(".", 1)[0], k.split(".", 1)[0]) + "." + k.split(".", 1)[1]: v
               for k, v in kohya.items()}, ldm_path)

    def fused(path):
        fresh = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32)
        fresh.load_lora_weights(path)
        fresh.fuse_lora(lora_scale=0.7, components=["unet", "text_encoder", "text_encoder_2"])
        fresh.unload_lora_weights()  # the fused weights stay; the adapters go
        with torch.no_grad():
            embeds, _, pooled, _ = fresh.encode_prompt(settings["prompt_pipe"], do_classifier_free_guidance=True)
            latents = fresh(settings["prompt_pipe"], num_inference_steps=settings["steps"],
                            guidance_scale=settings["guidance_scale"], height=settings["size"],
                            width=settings["size"], latents=init_latents.clone(), output_type="latent").images
        return embeds, pooled, latents

    embeds, pooled, latents = fused(peft_path)
    _, _, kohya_latents = fused(kohya_path)
    _, _, ldm_latents = fused(ldm_path)
    ldm_difference = ((ldm_latents - latents).abs().max() / latents.abs().max()).item()
    assert ldm_difference < 1e-5, "diffusers reads the LDM-layout kohya file differently: %g" % ldm_difference
    difference = ((kohya_latents - latents).abs().max() / latents.abs().max()).item()
    assert difference < 1e-5, "diffusers reads the kohya file differently: %g" % difference
    base = load_file(os.path.join(args.fixtures, "tiny-sdxl-golden.safetensors"))["pipe_euler_latents"]
    change = ((latents - base).abs().max() / base.abs().max()).item()
    print("LoRA moved the final latents by %.3g (relative); kohya vs PEFT %.3g" % (change, difference))
    save_file({"prompt_embeds": embeds.contiguous(), "pooled_prompt_embeds": pooled.contiguous(),
               "euler_latents": latents.contiguous()}, os.path.join(args.out, "tiny-sdxl-lora-golden.safetensors"))
    make_sd3_lora(args, metadata)


def make_sd3_lora(args, metadata):
    """tiny-sd3's transformer with a LoRA on its attention projections (both streams) and feed-forwards."""
    import torch
    from diffusers import StableDiffusion3Pipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    folder = os.path.join(args.fixtures, "tiny-sd3")
    settings = json.load(open(os.path.join(args.fixtures, "tiny-sd3-golden.json")))
    init_latents = load_file(os.path.join(args.fixtures, "tiny-sd3-golden.safetensors"))["pipe_init_latents"]
    torch.manual_seed(1)
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None,
                                                    torch_dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                        target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                                        "to_add_out", "ff.net.2"])
    pipe.transformer.add_adapter(config)
    layers = {k: (v * 0.1 if "lora_B" in k else v).contiguous()
              for k, v in get_peft_model_state_dict(pipe.transformer).items()}
    StableDiffusion3Pipeline.save_lora_weights(args.out, transformer_lora_layers=layers,
                                               weight_name="tiny-sd3-lora-peft.safetensors",
                                               transformer_lora_adapter_metadata=metadata(config))
    fresh = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None,
                                                    torch_dtype=torch.float32)
    fresh.load_lora_weights(os.path.join(args.out, "tiny-sd3-lora-peft.safetensors"))
    fresh.fuse_lora(lora_scale=1.0, components=["transformer"])
    fresh.unload_lora_weights()
    with torch.no_grad():
        latents = fresh(settings["prompt"], num_inference_steps=settings["steps"],
                        guidance_scale=settings["guidance_scale"], height=settings["size"], width=settings["size"],
                        max_sequence_length=settings["max_sequence_length"], latents=init_latents.clone(),
                        output_type="latent").images
    base = load_file(os.path.join(args.fixtures, "tiny-sd3-golden.safetensors"))["pipe_latents"]
    print("SD3: the LoRA moved the final latents by %.3g (relative)" %
          ((latents - base).abs().max() / base.abs().max()).item())
    save_file({"latents": latents.contiguous()}, os.path.join(args.out, "tiny-sd3-lora-golden.safetensors"))


if __name__ == "__main__":
    main()
