// libFuzzer target: prompts through the CLIP BPE tokenizer of the tiny SDXL fixture (text cleanup, the split
// pattern, byte mapping, BPE, truncation and padding).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "models/text/clip_tokenizer.hpp"
#include "models/errors.hpp"

namespace {
const hybridiff::models::clip_tokenizer& tokenizer() {
  static const auto loaded = [] {
    const char* shared = std::getenv("HYBRIDIFF_SHARED");
    const std::filesystem::path root = shared != nullptr ? shared : HYBRIDIFF_SHARED_DIR;
    return hybridiff::models::clip_tokenizer::load(root / "fixtures" / "tiny-sdxl" / "tokenizer");
  }();
  return loaded;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string prompt(reinterpret_cast<const char*>(data), size);
  try {
    bool truncated = false;
    auto ids = tokenizer().encode(prompt, &truncated);
    if (ids.size() != tokenizer().max_length()) std::abort();  // the contract: always exactly max_length ids
    (void)tokenizer().tokenize(prompt);
  } catch (const hybridiff::error&) {  // e.g. a prompt that is not UTF-8: a clear error is the contract
  }
  return 0;
}
