#include <chrono>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "generation_setup.hpp"
#include "models/pipelines/class_conditional_pipeline.hpp"
#include "models/errors.hpp"
#include "models/io/image_io.hpp"
#include "models/io/safetensors.hpp"
#include "progress.hpp"
#include "schedule_plot.hpp"

namespace hybridiff::cli {

namespace {

std::filesystem::path schedule_plot_path(const std::filesystem::path& output) {
  auto plot = output;
  plot.replace_filename(output.stem().string() + "-schedule.png");
  return plot;
}

}  // namespace

int run_generate(const std::vector<std::string>& args) {
  command_line line;
  line.name = "generate";
  line.usage = "hybridiff generate [--model DIR] --prompt TEXT [options]";
  line.summary =
      "Generates one image from a prompt. Without --model, the built-in class-conditional Fashion-MNIST model runs\n"
      "(prompts: t-shirt, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle boot) with the hybrid\n"
      "schedule on 2 workers, and a schedule plot is written next to the image. With --model, a diffusers folder\n"
      "(StableDiffusionXLPipeline, StableDiffusion3Pipeline or the built-in model's class); unset options take the\n"
      "folder's defaults, as diffusers: the denoiser's sample_size times the VAE factor (1024 for SDXL-base and\n"
      "SD3-medium), SDXL 50 steps and guidance 5.0, SD3 28 steps and guidance 7.0, the folder's scheduler. The\n"
      "reference scripts' spellings --num_inference_steps, --guidance_scale and --image_size are accepted.";
  // clang-format off
  line.options.add_options()
      ("prompt", po::value<std::string>()->required()->value_name("TEXT"), "what to draw (the built-in model: a class name)")
      ("latents-in", po::value<std::string>()->value_name("FILE"),
       "safetensors file with a tensor 'latents' [1,C,h,w]: the initial noise, unscaled (diffusers' latents=)")
      ("save-latents", po::value<std::string>()->value_name("FILE"),
       "write the final latents (before VAE decoding) as tensor 'latents'")
      ("output", po::value<std::string>()->default_value("hybridiff.png")->value_name("PNG"), "where to write the image")
      ("grid", po::value<int>()->value_name("N"),
       "class-conditional models (the built-in one): ignore --prompt's class and write one row per class, N images "
       "per row (seeds --seed .. --seed + N - 1), as one PNG to --output")
      ("trace", po::value<std::string>()->value_name("FILE.csv"),
       "write one row per step: step, mode, rel-MAE, slope, per-worker compute ms, tau1/tau2 when decided")
      ("schedule-plot", po::value<std::string>()->value_name("PNG"),
       "draw the schedule (rel-MAE per step, slope, the window [tau1, tau2], the mode of each step); default for "
       "--parallel hybrid: OUTPUT's name with -schedule.png");
  // clang-format on
  for (const auto& group : generation_options()) line.options.add(group);
  auto parsed = parse(line, args);
  if (!parsed) return 0;
  const auto& values = *parsed;
  auto setup = settle_generation(values);
  auto request = setup.request;
  request.prompt = values["prompt"].as<std::string>();
  if (values.count("latents-in"))
    request.initial_latents = models::load_named_tensor(values["latents-in"].as<std::string>(), "latents");
  const std::filesystem::path output = values["output"].as<std::string>();
  const int grid = values.count("grid") ? values["grid"].as<int>() : 0;
  if (values.count("grid") && (grid < 1 || grid > 64)) throw usage_error("--grid " + std::to_string(grid) + ": give 1 to 64 images per row");
  if (grid > 0 && (values.count("latents-in") || values.count("save-latents") || values.count("trace") ||
                   values.count("schedule-plot")))
    throw usage_error("--grid draws many images: --latents-in, --save-latents, --trace and --schedule-plot take one");
  std::optional<std::filesystem::path> plot;
  if (values.count("schedule-plot")) plot = values["schedule-plot"].as<std::string>();
  else if (setup.parallel.mode == parallel_mode::hybrid && grid == 0) plot = schedule_plot_path(output);
  const bool show_progress = progress_enabled(values["progress"].as<std::string>());

  const auto started = std::chrono::steady_clock::now();
  const double load_seconds = run_generation(setup, request, [&](parallel_session& session, models::diffusion_pipeline& pipeline) {
    const auto steps = pipeline.plan(request).steps;
    // One image, with the progress bar over its steps; the fault switch rehearses a lost rank 0.
    auto generate_one = [&](const models::generation_request& one, const std::string& label) {
      progress_bar bar(label, steps, show_progress);
      auto result = session.generate(one, [&](std::int64_t index, std::int64_t total, const at::Tensor&) {
        spdlog::debug("step {}/{}", index + 1, total);
        bar.update(index + 1);
        setup.cluster.fault.trigger_at(static_cast<int>(index + 1), "the end of step " + std::to_string(index));
      });
      bar.finish();
      return result;
    };
    if (grid > 0) {
      const auto* classes = dynamic_cast<const models::class_conditional_pipeline*>(&pipeline);
      if (classes == nullptr)
        throw usage_error("--grid needs a class-conditional model (the built-in one); " + setup.model_dir.string() +
                          " is a " + pipeline.class_name());
      std::vector<at::Tensor> rows;
      for (const auto& name : classes->class_names()) {
        std::vector<at::Tensor> row;
        for (int column = 0; column < grid; ++column) {
          auto one = request;
          one.prompt = name;
          one.seed = request.seed + static_cast<std::uint64_t>(column);
          const auto label = name + " " + std::to_string(column + 1) + "/" + std::to_string(grid);
          row.push_back(pipeline.decode(generate_one(one, label).latents));
        }
        rows.push_back(torch::cat(row, 3));  // [1, 3, H, N·W]
      }
      models::save_png(output, torch::cat(rows, 2));  // one row per class
      return;
    }
    auto result = generate_one(request, request.prompt);
    auto image = pipeline.decode(result.latents);
    if (values.count("trace")) write_trace_csv(values["trace"].as<std::string>(), result.trace, pipeline.class_name());
    if (result.tau1) spdlog::info("pipeline window: tau1 = {}, tau2 = {}", *result.tau1, result.tau2.value_or(-1));
    if (plot) {
      write_schedule_plot(*plot, result.trace, request.prompt);
      spdlog::info("wrote the schedule plot {}", plot->string());
    }
    if (values.count("save-latents"))
      models::save_safetensors(values["save-latents"].as<std::string>(), {{"latents", result.latents.to(torch::kFloat32)}});
    models::save_png(output, image);
  });
  if (setup.distributed && setup.process.rank != 0) return 0;
  const auto finished = std::chrono::steady_clock::now();
  spdlog::info("wrote {} (load {:.2f} s, generate {:.2f} s)", output.string(), load_seconds,
               std::chrono::duration<double>(finished - started).count() - load_seconds);
  return 0;
}

}  // namespace hybridiff::cli
