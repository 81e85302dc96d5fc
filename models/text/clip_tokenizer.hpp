#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace hybridiff::models {

/// CLIP's byte-level BPE tokenizer, read from a tokenizer folder (`vocab.json`, `merges.txt`,
/// `tokenizer_config.json`) as transformers' CLIPTokenizer reads it.
/// Text cleanup: whitespace runs collapse to one space, lower-case; split with CLIP's pattern (special tokens,
/// contractions, letter runs, single digits, other non-space runs); bytes mapped to printable characters; BPE
/// with `</w>` word ends; `<|startoftext|>` … `<|endoftext|>`; truncation and padding to `model_max_length` (77)
/// with the folder's pad token. Unicode NFC normalisation is not applied: input is taken as NFC (what editors and
/// terminals produce).
class clip_tokenizer {
 public:
  /// Throws `hybridiff::error` naming the file for a missing or malformed vocab/merges/config.
  static clip_tokenizer load(const std::filesystem::path& dir);
  /// The same from the three files' contents; `dir` names them in errors.
  static clip_tokenizer from_text(const std::string& vocab_json, const std::string& merges_txt,
                                  const std::string& tokenizer_config_json, const std::filesystem::path& dir);

  /// Token ids, exactly `max_length()` long. `truncated` (optional) reports whether the prompt was cut.
  std::vector<std::int64_t> encode(const std::string& text, bool* truncated = nullptr) const;
  /// Ids of the prompt's tokens only: no start/end tokens, no truncation, no padding.
  std::vector<std::int64_t> tokenize(const std::string& text) const;

  std::size_t max_length() const { return max_length_; }
  std::int64_t bos_id() const { return bos_id_; }
  std::int64_t eos_id() const { return eos_id_; }
  std::int64_t pad_id() const { return pad_id_; }

 private:
  std::vector<std::string> bpe(const std::string& word) const;

  std::unordered_map<std::string, std::int64_t> vocab_;
  std::map<std::pair<std::string, std::string>, int> merge_rank_;
  std::unordered_map<std::string, std::int64_t> special_tokens_;
  std::int64_t bos_id_ = 0, eos_id_ = 0, pad_id_ = 0, unk_id_ = 0;
  std::size_t max_length_ = 77;
};

}  // namespace hybridiff::models
