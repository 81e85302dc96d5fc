#include <chrono>
#include <iostream>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "cli.hpp"
#include "models/errors.hpp"
#include "models/image_io.hpp"
#include "models/pipeline.hpp"
#include "models/safetensors.hpp"

namespace hybridiff::cli {
namespace {

c10::Device parse_device(const std::string& text) {
  if (text == "cpu") return c10::kCPU;
  if (text == "cuda" || text.rfind("cuda:", 0) == 0) {
    if (!torch::cuda::is_available())
      throw usage_error("--device " + text + ": no CUDA device is available (torch sees " +
                        std::to_string(static_cast<int>(torch::cuda::device_count())) + " GPUs)");
    c10::Device device(text);
    if (device.has_index() && device.index() >= static_cast<int>(torch::cuda::device_count()))
      throw usage_error("--device " + text + ": only " + std::to_string(static_cast<int>(torch::cuda::device_count())) +
                        " GPUs are visible");
    return device;
  }
  throw usage_error("--device '" + text + "': use cpu, cuda or cuda:N");
}

at::ScalarType parse_dtype(const std::string& text) {
  if (text == "fp32") return at::kFloat;
  if (text == "fp16") return at::kHalf;
  if (text == "bf16") return at::kBFloat16;
  throw usage_error("--dtype '" + text + "': use fp32, fp16 or bf16");
}

}  // namespace

int run_generate(const std::vector<std::string>& args) {
  command_line line;
  line.name = "generate";
  line.usage = "hybridiff generate --model DIR --prompt TEXT [options]";
  line.summary =
      "Generates one image from a text prompt with a diffusers folder (StableDiffusionXLPipeline or\n"
      "StableDiffusion3Pipeline). Unset options take the folder's defaults, as diffusers: SDXL 1024x1024, 50 steps,\n"
      "guidance 5.0; SD3 1024x1024, 28 steps, guidance 7.0; the folder's scheduler. The reference scripts'\n"
      "spellings --num_inference_steps, --guidance_scale and --image_size are accepted.";
  // clang-format off
  line.options.add_options()
      ("model", po::value<std::string>()->required()->value_name("DIR"), "diffusers pipeline folder (model_index.json)")
      ("prompt", po::value<std::string>()->required()->value_name("TEXT"), "what to draw")
      ("negative-prompt", po::value<std::string>()->value_name("TEXT"),
       "what to steer away from (unset: SDXL's zero conditioning, SD3's \"\", as diffusers)")
      ("steps", po::value<std::int64_t>()->value_name("N"), "denoising steps (default: 50)")
      ("num_inference_steps", po::value<std::int64_t>()->value_name("N"), "same as --steps")
      ("guidance", po::value<double>()->value_name("G"), "classifier-free guidance scale; <= 1 disables CFG (default: 5.0)")
      ("guidance_scale", po::value<double>()->value_name("G"), "same as --guidance")
      ("scheduler", po::value<std::string>()->value_name("NAME"),
       "euler, ddim, dpm++2m or flow-euler (default: the folder's scheduler)")
      ("height", po::value<std::int64_t>()->value_name("H"), "image height in pixels, a multiple of the VAE factor")
      ("width", po::value<std::int64_t>()->value_name("W"), "image width in pixels")
      ("image_size", po::value<std::int64_t>()->value_name("S"), "square images: sets --height and --width")
      ("seed", po::value<std::uint64_t>()->default_value(0)->value_name("S"),
       "seed of the initial noise (drawn on the CPU, as diffusers' torch.Generator('cpu'))")
      ("latents-in", po::value<std::string>()->value_name("FILE"),
       "safetensors file with a tensor 'latents' [1,C,h,w]: the initial noise, unscaled (diffusers' latents=)")
      ("save-latents", po::value<std::string>()->value_name("FILE"),
       "write the final latents (before VAE decoding) as tensor 'latents'")
      ("max-sequence-length", po::value<std::int64_t>()->default_value(256)->value_name("N"),
       "SD3: T5 tokens of the prompt (zeros of this length when the folder has no text_encoder_3)")
      ("output", po::value<std::string>()->default_value("hybridiff.png")->value_name("PNG"), "where to write the image")
      ("device", po::value<std::string>()->default_value("cpu")->value_name("DEV"), "cpu, cuda or cuda:N")
      ("dtype", po::value<std::string>()->default_value("fp32")->value_name("T"), "fp32, fp16 or bf16");
  // clang-format on
  auto parsed = parse(line, args);
  if (!parsed) return 0;
  const auto& values = *parsed;
  auto pick = [&](const char* name, const char* alias) -> const po::variable_value* {
    if (values.count(name) && values.count(alias)) throw usage_error(std::string("give --") + name + " or --" + alias + ", not both");
    if (values.count(name)) return &values[name];
    if (values.count(alias)) return &values[alias];
    return nullptr;
  };

  models::generation_request request;
  request.prompt = values["prompt"].as<std::string>();
  if (values.count("negative-prompt")) request.negative_prompt = values["negative-prompt"].as<std::string>();
  if (auto* steps = pick("steps", "num_inference_steps")) request.steps = steps->as<std::int64_t>();
  if (auto* guidance = pick("guidance", "guidance_scale")) request.guidance = guidance->as<double>();
  if (values.count("image_size")) {
    if (values.count("height") || values.count("width")) throw usage_error("give --image_size or --height/--width, not both");
    request.height = request.width = values["image_size"].as<std::int64_t>();
  }
  if (values.count("height")) request.height = values["height"].as<std::int64_t>();
  if (values.count("width")) request.width = values["width"].as<std::int64_t>();
  if (values.count("scheduler")) {
    request.sampler = values["scheduler"].as<std::string>();
    auto names = models::sampler_names();
    if (std::find(names.begin(), names.end(), request.sampler) == names.end())
      throw usage_error("--scheduler '" + request.sampler + "': use euler, ddim, dpm++2m or flow-euler");
  }
  request.seed = values["seed"].as<std::uint64_t>();
  request.max_sequence_length = values["max-sequence-length"].as<std::int64_t>();
  if (values.count("latents-in"))
    request.initial_latents = models::load_named_tensor(values["latents-in"].as<std::string>(), "latents");

  models::load_options placement;
  placement.device = parse_device(values["device"].as<std::string>());
  placement.dtype = parse_dtype(values["dtype"].as<std::string>());
  const auto output = values["output"].as<std::string>();

  auto started = std::chrono::steady_clock::now();
  auto pipeline = models::load_pipeline(values["model"].as<std::string>(), placement);
  auto loaded = std::chrono::steady_clock::now();
  auto latents = models::generate_latents(*pipeline, request, [](std::int64_t index, std::int64_t steps, const at::Tensor&) {
    spdlog::debug("step {}/{}", index + 1, steps);
  });
  if (values.count("save-latents"))
    models::save_safetensors(values["save-latents"].as<std::string>(), {{"latents", latents.to(torch::kFloat32)}});
  models::save_png(output, pipeline->decode(latents));
  auto finished = std::chrono::steady_clock::now();
  auto seconds = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
  spdlog::info("wrote {} (load {:.2f} s, generate {:.2f} s)", output, seconds(started, loaded), seconds(loaded, finished));
  return 0;
}

}  // namespace hybridiff::cli
