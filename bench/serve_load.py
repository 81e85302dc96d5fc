#!/usr/bin/env python3
"""Throughput and latency of `hybridiff serve` under load, per placement policy, in one run.

For each policy (adaptive, all, one) a server is started with the given serve flags and warmed up; then, for each
client count C in --clients and each policy in turn, C clients each send --requests synchronous POST
/v1/images/generations requests back to back.
Prints JSON: per policy and client count the throughput (images/s) and the p50/p95 latency (s), then per client
count the ratio of the adaptive policy's throughput and p50 to the better fixed policy's.

    bench/serve_load.py --binary build/hybridiff --clients 1,2,4,8 --requests 4 -- --workers 2
    bench/serve_load.py --binary build/hybridiff --prompt "a red fox" --steps 30 --size 1024x1024 -- \\
        --model path/to/sdxl-folder --device cuda --dtype fp16 --parallel hybrid --devices cuda:0,cuda:1 --cuda-graphs
"""
import argparse
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time


def start(binary, flags):
    process = subprocess.Popen([binary, "serve", "--port", "0", "--log-level", "warn", *flags],
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline().strip()
    if not line.startswith("listening on http://"):
        process.kill()
        sys.exit("serve did not start: %r" % line)
    port = int(line.rsplit(":", 1)[1])
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        try:
            if call(port, "GET", "/readyz")[0] == 200:
                return process, port
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    sys.exit("serve was not ready within 30 minutes")


def call(port, method, path, body=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def percentile(values, fraction):
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def load(port, clients, requests, body):
    latencies, failures, lock = [], [], threading.Lock()

    def client(index):
        for request in range(requests):
            started = time.monotonic()
            status, payload = call(port, "POST", "/v1/images/generations",
                                   dict(body, seed=index * 1000 + request))
            with lock:
                (latencies if status == 200 else failures).append(
                    time.monotonic() - started if status == 200 else payload[:200])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - began
    if failures:
        sys.exit("requests failed: %s" % failures[:3])
    return {"images": len(latencies), "seconds": wall, "throughput_images_per_s": len(latencies) / wall,
            "latency_p50_s": statistics.median(latencies), "latency_p95_s": percentile(latencies, 0.95)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default="build/hybridiff")
    parser.add_argument("--clients", default="1,2,4,8")
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--policies", default="adaptive,all,one")
    parser.add_argument("--prompt", default="sneaker")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", help="WIDTHxHEIGHT (default: the model's)")
    parser.add_argument("serve_flags", nargs="*", help="after --: flags for hybridiff serve")
    args = parser.parse_args()
    body = {"prompt": args.prompt, "steps": args.steps}
    if args.size:
        body["size"] = args.size
    counts = [int(c) for c in args.clients.split(",")]
    report = {"serve_flags": args.serve_flags, "request": body, "requests_per_client": args.requests,
              "policies": {}}
    # Every policy's server runs from the start and the loads alternate between them (for each client count, each
    # policy in turn), so that a machine whose speed drifts over the run favours none of them.
    servers = {}
    try:
        for policy in args.policies.split(","):
            servers[policy] = start(args.binary, ["--placement", policy, "--max-queue", "1024", *args.serve_flags])
            # Warm-up: every group a load places requests on has run, so first-use costs (allocator, CUDA graphs)
            # stay out; last, one client's requests, as many as adaptive needs to measure each group size alone
            # after its first run (4, 2, 1), and to let the demand of the larger loads settle.
            for clients in sorted({1, 2, max(counts)}, reverse=True):
                load(servers[policy][1], clients, 6 if clients == 1 else 1, body)
        report["policies"] = {policy: {} for policy in servers}
        for clients in counts:
            for policy, (_, port) in servers.items():
                report["policies"][policy][str(clients)] = load(port, clients, args.requests, body)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(600)
    policies = report["policies"]
    if "adaptive" in policies and len(policies) > 1:
        report["adaptive_vs_best_fixed"] = {}
        for c in map(str, counts):
            fixed = [p for p in policies if p != "adaptive"]
            best = max(fixed, key=lambda p: policies[p][c]["throughput_images_per_s"])
            report["adaptive_vs_best_fixed"][c] = {
                "best_fixed": best,
                "throughput_ratio": policies["adaptive"][c]["throughput_images_per_s"] /
                                    policies[best][c]["throughput_images_per_s"],
                "p50_latency_ratio": policies["adaptive"][c]["latency_p50_s"] / policies[best][c]["latency_p50_s"]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
