#!/usr/bin/env python3
"""Golden tensors for SD3.5's transformer: qk_norm "rms_norm" and MMDiT-X dual attention, computed by diffusers.

Writes into --out (tests/golden/sd35/ is the committed copy):
  transformer/config.json, transformer/diffusion_pytorch_model.safetensors
      a tiny SD3Transformer2DModel shaped like SD3.5 Medium: tiny-sd3's widths (4 heads of 16, joint_attention_dim
      48, pooled 32), 2 blocks, qk_norm "rms_norm", dual_attention_layers [0] (block 1 is the context_pre_only
      block, as in SD3.5). Random weights (seed 0); the RMSNorm weights are 1 + N(0, 0.1²) so that they matter.
  tiny-sd35-golden.safetensors
      tr_out and tr_mid_transformer_blocks.<i>.<j> (.0 context stream, .1 image stream): the transformer on
      tiny-sd3-golden's tr_in_x, tr_in_t, tr_in_ctx, tr_in_pooled
      pipe_latents: StableDiffusion3Pipeline of tiny-sd3 with this transformer, with tiny-sd3-golden.json's prompt,
      steps, guidance, size and max_sequence_length, from its pipe_init_latents (output_type="latent")

    tests/golden/make_sd35_goldens.py --fixtures FIXTURES --out tests/golden/sd35
"""
import argparse
import json
import os

from golden_environment import ensure_environment


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", required=True, help="the fixtures folder (tiny-sd3 and its golden)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    ensure_environment()

    import torch
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from safetensors.torch import load_file, save_file

    folder = os.path.join(args.fixtures, "tiny-sd3")
    settings = json.load(open(os.path.join(args.fixtures, "tiny-sd3-golden.json")))
    inputs = load_file(os.path.join(args.fixtures, "tiny-sd3-golden.safetensors"))
    base = json.load(open(os.path.join(folder, "transformer", "config.json")))
    config = {k: v for k, v in base.items() if not k.startswith("_")}
    config.update(num_layers=2, qk_norm="rms_norm", dual_attention_layers=[0])

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(**config)
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if ".norm_" in name:  # attn.norm_q, norm_added_k, attn2.norm_k, ...: RMSNorm weights, ones at init
                parameter.add_(0.1 * torch.randn_like(parameter))
    transformer.eval()
    transformer.save_pretrained(os.path.join(args.out, "transformer"))

    golden = {}
    hooks = []
    for i, block in enumerate(transformer.transformer_blocks):
        def record(module, _inputs, output, i=i):
            context, hidden = output
            if context is not None:
                golden["tr_mid_transformer_blocks.%d.0" % i] = context.detach().clone()
            golden["tr_mid_transformer_blocks.%d.1" % i] = hidden.detach().clone()
        hooks.append(block.register_forward_hook(record))
    with torch.no_grad():
        golden["tr_out"] = transformer(hidden_states=inputs["tr_in_x"], timestep=inputs["tr_in_t"],
                                       encoder_hidden_states=inputs["tr_in_ctx"],
                                       pooled_projections=inputs["tr_in_pooled"]).sample
    for hook in hooks:
        hook.remove()

    pipe = StableDiffusion3Pipeline.from_pretrained(folder, transformer=transformer, text_encoder_3=None,
                                                    tokenizer_3=None, torch_dtype=torch.float32)
    with torch.no_grad():
        golden["pipe_latents"] = pipe(settings["prompt"], num_inference_steps=settings["steps"],
                                      guidance_scale=settings["guidance_scale"], height=settings["size"],
                                      width=settings["size"], max_sequence_length=settings["max_sequence_length"],
                                      latents=inputs["pipe_init_latents"].clone(), output_type="latent").images
    save_file({k: v.contiguous() for k, v in golden.items()}, os.path.join(args.out, "tiny-sd35-golden.safetensors"))
    print("wrote", sorted(golden))


if __name__ == "__main__":
    main()
