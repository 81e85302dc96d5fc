// hybridiff coco: one image per prompt of a captions file, resumable, stoppable with Ctrl-C.
#include <fstream>
#include <iomanip>
#include <sstream>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "generation_setup.hpp"
#include "models/io/config.hpp"
#include "models/errors.hpp"
#include "models/io/image_io.hpp"
#include "progress.hpp"

namespace hybridiff::cli {

namespace {

struct interrupted : std::exception {};

struct captioned_prompt {
  std::int64_t id;  ///< COCO's annotation id, or the line number of a text file
  std::string text;
};

// COCO's captions_*.json ({"annotations": [{"id", "image_id", "caption"}, ...]}) or one prompt per line.
std::vector<captioned_prompt> read_captions(const std::filesystem::path& path) {
  std::ifstream file(path);
  if (!file) throw error(path.string() + ": cannot open the captions file");
  std::vector<captioned_prompt> prompts;
  if (path.extension() == ".json") {
    const auto values = models::read_json_file(path);
    if (!values.is_object() || !values.contains("annotations") || !values["annotations"].is_array())
      throw error(path.string() + ": not a COCO captions file (no 'annotations' list)");
    for (const auto& entry : values["annotations"]) {
      if (!entry.is_object() || !entry.contains("id") || !entry["id"].is_number_integer() || !entry.contains("caption") ||
          !entry["caption"].is_string())
        throw error(path.string() + ": annotation " + std::to_string(prompts.size()) + " lacks an integer 'id' or a 'caption' string");
      prompts.push_back({entry["id"].get<std::int64_t>(), entry["caption"].get<std::string>()});
    }
  } else {
    std::string line;
    for (std::int64_t number = 1; std::getline(file, line); ++number) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") != std::string::npos) prompts.push_back({number, line});
    }
  }
  if (prompts.empty()) throw error(path.string() + ": holds no prompts");
  return prompts;
}

// "A man riding a horse." -> "a-man-riding-a-horse": file-name safe, at most 40 characters, never '_' (the metrics
// command reads a class name from the part before the first '_').
std::string slug(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (std::isalnum(static_cast<unsigned char>(c))) out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    else if (!out.empty() && out.back() != '-') out.push_back('-');
    if (out.size() >= 40) break;
  }
  while (!out.empty() && out.back() == '-') out.pop_back();
  return out.empty() ? "prompt" : out;
}

}  // namespace

int run_coco(const std::vector<std::string>& args) {
  command_line line;
  line.name = "coco";
  line.usage = "hybridiff coco --captions FILE --out DIR [options]";
  line.summary =
      "Generates one PNG per prompt of a captions file: COCO's captions_val2014.json format (.json: every\n"
      "annotation's caption) or one prompt per line. Files are named SLUG_ID.png (ID: the annotation id or the line\n"
      "number); DIR/schedule.csv gets a line file,tau1,tau2 per image. Images already in DIR are skipped, so a stopped\n"
      "run resumes; Ctrl-C stops after the current step without leaving a partial file (exit 130). Image ID uses seed\n"
      "--seed + ID. Model and schedule options as for generate (default: the built-in model with the hybrid schedule;\n"
      "its prompts are class names).";
  // clang-format off
  line.options.add_options()
      ("captions", po::value<std::string>()->required()->value_name("FILE"), "COCO captions JSON or a text file")
      ("out", po::value<std::string>()->required()->value_name("DIR"), "folder for the images (created)")
      ("limit", po::value<std::int64_t>()->value_name("N"), "only the first N prompts");
  // clang-format on
  for (const auto& group : generation_options()) line.options.add(group);
  auto parsed = parse(line, args);
  if (!parsed) return 0;
  const auto& values = *parsed;
  auto prompts = read_captions(values["captions"].as<std::string>());
  if (values.count("limit")) {
    const auto limit = values["limit"].as<std::int64_t>();
    if (limit < 1) throw usage_error("--limit " + std::to_string(limit) + ": give at least 1");
    if (static_cast<std::size_t>(limit) < prompts.size()) prompts.resize(static_cast<std::size_t>(limit));
  }
  const std::filesystem::path out = values["out"].as<std::string>();
  std::filesystem::create_directories(out);
  std::vector<std::pair<captioned_prompt, std::filesystem::path>> todo;
  for (const auto& prompt : prompts) {
    std::ostringstream name;
    name << slug(prompt.text) << "_" << std::setw(6) << std::setfill('0') << prompt.id << ".png";
    auto path = out / name.str();
    if (!std::filesystem::exists(path)) todo.emplace_back(prompt, path);  // PNGs are written atomically: present = whole
  }
  spdlog::info("{} prompts, {} already in {}, {} to generate", prompts.size(), prompts.size() - todo.size(),
               out.string(), todo.size());
  if (todo.empty()) return 0;

  auto setup = settle_generation(values);
  auto probe = setup.request;
  probe.prompt = todo.front().first.text;
  const stop_signals signals;
  std::size_t written = 0;
  bool stopped = false;
  try {
    run_generation(setup, probe, [&](parallel_session& session, models::diffusion_pipeline& pipeline) {
      progress_bar bar("images", static_cast<std::int64_t>(todo.size()), progress_enabled(values["progress"].as<std::string>()));
      for (const auto& [prompt, path] : todo) {
        auto request = setup.request;
        request.prompt = prompt.text;
        request.seed = setup.request.seed + static_cast<std::uint64_t>(prompt.id);
        auto result = session.generate(request, [&](std::int64_t, std::int64_t, const at::Tensor&) {
          if (signals.requested()) throw interrupted();
        });
        models::save_png(path, pipeline.decode(result.latents));
        // Where each image's pipeline window fell (empty: no window, e.g. --parallel cfg).
        std::ofstream(out / "schedule.csv", std::ios::app)
            << path.filename().string() << "," << (result.tau1 ? std::to_string(*result.tau1) : "") << ","
            << (result.tau2 ? std::to_string(*result.tau2) : "") << "\n";
        ++written;
        bar.update(static_cast<std::int64_t>(written));
        spdlog::debug("wrote {}", path.string());
        if (signals.requested()) throw interrupted();
      }
    });
  } catch (const interrupted&) {
    stopped = true;
  }
  if (stopped) {
    spdlog::warn("stopped: {} images written, {} left; run the same command again to resume", written, todo.size() - written);
    return 130;
  }
  spdlog::info("wrote {} images to {}", written, out.string());
  return 0;
}

}  // namespace hybridiff::cli
