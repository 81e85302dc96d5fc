// libFuzzer target: a tokenizer folder's files (vocab.json, merges.txt, tokenizer_config.json) and a prompt,
// given as one input split at "\n--8<--\n" lines. A tokenizer that loads must encode the prompt.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "models/text/clip_tokenizer.hpp"
#include "models/errors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  static const std::string separator = "\n--8<--\n";
  std::vector<std::string> parts;
  std::size_t begin = 0;
  while (parts.size() < 3) {
    auto found = input.find(separator, begin);
    if (found == std::string::npos) return 0;
    parts.push_back(input.substr(begin, found - begin));
    begin = found + separator.size();
  }
  parts.push_back(input.substr(begin));
  try {
    auto tokenizer = hybridiff::models::clip_tokenizer::from_text(parts[0], parts[1], parts[2], "fuzz/tokenizer");
    (void)tokenizer.encode(parts[3]);
  } catch (const hybridiff::error&) {
  }
  return 0;
}
