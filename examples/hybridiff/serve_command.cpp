// hybridiff serve: the image service (actors/image_service.hpp) behind an HTTP API shaped as OpenAI's Images API,
// with an asynchronous job API, health and readiness probes and Prometheus metrics (cpp-httplib).
#include <openssl/evp.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <thread>

#include <httplib.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "actors/image_service.hpp"
#include "cli.hpp"
#include "generation_setup.hpp"

namespace hybridiff::cli {
namespace {

using json = nlohmann::json;

std::string base64(const std::vector<std::uint8_t>& bytes) {
  std::string text(4 * ((bytes.size() + 2) / 3), '\0');
  const int written =
      EVP_EncodeBlock(reinterpret_cast<unsigned char*>(text.data()), bytes.data(), static_cast<int>(bytes.size()));
  text.resize(static_cast<std::size_t>(written));
  return text;
}

// An error body as OpenAI's API writes it.
void reply_error(httplib::Response& response, int status, const std::string& message, const std::string& field = "",
                 const std::string& type = "invalid_request_error") {
  response.status = status;
  json body = {{"error", {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}}}};
  if (!field.empty()) body["error"]["param"] = field;
  response.set_content(body.dump(), "application/json");
}

void reply_json(httplib::Response& response, int status, const json& body) {
  response.status = status;
  response.set_content(body.dump(), "application/json");
}

// A request body that is not what the API takes; `field` names the offending field.
struct bad_request {
  std::string message, field;
};

// The LoRAs requests may name (--request-lora NAME=FILE), by name.
using lora_library = std::map<std::string, std::filesystem::path>;

// A parsed generation request.
struct generation_body {
  models::generation_request request;
  int images = 1;
  std::vector<request_lora> loras;
};

// "loras": [{"name": NAME, "scale": S}, ...], each NAME in `library` (scale 1 when left out).
std::vector<request_lora> parse_loras(const json& value, const lora_library& library) {
  std::string names;
  for (const auto& [name, file] : library) names += (names.empty() ? "" : ", ") + name;
  const std::string available = library.empty() ? "this service takes no LoRAs (serve --request-lora NAME=FILE)"
                                                : "the service's LoRAs: " + names;
  if (!value.is_array()) throw bad_request{"'loras' must be a list of {\"name\": NAME, \"scale\": S}", "loras"};
  std::vector<request_lora> loras;
  for (const auto& item : value) {
    if (!item.is_object() || !item.contains("name") || !item["name"].is_string())
      throw bad_request{"each of 'loras' must be an object with a \"name\" (and a \"scale\")", "loras"};
    const auto name = item["name"].get<std::string>();
    auto found = library.find(name);
    if (found == library.end()) throw bad_request{"'loras': no LoRA named '" + name + "' (" + available + ")", "loras"};
    double scale = 1.0;
    for (const auto& [key, field] : item.items()) {
      if (key == "scale") {
        if (!field.is_number() || !std::isfinite(field.get<double>()))
          throw bad_request{"'loras': the scale of '" + name + "' must be a finite number", "loras"};
        scale = field.get<double>();
      } else if (key != "name") {
        throw bad_request{"'loras': unknown field '" + key + "' (name, scale)", "loras"};
      }
    }
    loras.push_back({name, {found->second, scale}});
  }
  return loras;
}

// POST /v1/images/generations and /v1/jobs: OpenAI's fields (prompt, n, size, response_format, model, user) and
// ours (negative_prompt, steps, guidance, seed, scheduler, loras), over `defaults` (the command line's sampling
// options). Anything else is refused by name.
generation_body parse_generation(const std::string& body, const models::generation_request& defaults,
                                 const lora_library& library) {
  json values;
  try {
    values = json::parse(body);
  } catch (const json::parse_error& bad) {
    throw bad_request{std::string("the body is not valid JSON: ") + bad.what(), ""};
  }
  if (!values.is_object()) throw bad_request{"the body must be a JSON object", ""};
  generation_body parsed{defaults};
  auto& request = parsed.request;
  int& images = parsed.images;
  auto need = [](bool ok, const std::string& field, const std::string& what) {
    if (!ok) throw bad_request{"'" + field + "' must be " + what, field};
  };
  if (!values.contains("prompt")) throw bad_request{"'prompt' is required", "prompt"};
  for (const auto& [field, value] : values.items()) {
    if (field == "prompt") {
      need(value.is_string() && !value.get<std::string>().empty(), field, "a non-empty string");
      request.prompt = value.get<std::string>();
    } else if (field == "negative_prompt") {
      need(value.is_string(), field, "a string");
      request.negative_prompt = value.get<std::string>();
    } else if (field == "n") {
      need(value.is_number_integer(), field, "an integer");
      images = static_cast<int>(std::clamp<std::int64_t>(value.get<std::int64_t>(), -1, 1 << 20));
    } else if (field == "size") {
      need(value.is_string(), field, "a string \"WIDTHxHEIGHT\", e.g. \"1024x1024\"");
      const auto text = value.get<std::string>();
      const auto x = text.find('x');
      std::size_t used_width = 0, used_height = 0;
      std::int64_t width = 0, height = 0;
      try {
        if (x == std::string::npos) throw std::invalid_argument(text);
        width = std::stoll(text.substr(0, x), &used_width);
        height = std::stoll(text.substr(x + 1), &used_height);
      } catch (const std::exception&) {
        used_width = 0;
      }
      need(used_width == x && used_height == text.size() - x - 1 && width > 0 && height > 0, field,
           "\"WIDTHxHEIGHT\" with positive integers, e.g. \"1024x1024\", not \"" + text + "\"");
      request.width = width;
      request.height = height;
    } else if (field == "response_format") {
      need(value.is_string() && value.get<std::string>() == "b64_json", field,
           "\"b64_json\" (images are returned inline; no URLs are served)");
    } else if (field == "model" || field == "user") {
      need(value.is_string(), field, "a string");  // accepted for OpenAI clients; the service runs one model
    } else if (field == "steps") {
      need(value.is_number_integer(), field, "an integer");
      request.steps = value.get<std::int64_t>();
    } else if (field == "guidance") {
      need(value.is_number(), field, "a number");
      request.guidance = value.get<double>();
    } else if (field == "seed") {
      need(value.is_number_unsigned() || (value.is_number_integer() && value.get<std::int64_t>() >= 0), field,
           "a non-negative integer");
      request.seed = value.get<std::uint64_t>();
    } else if (field == "scheduler") {
      const auto names = models::sampler_names();
      need(value.is_string() && std::find(names.begin(), names.end(), value.get<std::string>()) != names.end(), field,
           "one of euler, ddim, dpm++2m, flow-euler");
      request.sampler = value.get<std::string>();
    } else if (field == "loras") {
      parsed.loras = parse_loras(value, library);
    } else {
      throw bad_request{"unknown field '" + field +
                            "' (fields: prompt, n, size, response_format, model, user, negative_prompt, steps, "
                            "guidance, seed, scheduler, loras)",
                        field};
    }
  }
  return parsed;
}

json trace_json(const std::vector<step_trace>& trace) {
  json rows = json::array();
  for (const auto& row : trace) {
    json entry = {{"step", row.step}, {"mode", row.mode}, {"worker_ms", row.worker_ms}};
    if (row.metric) entry["rel_mae"] = *row.metric;
    if (row.slope) entry["slope"] = *row.slope;
    rows.push_back(entry);
  }
  return rows;
}

json images_json(const job_record& record) {
  json data = json::array();
  for (const auto& png : record.png) data.push_back({{"b64_json", base64(png)}});
  return data;
}

// What a job's record says about its schedule: placement, taus, timing.
json placement_json(const job_record& record) {
  json about = {{"id", record.id},
                {"workers", record.workers},
                {"worker_ids", record.worker_ids},
                {"mode", record.mode},
                {"queued_seconds", record.queued_seconds},
                {"run_seconds", record.run_seconds}};
  if (record.tau1) about["tau1"] = *record.tau1;
  if (record.tau2) about["tau2"] = *record.tau2;
  return about;
}

json job_json(const job_record& record) {
  json body = {
      {"id", record.id},
      {"object", "image.job"},
      {"status", to_string(record.status)},
      {"created", std::chrono::duration_cast<std::chrono::seconds>(record.created.time_since_epoch()).count()},
      {"progress",
       {{"image", record.images_done}, {"images", record.images}, {"step", record.step}, {"steps", record.steps}}},
      {"placement", placement_json(record)},
      {"loras", json::array()},
      {"trace", trace_json(record.trace)}};
  for (const auto& lora : record.loras) body["loras"].push_back({{"name", lora.name}, {"scale", lora.spec.scale}});
  if (!record.error.empty()) body["error"] = {{"message", record.error}};
  if (record.status == job_status::succeeded) body["data"] = images_json(record);
  return body;
}

// The HTTP status of a request that ended without images.
int status_of_failure(const job_record& record) {
  if (record.workers_lost) return 503;
  if (record.error.rfind("timed out", 0) == 0) return 504;
  if (record.status == job_status::cancelled) return record.error == "the service is shutting down" ? 503 : 409;
  return 500;
}

// A worker rank of a service spread over several processes: its replica (the denoiser alone: rank 0 encodes and
// decodes) joins rank 0's pool until rank 0 ends the run. SIGTERM and SIGINT do not stop it early: rank 0 drains
// first, and its running requests may need this worker; rank 0's end (or loss) ends this process.
int serve_worker_rank(const generation_setup& setup) {
  const stop_signals signals;
  auto placement = setup.placement;
  placement.device = setup.devices.front();
  auto replica = models::load_pipeline(setup.model_dir, placement, models::pipeline_parts::denoiser);
  actors::process_run this_process(setup.process, setup.cluster);
  this_process.serve(std::move(replica));
  spdlog::info("rank {}: rank 0 ended the service{}", setup.process.rank,
               signals.requested() ? " (after a stop signal, which waits for rank 0's drain)" : "");
  return 0;
}

}  // namespace

int run_serve(const std::vector<std::string>& args) {
  command_line line;
  line.name = "serve";
  line.usage = "hybridiff serve [--model DIR] [--host H] [--port P] [options]";
  line.summary =
      "Serves images over HTTP: OpenAI's POST /v1/images/generations (b64_json), an asynchronous job API (POST\n"
      "/v1/jobs, GET and DELETE /v1/jobs/ID), GET /healthz, GET /readyz (ready once the model is loaded) and GET\n"
      "/metrics (Prometheus). The model is loaded once, with one replica per worker; requests wait in a bounded\n"
      "queue (full: 429 with Retry-After) and a placement policy gives each request a group of workers: alone it\n"
      "runs on all of them with --parallel's schedule (adaptive: where that measured faster), side by side with\n"
      "others on fewer (cfg on 2, none on 1). Started as several processes (launch, SLURM, ...), rank 0 serves\n"
      "HTTP and every rank runs one worker of the pool.\n"
      "The options of generate (model, sampling, schedule) set the defaults of every request; a request may name\n"
      "LoRAs given with --request-lora, swapped in and out of the loaded weights. SIGTERM or SIGINT\n"
      "drains: no new requests, the queued ones are cancelled, the running ones finish, then exit 0.";
  po::options_description service_flags("Service");
  // clang-format off
  service_flags.add_options()
      ("host", po::value<std::string>()->default_value("127.0.0.1")->value_name("H"), "address to listen on")
      ("port", po::value<int>()->default_value(8080)->value_name("P"), "port to listen on (0: any free port; the "
       "first line on stdout names it)")
      ("placement", po::value<std::string>()->default_value("adaptive")->value_name("POLICY"),
       "how many workers a request gets: adaptive (the idle workers shared among the waiting requests, refined "
       "by measured step times), all "
       "(every request on all workers) or one (every request on one worker)")
      ("max-queue", po::value<int>()->default_value(32)->value_name("N"), "requests that may wait; more get 429")
      ("request-timeout", po::value<double>()->default_value(600)->value_name("S"),
       "seconds from submission to the last step; later requests fail (504)")
      ("max-images", po::value<int>()->default_value(8)->value_name("N"), "the largest n of a request")
      ("request-lora", po::value<std::vector<std::string>>()->value_name("NAME=FILE"),
       "a LoRA that requests may name (\"loras\": [{\"name\": NAME, \"scale\": S}]; repeatable): merged into the "
       "weights of the workers that run such a request and restored exactly after, without reloading the model; "
       "each is checked against the model at start; not with --dtype fp8")
      ("http-threads", po::value<int>()->default_value(16)->value_name("N"), "threads answering HTTP requests "
       "(clients served at once; a synchronous generation holds one until its image is done)");
  // clang-format on
  line.options.add(service_flags);
  for (const auto& group : generation_options()) line.options.add(group);
  auto parsed = parse(line, args);
  if (!parsed) return 0;
  const auto& values = *parsed;
  auto setup = settle_generation(values);
  const int port = values["port"].as<int>();
  if (port < 0 || port > 65535) throw usage_error("--port " + std::to_string(port) + " is outside [0, 65535]");
  const int max_queue = values["max-queue"].as<int>(), max_images = values["max-images"].as<int>();
  const int http_threads = values["http-threads"].as<int>();
  if (max_queue < 1 || max_images < 1 || http_threads < 1)
    throw usage_error("--max-queue, --max-images and --http-threads must be at least 1");
  const double timeout_seconds = values["request-timeout"].as<double>();
  if (!(timeout_seconds > 0)) throw usage_error("--request-timeout must be positive");
  std::unique_ptr<placement_policy> policy;
  try {
    policy = make_placement_policy(values["placement"].as<std::string>());
  } catch (const invalid_options& bad) {
    throw usage_error(bad.what());
  }
  const auto request_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(timeout_seconds * 1000));
  lora_library library;
  if (values.count("request-lora"))
    for (const auto& text : values["request-lora"].as<std::vector<std::string>>()) {
      const auto equals = text.find('=');
      if (equals == std::string::npos || equals == 0 || equals + 1 == text.size())
        throw usage_error("--request-lora '" + text + "': use NAME=FILE");
      if (!library.emplace(text.substr(0, equals), text.substr(equals + 1)).second)
        throw usage_error("--request-lora: the name '" + text.substr(0, equals) + "' is given twice");
    }
  if (setup.distributed && !library.empty())
    throw usage_error("--request-lora needs every worker in one process (--workers with --devices); this is rank " +
                      std::to_string(setup.process.rank) + " of WORLD_SIZE " +
                      std::to_string(setup.process.world_size));
  if (setup.placement.fp8 && !library.empty())
    throw usage_error(
        "--request-lora needs weights it can swap back: fp16, bf16 or fp32, not --dtype fp8 (merge LoRAs "
        "at load with --lora instead)");
  if (setup.distributed && setup.process.rank != 0) return serve_worker_rank(setup);

  // Declared before the service, which its destruction must precede. Rank 0 of several processes hosts the other
  // ranks' workers (constructed once the model is loaded: it waits for them).
  std::optional<actors::process_run> this_process;
  // The HTTP server answers from the start (healthz; readyz says "loading") and reaches the service once it exists.
  std::shared_ptr<image_service> service;
  std::mutex service_mutex;
  auto current = [&]() {
    std::lock_guard lock(service_mutex);
    return service;
  };
  const stop_signals signals;  // SIGTERM and SIGINT drain (below) instead of ending the process
  std::atomic<int> in_flight{0};
  struct counted {
    std::atomic<int>& count;
    explicit counted(std::atomic<int>& c) : count(c) { ++count; }
    ~counted() { --count; }
  };
  httplib::Server server;
  server.new_task_queue = [http_threads] { return new httplib::ThreadPool(static_cast<std::size_t>(http_threads)); };
  server.set_payload_max_length(1 << 20);
  server.Get("/healthz", [](const httplib::Request&, httplib::Response& response) {
    reply_json(response, 200, {{"status", "ok"}});
  });
  server.Get("/readyz", [&](const httplib::Request&, httplib::Response& response) {
    auto running = current();
    if (!running) return reply_json(response, 503, {{"status", "loading"}});
    if (signals.requested()) return reply_json(response, 503, {{"status", "draining"}});
    reply_json(response, 200,
               {{"status", "ready"},
                {"model", running->pipeline().class_name()},
                {"workers", running->workers()},
                {"placement", running->policy().name()}});
  });
  server.Get("/metrics", [&](const httplib::Request&, httplib::Response& response) {
    auto running = current();
    response.set_content(running ? running->metrics() : "# the model is loading\n", "text/plain; version=0.0.4");
  });
  // Submits the body's request; on failure answers and returns "".
  auto submit = [&](const httplib::Request& http, httplib::Response& response) -> std::string {
    auto running = current();
    if (!running) {
      reply_error(response, 503, "the model is still loading", "", "service_unavailable");
      return "";
    }
    try {
      auto parsed = parse_generation(http.body, setup.request, library);
      return running->submit(parsed.request, parsed.images, std::move(parsed.loras));
    } catch (const bad_request& bad) {
      reply_error(response, 400, bad.message, bad.field);
    } catch (const invalid_options& bad) {
      reply_error(response, 400, bad.what(), bad.field());
    } catch (const service_full& full) {
      response.set_header("Retry-After", "1");
      reply_error(response, 429, full.what(), "", "rate_limit_error");
    } catch (const service_draining& draining) {
      reply_error(response, 503, draining.what(), "", "service_unavailable");
    }
    return "";
  };
  server.Post("/v1/images/generations", [&](const httplib::Request& http, httplib::Response& response) {
    counted busy(in_flight);
    const auto id = submit(http, response);
    if (id.empty()) return;
    auto running = current();
    auto record = running->wait(id, request_timeout + std::chrono::seconds(5));
    if (!record->ended()) {  // the runner's own deadline did not fire in time: give up on it
      running->cancel(id);
      return reply_error(response, 504, "request " + id + " timed out", "", "timeout");
    }
    if (record->status != job_status::succeeded) {
      const int status = status_of_failure(*record);
      return reply_error(response, status, "request " + id + ": " + record->error, "",
                         status == 500 ? "server_error" : "service_unavailable");
    }
    reply_json(
        response, 200,
        {{"created", std::chrono::duration_cast<std::chrono::seconds>(record->created.time_since_epoch()).count()},
         {"data", images_json(*record)},
         {"hybridiff", placement_json(*record)}});
  });
  server.Post("/v1/jobs", [&](const httplib::Request& http, httplib::Response& response) {
    const auto id = submit(http, response);
    if (id.empty()) return;
    reply_json(response, 202, {{"id", id}, {"object", "image.job"}, {"status", "queued"}});
  });
  server.Get(R"(/v1/jobs/([^/]+))", [&](const httplib::Request& http, httplib::Response& response) {
    auto running = current();
    auto record = running ? running->job(http.matches[1]) : std::nullopt;
    if (!record) return reply_error(response, 404, "no job '" + std::string(http.matches[1]) + "'", "id");
    reply_json(response, 200, job_json(*record));
  });
  server.Delete(R"(/v1/jobs/([^/]+))", [&](const httplib::Request& http, httplib::Response& response) {
    auto running = current();
    const std::string id = http.matches[1];
    auto record = running ? running->job(id) : std::nullopt;
    if (!record) return reply_error(response, 404, "no job '" + id + "'", "id");
    if (!running->cancel(id))
      return reply_error(response, 409, "job '" + id + "' has already ended (" + to_string(record->status) + ")", "id");
    reply_json(response, 200, {{"id", id}, {"object", "image.job"}, {"status", "cancelling"}});
  });
  server.set_error_handler([](const httplib::Request& http, httplib::Response& response) {
    if (response.status == 404 && response.body.empty())  // a route's own 404 keeps its body
      reply_error(response, 404, "no route " + http.method + " " + http.path, "", "not_found");
  });
  server.set_exception_handler([](const httplib::Request&, httplib::Response& response, std::exception_ptr failure) {
    std::string what = "unknown error";
    try {
      std::rethrow_exception(failure);
    } catch (const std::exception& caught) {
      what = caught.what();
    } catch (...) {}
    reply_error(response, 500, what, "", "server_error");
  });

  const auto host = values["host"].as<std::string>();
  const int bound = port == 0 ? server.bind_to_any_port(host) : (server.bind_to_port(host, port) ? port : -1);
  if (bound < 0)
    throw error("cannot listen on " + host + ":" + std::to_string(port) + " (in use, or not an address here)");
  std::cout << "listening on http://" << host << ":" << bound << std::endl;
  std::thread http([&] { server.listen_after_bind(); });
  auto stop_http = [&] {
    server.stop();
    http.join();
  };

  try {
    // One replica per local worker: a worker uses its replica alone while it runs a request.
    std::vector<std::shared_ptr<models::diffusion_pipeline>> replicas;
    for (const auto& device : setup.devices) {
      auto placement = setup.placement;
      placement.device = device;
      replicas.push_back(models::load_pipeline(setup.model_dir, placement));
    }
    setup.parallel.tau = tau_settings_from(values, *replicas.front());
    // Every request LoRA is merged once and restored, so that one that does not fit the model stops the start.
    for (const auto& [name, file] : library) {
      const auto started = std::chrono::steady_clock::now();
      replicas.front()->use_loras({{file, 1.0}});
      replicas.front()->use_loras({});
      spdlog::info("request LoRA '{}' ({}): merged and restored in {:.0f} ms", name, file.string(),
                   std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count());
    }
    service_options options{setup.parallel, static_cast<std::size_t>(max_queue), request_timeout, max_images};
    this_process.emplace(setup.process, setup.cluster);
    {
      auto started = std::make_shared<image_service>(this_process->system(), replicas, options, std::move(policy),
                                                     this_process->cluster());
      std::lock_guard lock(service_mutex);
      service = started;
    }
    spdlog::info("serving {} on {} worker(s){}, placement {}", replicas.front()->class_name(), setup.parallel.workers,
                 setup.distributed ? " in " + std::to_string(setup.process.world_size) + " processes" : "",
                 service->policy().name());
    while (!signals.requested()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    spdlog::info("draining: no new requests; the queued ones are cancelled, the running ones finish");
    current()->drain();
    // The answers of the requests that just finished are still being written.
    for (int wait = 0; wait < 200 && in_flight > 0; ++wait) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    stop_http();
    {
      std::lock_guard lock(service_mutex);
      service.reset();
    }
  } catch (...) {
    if (http.joinable()) stop_http();
    throw;
  }
  spdlog::info("drained; exiting");
  return 0;
}

}  // namespace hybridiff::cli
