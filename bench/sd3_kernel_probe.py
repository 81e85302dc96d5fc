#!/usr/bin/env python3
"""PyTorch alone at SD3-medium's 1024² shapes: what each SDPA backend and FP8 GEMMs would give (docs/benchmarks.md,
"Where the time goes": SD3-medium's batch-2 step is bound by its GEMMs and attention).

Times, on the current CUDA device, scaled_dot_product_attention on [B, 24, 4429, 64] fp16 (4096 image + 333 context
tokens) with the default, cuDNN, flash and memory-efficient backends (head-split views and contiguous tensors), and
the linear layers' GEMMs (M = B·4429 rows; q/k/v joined 1536→4608, 1536→1536, 1536→6144, 6144→1536) in fp16 against
torch._scaled_mm in float8_e4m3 (per-tensor and row-wise scales), plus an unfused per-tensor quantization of the
activation. Prints one line "PROBE {json}": ms per call and TFLOPS.

    python3 bench/sd3_kernel_probe.py
"""
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend

def bench(fn, iters=30):
    for _ in range(5): fn()
    torch.cuda.synchronize()
    s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(iters): fn()
    e.record(); torch.cuda.synchronize()
    return round(s.elapsed_time(e) / iters, 4)

res = {"torch": torch.__version__, "cudnn": torch.backends.cudnn.version(), "gpu": torch.cuda.get_device_name()}
H, D = 24, 64
for B in (1, 2):
    L = 4429
    flops = 4 * B * H * L * L * D
    parts = [torch.randn(B, L, H * D, device="cuda", dtype=torch.float16) for _ in range(3)]
    view = [p.view(B, L, H, D).transpose(1, 2) for p in parts]
    bhld = [t.contiguous() for t in view]
    for name, be in [("default", None), ("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                     ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
        for lay, (q, k, v) in [("view", view), ("bhld", bhld)]:
            try:
                if be is None:
                    t = bench(lambda: F.scaled_dot_product_attention(q, k, v))
                else:
                    with sdpa_kernel(be):
                        t = bench(lambda: F.scaled_dot_product_attention(q, k, v))
                res[f"attn b{B} {name} {lay}"] = [t, round(flops / t / 1e9, 1)]
            except Exception as ex:
                res[f"attn b{B} {name} {lay}"] = str(ex)[:160]
    # which kernel the default picks
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        F.scaled_dot_product_attention(*view); torch.cuda.synchronize()
    res[f"attn b{B} default kernels"] = [e.key[:90] for e in prof.key_averages()][:4]

one = torch.tensor(1.0, device="cuda")
for M in (4429, 8858):
    for K, N in [(1536, 4608), (1536, 1536), (1536, 6144), (6144, 1536)]:
        x = torch.randn(M, K, device="cuda", dtype=torch.float16)
        w = torch.randn(N, K, device="cuda", dtype=torch.float16) * 0.02
        b = torch.randn(N, device="cuda", dtype=torch.float16)
        t16 = bench(lambda: F.linear(x, w, b))
        x8 = x.to(torch.float8_e4m3fn); w8 = w.to(torch.float8_e4m3fn)
        r = {"fp16": [t16, round(2 * M * K * N / t16 / 1e9, 1)]}
        try:
            t8 = bench(lambda: torch._scaled_mm(x8, w8.t(), scale_a=one, scale_b=one, bias=b, out_dtype=torch.float16))
            r["fp8 tensorwise"] = [t8, round(2 * M * K * N / t8 / 1e9, 1)]
        except Exception as ex:
            r["fp8 tensorwise"] = str(ex)[:160]
        try:
            sa = torch.ones(M, 1, device="cuda"); sb = torch.ones(1, N, device="cuda")
            xb = x.to(torch.bfloat16)
            t8r = bench(lambda: torch._scaled_mm(x8, w8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16))
            r["fp8 rowwise bf16"] = [t8r, round(2 * M * K * N / t8r / 1e9, 1)]
        except Exception as ex:
            r["fp8 rowwise bf16"] = str(ex)[:160]
        # dynamic per-tensor quantization of the activation: amax, scale, cast
        def quant():
            s = x.abs().amax().float() / 448.0
            return (x / s).to(torch.float8_e4m3fn), s
        r["quantize"] = bench(quant)
        res[f"gemm M{M} K{K} N{N}"] = r
print("PROBE " + json.dumps(res))
