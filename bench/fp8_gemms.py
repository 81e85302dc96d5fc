#!/usr/bin/env python3
"""Times the denoisers' GEMM shapes in fp16 and in float8 e4m3 through PyTorch's scaled GEMM (cuBLASLt).

Which linear layers `--dtype fp8` quantizes follows from these numbers: a layer gains only where its float8 GEMM
saves more than quantizing its input costs (docs/models.md). Each shape is rows × in → out features at 1024², batch
2; per-tensor scales (what the runtime uses) and row-wise scales (one per row and output feature) are both timed.
Prints JSON: microseconds per GEMM, the mean over --iters calls after 5 warm-up calls (with --repeats N, the median
of N such means).

    python3 bench/fp8_gemms.py [--iters 50] [--repeats 1]
"""
import argparse
import json
import statistics

import torch

SHAPES = [  # (name, rows, in features, out features)
    ("sdxl attention, level 1", 8192, 640, 640),
    ("sdxl attention, level 2", 2048, 1280, 1280),
    ("sdxl geglu projection, level 1", 8192, 640, 5120),
    ("sdxl geglu projection, level 2", 2048, 1280, 10240),
    ("sdxl feed-forward out, level 1", 8192, 2560, 640),
    ("sdxl feed-forward out, level 2", 2048, 5120, 1280),
    ("sd3 q, k, v, out", 8192, 1536, 1536),
    ("sd3 feed-forward in", 8192, 1536, 6144),
    ("sd3 feed-forward out", 8192, 6144, 1536),
]


def microseconds(call, iters, repeats):
    for _ in range(5):
        call()
    timings = []
    for _ in range(repeats):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(iters):
            call()
        end.record()
        torch.cuda.synchronize()
        timings.append(begin.elapsed_time(end) * 1e3 / iters)
    return statistics.median(timings)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    e4m3 = torch.float8_e4m3fn
    rows_out = []
    for name, rows, width_in, width_out in SHAPES:
        x16 = torch.randn(rows, width_in, device="cuda", dtype=torch.float16)
        w16 = torch.randn(width_out, width_in, device="cuda", dtype=torch.float16)
        x8, w8 = (x16 * 0.1).to(e4m3), (w16 * 0.1).to(e4m3)
        one = torch.ones((), device="cuda")
        row_scales = torch.ones(rows, 1, device="cuda")
        column_scales = torch.ones(1, width_out, device="cuda")
        rows_out.append({
            "gemm": name, "rows": rows, "in": width_in, "out": width_out,
            "fp16_us": microseconds(lambda: x16 @ w16.t(), args.iters, args.repeats),
            "fp8_per_tensor_us": microseconds(
                lambda: torch._scaled_mm(x8, w8.t(), scale_a=one, scale_b=one, out_dtype=torch.float16),
                args.iters, args.repeats),
            "fp8_row_wise_us": microseconds(
                lambda: torch._scaled_mm(x8, w8.t(), scale_a=row_scales, scale_b=column_scales,
                                         out_dtype=torch.float16), args.iters, args.repeats),
        })
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "gemms": rows_out}, indent=1))


if __name__ == "__main__":
    main()
