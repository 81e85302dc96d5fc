#!/usr/bin/env python3
"""Times cuDNN's float8 flash attention against its fp16 one at the denoisers' attention shapes, and its error.

Whether `--dtype fp8` should run attention in float8 follows from these numbers (docs/models.md). fp16: PyTorch's
scaled_dot_product_attention with the cuDNN and the flash backends. float8: cuDNN's SDPA graph through
cudnn-frontend's Python API (`pip install nvidia-cudnn-frontend`), e4m3 q, k, v with per-tensor scales
(max|x| / 448), asked for an fp16 output and for an e4m3 one. Inputs are [batch, tokens, heads, 64] buffers read as
[batch, heads, tokens, 64], as the runtime's attention reads them; q and k have standard deviation 2, v 1. The
error is the relative L2 against float32 attention of the same inputs. Prints JSON lines: ms per call (the mean of
--iters calls after 5 warm-up calls), error, or why cuDNN declined a graph.

    python3 bench/fp8_attention.py [--iters 30]
"""
import argparse
import json

import cudnn
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

SHAPES = [  # (name, batch, heads, tokens); head dimension 64
    ("sd3-medium joint attention, batch 1", 1, 24, 4096 + 333),
    ("sd3-medium joint attention, batch 2", 2, 24, 4096 + 333),
    ("sdxl attention, level 1, batch 1", 1, 10, 4096),
    ("sdxl attention, level 1, batch 2", 2, 10, 4096),
    ("sdxl attention, level 2, batch 2", 2, 20, 1024),
]
HEAD_DIM = 64
FLOAT = cudnn.data_type.FLOAT


def mean_ms(call, iters):
    for _ in range(5):
        call()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        call()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def relative_l2(output, reference):
    return ((output.float() - reference).norm() / reference.norm()).item()


def quantized(tensor):
    """e4m3 values and the scale that dequantizes them, per tensor."""
    scale = tensor.abs().amax().float() / 448.0
    return (tensor.float() / scale).to(torch.float8_e4m3fn), scale.reshape(1, 1, 1, 1)


def float8_attention(batch, heads, tokens, output_type, handle):
    """A cuDNN float8 SDPA graph over [batch, tokens, heads, d] buffers; returns it and its tensors by role."""
    graph = cudnn.pygraph(io_data_type=cudnn.data_type.FP8_E4M3, intermediate_data_type=FLOAT,
                          compute_data_type=FLOAT)
    dims = [batch, heads, tokens, HEAD_DIM]
    strides = [tokens * heads * HEAD_DIM, HEAD_DIM, heads * HEAD_DIM, 1]
    q, k, v = (graph.tensor(name=name, dim=dims, stride=strides, data_type=cudnn.data_type.FP8_E4M3)
               for name in ("q", "k", "v"))
    scalars = {name: graph.tensor(name=name, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=FLOAT)
               for name in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")}
    output, _, amax_s, amax_o = graph.sdpa_fp8(q=q, k=k, v=v, **scalars, generate_stats=False,
                                               attn_scale=HEAD_DIM ** -0.5, use_causal_mask=False)
    output.set_output(True).set_dim(dims).set_stride(strides).set_data_type(output_type)
    for amax in (amax_s, amax_o):
        amax.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(FLOAT)
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    return graph, dict(q=q, k=k, v=v, output=output, amax_s=amax_s, amax_o=amax_o, **scalars)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    handle = cudnn.create_handle()
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
    print(json.dumps({"card": torch.cuda.get_device_name(), "cudnn": cudnn.backend_version(), "torch": torch.__version__}))
    for name, batch, heads, tokens in SHAPES:
        row = {"shape": name}
        buffers = [torch.randn(batch, tokens, heads, HEAD_DIM, device="cuda", dtype=torch.float16) * spread
                   for spread in (2.0, 2.0, 1.0)]
        q, k, v = (buffer.transpose(1, 2) for buffer in buffers)
        reference = scaled_dot_product_attention(q.float(), k.float(), v.float())
        for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
            with sdpa_kernel(backend):
                row[f"fp16 {backend.name.lower()} ms"] = mean_ms(lambda: scaled_dot_product_attention(q, k, v), args.iters)
                row[f"fp16 {backend.name.lower()} error"] = relative_l2(scaled_dot_product_attention(q, k, v), reference)
        (q8, descale_q), (k8, descale_k), (v8, descale_v) = (quantized(buffer) for buffer in buffers)
        for output_type, label in ((cudnn.data_type.HALF, "fp8, fp16 output"), (cudnn.data_type.FP8_E4M3, "fp8, e4m3 output")):
            try:
                graph, tensors = float8_attention(batch, heads, tokens, output_type, handle)
            except Exception as declined:  # cuDNN says which engines declined and why
                row[label] = "declined: " + str(declined)[:240]
                continue
            e4m3_output = output_type == cudnn.data_type.FP8_E4M3
            output = torch.empty(batch, tokens, heads, HEAD_DIM, device="cuda",
                                 dtype=torch.float8_e4m3fn if e4m3_output else torch.float16)
            scale_o = 448.0 / 4.0 if e4m3_output else 1.0  # attention outputs stay within max|v| (4 here)
            scalar = lambda value: torch.full((1, 1, 1, 1), value, device="cuda")
            pack = {tensors["q"]: q8, tensors["k"]: k8, tensors["v"]: v8, tensors["descale_q"]: descale_q,
                    tensors["descale_k"]: descale_k, tensors["descale_v"]: descale_v,
                    tensors["scale_s"]: scalar(448.0), tensors["descale_s"]: scalar(1 / 448.0),
                    tensors["scale_o"]: scalar(scale_o), tensors["output"]: output,
                    tensors["amax_s"]: scalar(0.0), tensors["amax_o"]: scalar(0.0)}
            workspace = torch.empty(graph.get_workspace_size(), device="cuda", dtype=torch.uint8)
            run = lambda: graph.execute(pack, workspace, handle=handle)
            row[f"{label} ms"] = mean_ms(run, args.iters)
            row[f"{label} error"] = relative_l2(output.float().transpose(1, 2) / scale_o, reference)
        row["quantize q, k, v with PyTorch ms"] = mean_ms(lambda: [quantized(buffer) for buffer in buffers], args.iters)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
