#!/usr/bin/env python3
"""Black-box tests of `hybridiff serve` on the built-in model (CPU): the server is started on a free loopback port
and spoken to through Python's http.client, as any HTTP client would. Every wait is bounded.

    serve_test.py HYBRIDIFF_BINARY [unittest arguments, e.g. ServeTest.test_bad_input]
"""
import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

BINARY = None  # set from argv in __main__

# Few steps keep a CPU image fast. With so few steps a hybrid window cannot fit (the built-in detector falls back
# at step 25), so these requests run on one worker each; HYBRID_STEPS is the smallest count the window fits.
FAST_STEPS = 4
HYBRID_STEPS = 32


class Server:
    """One `hybridiff serve` process on 127.0.0.1 and a free port."""

    def __init__(self, *flags, log_level="warn", env=None, launcher=()):
        self.process = subprocess.Popen([BINARY, *launcher, "serve", "--port", "0", "--log-level", log_level,
                                         "--threads-per-worker", "1", *flags],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=dict(os.environ, **(env or {})))
        self.output = []  # every line it printed (the log goes to stdout), read as it comes: the pipe never fills
        self.port = None
        listening = threading.Event()

        def read_output():
            with self.process.stdout:
                for line in self.process.stdout:
                    self.output.append(line)
                    if line.startswith("listening on http://127.0.0.1:") and not listening.is_set():
                        self.port = int(line.strip().rsplit(":", 1)[1])
                        listening.set()

        self.reader = threading.Thread(target=read_output, daemon=True)
        self.reader.start()
        if not listening.wait(60):
            self.process.kill()
            raise AssertionError("serve did not start: %s" % "".join(self.output))
        self.wait_ready()

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, _, _ = self.call("GET", "/readyz")
            if status == 200:
                return
            time.sleep(0.1)
        raise AssertionError("not ready within %d s" % timeout)

    def call(self, method, path, body=None, timeout=300, raw=False):
        """(status, headers, JSON body or text)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
            connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            text = response.read().decode()
            headers = dict(response.getheaders())
            if raw or "application/json" not in headers.get("Content-Type", ""):
                return response.status, headers, text
            return response.status, headers, json.loads(text)
        finally:
            connection.close()

    def job(self, job_id):
        status, _, body = self.call("GET", "/v1/jobs/" + job_id)
        assert status == 200, body
        return body

    def wait_job(self, job_id, until, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.job(job_id)
            if until(body):
                return body
            time.sleep(0.05)
        raise AssertionError("job %s: condition not reached within %d s: %s" % (job_id, timeout, body))

    def metric(self, line_prefix):
        _, _, text = self.call("GET", "/metrics")
        for line in text.splitlines():
            if line.startswith(line_prefix + " "):
                return float(line.split()[-1])
        raise AssertionError("no metric %r in:\n%s" % (line_prefix, text))

    def stop(self, sig=signal.SIGTERM, timeout=120):
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError("serve did not exit within %d s of signal %d" % (timeout, sig))
        finally:
            self.reader.join(10)


def generate_png(*flags):
    """`hybridiff generate` into a temporary PNG; its bytes. One intra-op thread, as the servers here run each
    worker with (--threads-per-worker 1): the same reductions in the same order, so the same pixels."""
    with tempfile.TemporaryDirectory() as folder:
        output = os.path.join(folder, "image.png")
        done = subprocess.run([BINARY, "generate", "--output", output, "--progress", "never", "--log-level", "warn",
                               *flags], capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert done.returncode == 0, done.stderr
        with open(output, "rb") as png:
            return png.read()


class ServeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server()

    @classmethod
    def tearDownClass(cls):
        status = cls.server.stop()
        assert status == 0, "serve exited with %d" % status

    def test_health_readiness_and_metrics(self):
        status, _, body = self.server.call("GET", "/healthz")
        self.assertEqual((status, body["status"]), (200, "ok"))
        status, _, body = self.server.call("GET", "/readyz")
        self.assertEqual(status, 200)
        self.assertEqual(body["model"], "HybridiffClassConditionalPipeline")
        self.assertEqual(body["workers"], 2)
        self.assertEqual(body["placement"], "adaptive")
        status, headers, text = self.server.call("GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["Content-Type"].startswith("text/plain"))
        for name in ("hybridiff_queue_depth", "hybridiff_requests_total", "hybridiff_image_seconds_bucket",
                     "hybridiff_step_seconds_count", "hybridiff_worker_busy_seconds_total", "hybridiff_workers"):
            self.assertIn(name, text)
        status, _, body = self.server.call("GET", "/v1/nothing")
        self.assertEqual(status, 404)
        self.assertIn("no route", body["error"]["message"])

    def test_an_idle_service_spreads_one_image_over_every_worker_as_generate_does(self):
        status, _, body = self.server.call("POST", "/v1/images/generations",
                                           {"prompt": "sneaker", "seed": 3, "steps": HYBRID_STEPS,
                                            "response_format": "b64_json", "model": "hybridiff"})
        self.assertEqual(status, 200, body)
        self.assertEqual(len(body["data"]), 1)
        self.assertEqual(body["hybridiff"]["workers"], 2)
        self.assertEqual(body["hybridiff"]["mode"], "hybrid")
        served = base64.b64decode(body["data"][0]["b64_json"])
        self.assertEqual(served[:8], b"\x89PNG\r\n\x1a\n")
        # The same seed through the command line (hybrid on 2 workers, the built-in default): the same pixels.
        self.assertEqual(served, generate_png("--prompt", "sneaker", "--seed", "3", "--steps", str(HYBRID_STEPS)))

    def test_a_short_request_runs_on_one_worker_as_generate_none_does(self):
        status, _, body = self.server.call("POST", "/v1/images/generations",
                                           {"prompt": "bag", "seed": 11, "steps": FAST_STEPS, "n": 2})
        self.assertEqual(status, 200, body)
        self.assertEqual((body["hybridiff"]["workers"], body["hybridiff"]["mode"]), (1, "none"))
        self.assertEqual(len(body["data"]), 2)
        for i, image in enumerate(body["data"]):  # image i uses seed + i
            expected = generate_png("--prompt", "bag", "--seed", str(11 + i), "--steps", str(FAST_STEPS),
                                    "--parallel", "none")
            self.assertEqual(base64.b64decode(image["b64_json"]), expected)

    def test_bad_input_is_a_400_naming_the_field(self):
        cases = [
            ("{not json", None, "not valid JSON"),
            ("[1, 2]", None, "JSON object"),
            ({"n": 1}, "prompt", "required"),
            ({"prompt": ""}, "prompt", "non-empty"),
            ({"prompt": "bag", "colour": "red"}, "colour", "unknown field"),
            ({"prompt": "bag", "steps": "many"}, "steps", "integer"),
            ({"prompt": "bag", "steps": 0}, "steps", "outside"),
            ({"prompt": "bag", "steps": 5000}, "steps", "outside"),
            ({"prompt": "bag", "guidance": "high"}, "guidance", "number"),
            ({"prompt": "bag", "seed": -1}, "seed", "non-negative"),
            ({"prompt": "bag", "size": "big"}, "size", "WIDTHxHEIGHT"),
            ({"prompt": "bag", "size": "33x32"}, "size", "multiple"),
            ({"prompt": "bag", "size": "100000x100000"}, "size", "limit"),
            ({"prompt": "bag", "n": 0}, "n", "outside"),
            ({"prompt": "bag", "n": 1000}, "n", "outside"),
            ({"prompt": "bag", "response_format": "url"}, "response_format", "b64_json"),
            ({"prompt": "bag", "scheduler": "magic"}, "scheduler", "euler"),
            ({"prompt": "giraffe"}, "prompt", "not a class"),
            ({"prompt": "bag", "negative_prompt": "giraffe"}, "prompt", "not a class"),
        ]
        for body, field, words in cases:
            for path in ("/v1/images/generations", "/v1/jobs"):
                status, _, answer = self.server.call("POST", path, body)
                self.assertEqual(status, 400, (body, answer))
                self.assertIn(words, answer["error"]["message"], body)
                self.assertEqual(answer["error"]["param"], field, body)
        # Nothing was harmed: a good request still works.
        status, _, body = self.server.call("POST", "/v1/images/generations", {"prompt": "bag", "steps": FAST_STEPS})
        self.assertEqual(status, 200, body)

    def test_jobs_report_progress_and_trace_and_cancel_at_a_step_boundary(self):
        status, _, body = self.server.call("POST", "/v1/jobs", {"prompt": "coat", "steps": FAST_STEPS, "seed": 5})
        self.assertEqual(status, 202, body)
        done = self.server.wait_job(body["id"], lambda job: job["status"] == "succeeded")
        self.assertEqual(done["progress"], {"image": 1, "images": 1, "step": FAST_STEPS, "steps": FAST_STEPS})
        self.assertEqual(len(done["trace"]), FAST_STEPS)
        self.assertEqual(done["placement"]["workers"], 1)
        self.assertEqual(base64.b64decode(done["data"][0]["b64_json"])[:4], b"\x89PNG")
        status, _, _ = self.server.call("DELETE", "/v1/jobs/" + body["id"])
        self.assertEqual(status, 409)  # it has ended

        status, _, body = self.server.call("POST", "/v1/jobs", {"prompt": "coat", "steps": 1000})
        self.assertEqual(status, 202, body)
        self.server.wait_job(body["id"], lambda job: job["status"] == "running" and job["progress"]["step"] >= 1)
        status, _, answer = self.server.call("DELETE", "/v1/jobs/" + body["id"])
        self.assertEqual((status, answer["status"]), (200, "cancelling"))
        cancelled = self.server.wait_job(body["id"], lambda job: job["status"] != "running", timeout=60)
        self.assertEqual(cancelled["status"], "cancelled")
        self.assertLess(cancelled["progress"]["step"], 1000)
        for method in ("GET", "DELETE"):
            status, _, answer = self.server.call(method, "/v1/jobs/img-nonexistent")
            self.assertEqual(status, 404)
            self.assertEqual(answer["error"]["param"], "id")


class QueueTest(unittest.TestCase):
    def test_a_full_queue_answers_429_with_retry_after(self):
        server = Server("--max-queue", "1", "--placement", "all")
        try:
            slow = {"prompt": "dress", "steps": 1000}  # guided: placement "all" gives it both workers
            first = server.call("POST", "/v1/jobs", slow)[2]["id"]
            server.wait_job(first, lambda job: job["status"] == "running")
            second = server.call("POST", "/v1/jobs", slow)[2]["id"]
            server.wait_job(second, lambda job: job["status"] == "queued")
            status, headers, body = server.call("POST", "/v1/jobs", slow)
            self.assertEqual(status, 429, body)
            self.assertEqual(headers["Retry-After"], "1")
            self.assertEqual(server.metric('hybridiff_requests_total{status="rejected"}'), 1)
            self.assertEqual(server.metric("hybridiff_queue_depth"), 1)
            for job_id in (second, first):
                self.assertEqual(server.call("DELETE", "/v1/jobs/" + job_id)[0], 200)
            self.assertEqual(server.wait_job(second, lambda job: job["status"] != "queued")["status"], "cancelled")
        finally:
            self.assertEqual(server.stop(), 0)

    def test_sigterm_drains_finishes_the_running_request_and_exits_0(self):
        server = Server(log_level="info")
        answers = {}

        def generate(name, body):
            answers[name] = server.call("POST", "/v1/images/generations", body)

        running = threading.Thread(target=generate, args=("running", {"prompt": "shirt", "steps": 60, "guidance": 1.0,
                                                                      "n": 2}))
        running.start()
        # The first request of a fresh server is img-00000001: wait until it runs (404 until it is submitted).
        deadline = time.monotonic() + 60
        while server.call("GET", "/v1/jobs/img-00000001")[2].get("status") != "running":
            self.assertLess(time.monotonic(), deadline, "the request did not start")
            time.sleep(0.05)
        queued = server.call("POST", "/v1/jobs", {"prompt": "shirt", "steps": 60, "guidance": 1.0})[2]["id"]
        server.wait_job(queued, lambda job: job["status"] == "running")  # the second worker takes it
        third = server.call("POST", "/v1/jobs", {"prompt": "shirt", "steps": 60, "guidance": 1.0})[2]["id"]
        self.assertEqual(server.job(third)["status"], "queued")
        self.assertEqual(server.stop(signal.SIGTERM, timeout=300), 0)
        running.join(60)
        status, _, body = answers["running"]
        self.assertEqual(status, 200, body)
        self.assertEqual(len(body["data"]), 2)
        self.assertIn("draining", "".join(server.output))


class LoadTest(unittest.TestCase):
    def test_200_requests_from_8_clients_are_each_answered_once(self):
        server = Server("--max-queue", "256")
        try:
            results, lock = [], threading.Lock()

            def client(index):
                for request in range(25):
                    seed = index * 100 + request
                    status, _, body = server.call("POST", "/v1/images/generations",
                                                  {"prompt": "sandal", "steps": 2, "seed": seed})
                    with lock:
                        results.append((seed, status, body.get("hybridiff", {}).get("id")))

            clients = [threading.Thread(target=client, args=(i,)) for i in range(8)]
            for thread in clients:
                thread.start()
            for thread in clients:
                thread.join(600)
                self.assertFalse(thread.is_alive(), "a client did not finish within 600 s")
            self.assertEqual(len(results), 200)
            self.assertEqual([r for r in results if r[1] != 200], [])
            self.assertEqual(len({r[2] for r in results}), 200)  # every request its own job, answered once
            self.assertEqual(len({r[0] for r in results}), 200)
            self.assertEqual(server.metric('hybridiff_requests_total{status="succeeded"}'), 200)
            self.assertEqual(server.metric("hybridiff_image_seconds_count"), 200)
            self.assertEqual(server.metric("hybridiff_queue_depth"), 0)
        finally:
            self.assertEqual(server.stop(), 0)


class LoraTest(unittest.TestCase):
    """Requests naming a LoRA of the service's (--request-lora) on tiny-sdxl (HYBRIDIFF_TEST_TINY_SDXL), with a LoRA
    made by diffusers and PEFT (HYBRIDIFF_TEST_LORA): merged for them, restored exactly for the others."""

    def test_a_request_lora_is_swapped_in_and_out_as_generate_merges_it(self):
        model, lora = os.environ["HYBRIDIFF_TEST_TINY_SDXL"], os.environ["HYBRIDIFF_TEST_LORA"]
        server = Server("--model", model, "--request-lora", "style=" + lora)
        try:
            common = {"prompt": "a red fox", "seed": 5, "steps": 4, "size": "32x32"}

            def image(**extra):
                status, _, body = server.call("POST", "/v1/images/generations", dict(common, **extra))
                self.assertEqual(status, 200, body)
                return base64.b64decode(body["data"][0]["b64_json"])

            plain = image()
            styled = image(loras=[{"name": "style", "scale": 0.7}])
            self.assertEqual(image(), plain)  # the loaded weights came back exactly
            self.assertNotEqual(styled, plain)
            flags = ["--model", model, "--prompt", "a red fox", "--seed", "5", "--steps", "4", "--height", "32",
                     "--width", "32"]
            self.assertEqual(plain, generate_png(*flags))
            self.assertEqual(styled, generate_png(*flags, "--lora", lora + ":0.7"))
            # The job's record names it; an unknown name is a 400 naming the field and the service's LoRAs.
            status, _, job = server.call("POST", "/v1/jobs", dict(common, loras=[{"name": "style"}]))
            self.assertEqual(status, 202, job)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                _, _, record = server.call("GET", "/v1/jobs/" + job["id"])
                if record["status"] not in ("queued", "running"):
                    break
                time.sleep(0.05)
            self.assertEqual(record["status"], "succeeded", record)
            self.assertEqual(record["loras"], [{"name": "style", "scale": 1.0}])
            for loras, expected in (([{"name": "nope"}], "no LoRA named 'nope' (the service's LoRAs: style)"),
                                    ([{"name": "style", "scale": "big"}], "must be a finite number"),
                                    ({"name": "style"}, "must be a list")):
                status, _, body = server.call("POST", "/v1/images/generations", dict(common, loras=loras))
                self.assertEqual((status, body["error"]["param"]), (400, "loras"), body)
                self.assertIn(expected, body["error"]["message"])
        finally:
            self.assertEqual(server.stop(), 0)

    def test_float8_weights_take_no_request_loras(self):
        # Swapping needs weights it can restore exactly: a usage error before anything loads.
        done = subprocess.run([BINARY, "serve", "--model", os.environ["HYBRIDIFF_TEST_TINY_SDXL"], "--dtype", "fp8",
                               "--request-lora", "style=" + os.environ["HYBRIDIFF_TEST_LORA"]],
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn("--request-lora needs weights it can swap back", done.stderr)


def rank_environment(rank, port):
    """What a cluster's launcher gives each process of a 2-process run (torchrun's variables)."""
    return {"RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MultiProcessTest(unittest.TestCase):
    """A pool over two processes started by hand, as a cluster's launcher starts them: rank 0 serves HTTP and runs
    worker 0, rank 1's worker joins its pool over the CPU transport."""

    def start(self, *worker_flags, placement="adaptive"):
        port = free_port()
        self.worker_rank = subprocess.Popen([BINARY, "serve", "--log-level", "info", "--threads-per-worker", "1",
                                             *worker_flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            text=True, env=dict(os.environ, **rank_environment(1, port)))
        try:
            self.server = Server("--placement", placement, log_level="info", env=rank_environment(0, port))
        except BaseException:
            self.worker_rank.kill()
            raise

    def stop(self):
        """Both processes' exit statuses after SIGTERM to rank 0 (rank 1 leaves when rank 0 ends the run)."""
        status = self.server.stop()
        try:
            output, _ = self.worker_rank.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.worker_rank.kill()
            raise AssertionError("rank 1 did not exit within 60 s of rank 0")
        return status, self.worker_rank.returncode, output

    def generate(self, body):
        status, _, answer = self.server.call("POST", "/v1/images/generations", body)
        self.assertEqual(status, 200, answer)
        return answer["hybridiff"], base64.b64decode(answer["data"][0]["b64_json"])

    def test_rank_1s_worker_joins_the_pool_alone_and_with_worker_0(self):
        self.start()
        try:
            status, _, ready = self.server.call("GET", "/readyz")
            self.assertEqual((status, ready["workers"]), (200, 2))
            # Alone, a request spreads over both processes: the pixels of generate's hybrid run in one process.
            placement, image = self.generate({"prompt": "sneaker", "seed": 3, "steps": HYBRID_STEPS})
            self.assertEqual((placement["workers"], placement["worker_ids"], placement["mode"]), (2, [0, 1], "hybrid"))
            self.assertEqual(image, generate_png("--prompt", "sneaker", "--seed", "3", "--steps", str(HYBRID_STEPS)))
            # With worker 0 busy, requests run on rank 1's worker alone (rank 0 encodes, decodes and samples):
            # guided and unguided, the pixels of generate --parallel none.
            busy = self.server.call("POST", "/v1/jobs", {"prompt": "coat", "steps": 1000, "guidance": 1.0})[2]["id"]
            self.server.wait_job(busy, lambda job: job["status"] == "running")
            self.assertEqual(self.server.job(busy)["placement"]["worker_ids"], [0])
            for guidance in (None, 1.0):
                body = {"prompt": "bag", "seed": 7, "steps": FAST_STEPS}
                flags = ["--prompt", "bag", "--seed", "7", "--steps", str(FAST_STEPS), "--parallel", "none"]
                if guidance is not None:
                    body["guidance"] = guidance
                    flags += ["--guidance", str(guidance)]
                placement, image = self.generate(body)
                self.assertEqual((placement["worker_ids"], placement["mode"]), ([1], "none"))
                self.assertEqual(image, generate_png(*flags))
            self.assertEqual(self.server.call("DELETE", "/v1/jobs/" + busy)[0], 200)
            self.assertEqual(self.server.metric("hybridiff_workers_lost"), 0)
        finally:
            server_status, worker_status, output = self.stop()
        self.assertEqual(server_status, 0, "".join(self.server.output))
        self.assertEqual(worker_status, 0, output)
        self.assertIn("rank 1: rank 0 ended the service", output)

    def test_a_worker_rank_killed_mid_request_leaves_a_service_of_the_others(self):
        # rank 1 dies at its 10th step request. Placement "all": once rank 1 is lost, "all" is worker 0.
        self.start("--debug-kill-after", "10", placement="all")
        try:
            status, _, answer = self.server.call("POST", "/v1/images/generations",
                                                 {"prompt": "sneaker", "seed": 3, "steps": HYBRID_STEPS})
            # The image was finished by worker 0 (supervision) from the step that failed on.
            self.assertEqual(status, 200, answer)
            self.assertEqual(answer["hybridiff"]["workers"], 2)
            trace = self.server.job(answer["hybridiff"]["id"])["trace"]
            self.assertIn("cfg-degraded", [row["mode"] for row in trace])
            self.assertEqual(self.worker_rank.wait(60), -signal.SIGKILL)
            deadline = time.monotonic() + 30  # the loss reaches the queue as the proxy's down message
            while self.server.metric("hybridiff_workers_lost") != 1:
                self.assertLess(time.monotonic(), deadline, "the lost worker was not counted")
                time.sleep(0.1)
            # The service goes on with worker 0: every later request runs there, whatever its size.
            for seed in (1, 2):
                placement, _ = self.generate({"prompt": "sneaker", "seed": seed, "steps": HYBRID_STEPS})
                self.assertEqual((placement["worker_ids"], placement["mode"]), ([0], "none"))
            self.assertEqual(self.server.call("GET", "/readyz")[0], 200)
        finally:
            server_status = self.server.stop()
            self.worker_rank.kill()
            self.worker_rank.communicate(timeout=60)
        self.assertEqual(server_status, 0, "".join(self.server.output))
        self.assertIn("was lost", "".join(self.server.output))

    def test_launch_runs_the_ranks_and_exits_0_once_they_drained(self):
        server = Server(log_level="info", launcher=("launch", "--nproc", "2", "--master-port", str(free_port()), "--"))
        try:
            self.assertEqual(server.call("GET", "/readyz")[2]["workers"], 2)
            status, _, body = server.call("POST", "/v1/images/generations",
                                          {"prompt": "bag", "seed": 1, "steps": HYBRID_STEPS})
            self.assertEqual((status, body["hybridiff"]["worker_ids"]), (200, [0, 1]), body)
        finally:
            status = server.stop()  # launch forwards SIGTERM to both ranks
        self.assertEqual(status, 0, "".join(server.output))
        self.assertIn("rank 1: rank 0 ended the service", "".join(server.output))

    def test_per_request_loras_need_one_process(self):
        done = subprocess.run([BINARY, "serve", "--request-lora", "style=style.safetensors"], capture_output=True,
                              text=True, timeout=60, env=dict(os.environ, **rank_environment(0, free_port())))
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn("--request-lora needs every worker in one process", done.stderr)


if __name__ == "__main__":
    BINARY = sys.argv.pop(1)
    unittest.main(verbosity=2)
