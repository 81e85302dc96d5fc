// libFuzzer target: model_index.json through model_folder::open, in a folder with a few component folders
// (unet, vae, scheduler, tokenizer, text_encoder), as a user's diffusers folder is read.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "models/errors.hpp"
#include "models/io/model_folder.hpp"

namespace {

const std::filesystem::path& folder() {
  static const std::filesystem::path dir = [] {
    auto path = std::filesystem::temp_directory_path() / ("hybridiff-fuzz-model-" + std::to_string(::getpid()));
    for (const auto& [name, file] : {std::pair<const char*, const char*>{"unet", "config.json"},
                                     {"vae", "config.json"},
                                     {"text_encoder", "config.json"},
                                     {"scheduler", "scheduler_config.json"},
                                     {"tokenizer", "tokenizer_config.json"}}) {
      std::filesystem::create_directories(path / name);
      std::ofstream(path / name / file) << "{}";
    }
    return path;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  {
    std::ofstream index(folder() / "model_index.json", std::ios::binary | std::ios::trunc);
    index.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    auto opened = hybridiff::models::model_folder::open(folder());
    for (const auto& part : opened.components())
      if (part.dir.parent_path() != folder()) std::abort();  // a component outside the folder
  } catch (const hybridiff::error&) {
  }
  return 0;
}
