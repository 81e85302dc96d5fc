#!/usr/bin/env python3
"""The schedule lab's cost model against measured generations, in one run.

`hybridiff bench --run ...` runs every given schedule twice, as two independent sets: the first set's per-mode
median step times become a cost profile (`--cost-profile`), which then prices each run of the second set by the
steps it actually ran (its phases and their step counts). Prints JSON: per run the predicted and the measured
denoising time and their ratio (1.0 = exact).

    bench/cost_model_check.py --binary build/hybridiff -- --model-config CONFIGS/sdxl-unet \\
        --scheduler-config CONFIGS/sdxl-scheduler --dtype fp16 --steps 50 --warmup 1 \\
        --run "none" --run "cfg --devices cuda:0,cuda:0" --run "asyncdiff --warmup 5 --devices cuda:0,cuda:0" \\
        --run "hybrid --tau1 13 --tau2 17 --devices cuda:0,cuda:0"
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def bench(binary, flags, profile=None):
    extra = ["--cost-profile", profile] if profile else []
    done = subprocess.run([binary, "bench", "--log-level", "warn", *flags, *extra], stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit("bench exited %d" % done.returncode)
    return json.loads(done.stdout[done.stdout.index("{\n"):])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True, help="the hybridiff binary")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="-- then bench's flags (with every --run)")
    args = parser.parse_args()
    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
    with tempfile.TemporaryDirectory() as folder:
        profile_path = os.path.join(folder, "profile.json")
        bench(args.binary, flags, profile_path)
        with open(profile_path) as file:
            profile = json.load(file)
    checked = bench(args.binary, flags)
    rows = []
    for run in checked["runs"]:
        workers = str(run["workers"])
        predicted = sum(stats["steps"] * profile["step_ms"][mode][workers] for mode, stats in run["phases"].items())
        measured = run["generation_ms"]
        rows.append({"run": run["run"], "workers": run["workers"], "predicted_ms": round(predicted, 2),
                     "measured_ms": round(measured, 2), "predicted_over_measured": round(predicted / measured, 3)})
    print(json.dumps({"model": checked.get("model"), "dtype": checked.get("dtype"), "steps": checked.get("steps"),
                      "profile": profile["step_ms"], "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
