// libFuzzer target: the safetensors header parser (length prefix, JSON header, dtypes, shapes, byte ranges).
// Any exception other than hybridiff::error, any crash or sanitizer report is a finding.
#include <cstddef>
#include <cstdint>

#include "models/errors.hpp"
#include "models/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    auto header = hybridiff::models::parse_safetensors_header(data, size, "fuzz.safetensors");
    // Every accepted range lies inside the bytes: touch its first and last byte (ASan checks the bounds).
    volatile std::uint8_t sink = 0;
    for (const auto& entry : header.entries)
      if (entry.end > entry.begin) sink ^= data[header.data_offset + entry.begin] ^ data[header.data_offset + entry.end - 1];
    (void)sink;
  } catch (const hybridiff::error&) {
  }
  return 0;
}
