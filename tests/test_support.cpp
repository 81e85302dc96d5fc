#include "test_support.hpp"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>

namespace hybridiff::test {

namespace {

// Whether nothing listens on `port` of 127.0.0.1 right now.
bool port_is_free(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<std::uint16_t>(port));
  const bool free = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  ::close(fd);
  return free;
}

}  // namespace

int free_port_pair() {
  constexpr int low = 20000, high = 32000;
  static int next = low + static_cast<int>(::getpid() % 1500) * 8;
  for (int tries = 0; tries < 1000; ++tries) {
    if (next + 1 >= high) next = low;
    const int port = next;
    next += 2;
    if (port_is_free(port) && port_is_free(port + 1)) return port;
  }
  throw std::runtime_error("no free port pair");
}

std::filesystem::path fixtures_dir() {
  const char* shared = std::getenv("HYBRIDIFF_SHARED");
  std::filesystem::path dir = shared != nullptr ? std::filesystem::path(shared) : std::filesystem::path(HYBRIDIFF_SHARED_DIR);
  dir /= "fixtures";
  if (!std::filesystem::is_directory(dir))
    throw std::runtime_error("fixtures not found at " + dir.string() + " (set HYBRIDIFF_SHARED to the shared/ folder)");
  return dir;
}

temp_dir::temp_dir() {
  auto pattern = (std::filesystem::temp_directory_path() / "hybridiff-test-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr)
    throw std::runtime_error("mkdtemp(" + pattern + ") failed: " + std::strerror(errno));
  path_ = pattern;
}

temp_dir::~temp_dir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

void write_file(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

std::string safetensors_bytes(const std::string& header, const std::string& data) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((static_cast<std::uint64_t>(header.size()) >> (8 * i)) & 0xff);
  return bytes + header + data;
}

std::filesystem::path make_hub_repository(const std::filesystem::path& source, const std::filesystem::path& cache,
                                          const std::string& repo_id, const std::string& revision,
                                          const std::string& variant) {
  const auto slash = repo_id.find('/');
  const auto repository = cache / ("models--" + repo_id.substr(0, slash) + "--" + repo_id.substr(slash + 1));
  const auto snapshot = repository / "snapshots" / revision;
  std::filesystem::create_directories(repository / "blobs");
  std::filesystem::create_directories(repository / "refs");
  write_file(repository / "refs" / "main", revision);
  int blobs = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(source)) {
    if (!entry.is_regular_file()) continue;
    auto relative = std::filesystem::relative(entry.path(), source);
    const auto name = relative.filename().string();
    const auto suffix = std::string(".safetensors");
    if (!variant.empty() && name.size() > suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      relative.replace_filename(name.substr(0, name.size() - suffix.size()) + "." + variant + suffix);
    // The cache names blobs by their hash; any unique name serves here.
    const auto blob = repository / "blobs" / (revision + "-" + std::to_string(blobs++));
    std::filesystem::copy_file(entry.path(), blob);
    const auto link = snapshot / relative;
    std::filesystem::create_directories(link.parent_path());
    std::filesystem::create_symlink(std::filesystem::relative(blob, link.parent_path()), link);
  }
  return repository;
}

scoped_environment::scoped_environment(const std::string& name, const std::string& value) : name_(name) {
  if (const char* earlier = std::getenv(name.c_str())) earlier_ = earlier;
  ::setenv(name.c_str(), value.c_str(), 1);
}

scoped_environment::~scoped_environment() {
  if (earlier_)
    ::setenv(name_.c_str(), earlier_->c_str(), 1);
  else
    ::unsetenv(name_.c_str());
}

}  // namespace hybridiff::test

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "models/io/config.hpp"
#include "models/io/safetensors.hpp"
#include "models/pipelines/random_pipeline.hpp"

namespace hybridiff::test {

at::Tensor golden(const std::string& file, const std::string& key) {
  return models::safetensors_file::open(fixtures_dir() / file)->tensor(key).clone();
}

models::generation_request golden_request(const std::string& fixture) {
  const auto settings = models::read_json_file(fixtures_dir() / (fixture + "-golden.json"));
  models::generation_request request;
  request.prompt = settings[settings.contains("prompt_pipe") ? "prompt_pipe" : "prompt"].get<std::string>();
  request.steps = settings["steps"].get<std::int64_t>();
  request.guidance = settings["guidance_scale"].get<double>();
  request.height = request.width = settings["size"].get<std::int64_t>();
  if (settings.contains("max_sequence_length"))
    request.max_sequence_length = settings["max_sequence_length"].get<std::int64_t>();
  request.initial_latents = golden(fixture + "-golden.safetensors", "pipe_init_latents");
  return request;
}

models::generation_request tiny_request(int steps) {
  models::generation_request request;
  request.prompt = "astronaut in a jungle, cold color palette, muted colors, detailed, 8k";
  request.steps = steps;
  request.guidance = 5.0;
  request.height = request.width = 32;
  request.max_sequence_length = 16;
  request.seed = 3;
  return request;
}

std::shared_ptr<models::diffusion_pipeline> deeper_tiny_sd3(int blocks, const models::load_options& options) {
  temp_dir folder;
  auto config = nlohmann::json::parse(std::ifstream(fixtures_dir() / "tiny-sd3" / "transformer" / "config.json"));
  config["num_layers"] = blocks;
  std::ofstream(folder / "config.json") << config.dump();
  return models::make_random_pipeline(folder.path(), fixtures_dir() / "tiny-sd3" / "scheduler", options, 7);
}

double relative_error(const at::Tensor& actual, const at::Tensor& expected) {
  if (actual.sizes() != expected.sizes())
    throw std::runtime_error("shape mismatch: " + c10::str(actual.sizes()) + " vs " + c10::str(expected.sizes()));
  auto a = actual.detach().to(torch::kCPU, torch::kDouble), b = expected.detach().to(torch::kCPU, torch::kDouble);
  return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item<double>();
}

double rounding_tolerance(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return 1e-5;
    case at::kHalf: return 2e-3;
    default: return 1.6e-2;
  }
}

full_float32_convolutions::full_float32_convolutions() : tf32_(at::globalContext().allowTF32CuDNN()) {
  at::globalContext().setAllowTF32CuDNN(false);
}

full_float32_convolutions::~full_float32_convolutions() { at::globalContext().setAllowTF32CuDNN(tf32_); }

namespace {

// Writes a single file as a recipe of tests/golden/single_file/ says, reading each component from folder/component.
std::filesystem::path write_from_recipe(const std::string& recipe_name, const std::filesystem::path& folder,
                                        const std::filesystem::path& path) {
  const auto recipe =
      models::read_json_file(std::filesystem::path(HYBRIDIFF_SOURCE_DIR) / "tests/golden/single_file" / recipe_name);
  std::map<std::string, models::checkpoint> components;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& entry : recipe) {
    const auto component = entry["component"].get<std::string>();
    if (!components.count(component))
      components.emplace(component, models::checkpoint::open(models::find_component_weights(folder / component)));
    std::vector<at::Tensor> sources;
    for (const auto& name : entry["from"]) sources.push_back(components.at(component).tensor(name.get<std::string>()));
    const auto op = entry["op"].get<std::string>();
    at::Tensor value;
    if (op == "copy") {
      value = sources.at(0);
    } else if (op == "conv1x1") {
      value = sources.at(0).unsqueeze(-1).unsqueeze(-1);
    } else if (op == "transpose") {
      value = sources.at(0).t();
    } else if (op == "concat") {
      value = torch::cat(sources);
    } else if (op == "swap_halves") {
      auto halves = sources.at(0).chunk(2, 0);
      value = torch::cat({halves[1], halves[0]});
    } else {
      throw std::runtime_error("single-file recipe: unknown op " + op);
    }
    tensors.emplace_back(entry["key"].get<std::string>(), value.contiguous());
  }
  models::save_safetensors(path, tensors);
  return path;
}

}  // namespace

std::filesystem::path write_tiny_sdxl_single_file(const std::filesystem::path& path) {
  return write_from_recipe("tiny-sdxl-single-file-recipe.json", fixtures_dir() / "tiny-sdxl", path);
}

std::filesystem::path make_tiny_sd35_folder(const std::filesystem::path& folder) {
  std::filesystem::create_directories(folder);
  for (const auto& entry : std::filesystem::directory_iterator(fixtures_dir() / "tiny-sd3"))
    if (entry.path().filename() != "transformer")
      std::filesystem::create_symlink(entry.path(), folder / entry.path().filename());
  std::filesystem::create_directory_symlink(
      std::filesystem::path(HYBRIDIFF_SOURCE_DIR) / "tests/golden/sd35/transformer", folder / "transformer");
  return folder;
}

std::filesystem::path write_tiny_sd35_single_file(const std::filesystem::path& path,
                                                  const std::filesystem::path& folder) {
  return write_from_recipe("tiny-sd35-single-file-recipe.json", make_tiny_sd35_folder(folder), path);
}

}  // namespace hybridiff::test
