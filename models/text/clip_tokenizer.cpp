#include "models/text/clip_tokenizer.hpp"

#include <clocale>
#include <wctype.h>

#include <fstream>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

#include "models/io/config.hpp"
#include "models/errors.hpp"

namespace hybridiff::models {
namespace {

// Unicode character classes from the C library's UTF-8 tables, independent of the process's locale.
class unicode_classes {
 public:
  unicode_classes() : locale_(::newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(0))) {
    if (locale_ == static_cast<locale_t>(0)) throw error("the C.UTF-8 locale is unavailable; cannot classify text");
  }
  ~unicode_classes() { ::freelocale(locale_); }
  bool is_letter(char32_t c) const { return ::iswalpha_l(static_cast<wint_t>(c), locale_); }
  bool is_number(char32_t c) const {
    return (c >= U'0' && c <= U'9') ||
           (c > 0x7f && ::iswalnum_l(static_cast<wint_t>(c), locale_) && !is_letter(c));
  }
  bool is_space(char32_t c) const { return ::iswspace_l(static_cast<wint_t>(c), locale_); }
  char32_t lower(char32_t c) const { return static_cast<char32_t>(::towlower_l(static_cast<wint_t>(c), locale_)); }

 private:
  locale_t locale_;
};

const unicode_classes& classes() {
  static const unicode_classes instance;
  return instance;
}

std::u32string decode_utf8(const std::string& text) {
  std::u32string out;
  for (std::size_t i = 0; i < text.size();) {
    auto lead = static_cast<unsigned char>(text[i]);
    int length = lead < 0x80 ? 1 : (lead >> 5) == 0x6 ? 2 : (lead >> 4) == 0xe ? 3 : (lead >> 3) == 0x1e ? 4 : 0;
    if (length == 0 || i + length > text.size())
      throw error("prompt is not valid UTF-8 (byte " + std::to_string(i) + ")");
    char32_t code = length == 1 ? lead : lead & (0x7f >> length);
    for (int k = 1; k < length; ++k) {
      auto next = static_cast<unsigned char>(text[i + k]);
      if ((next >> 6) != 0x2) throw error("prompt is not valid UTF-8 (byte " + std::to_string(i + k) + ")");
      code = (code << 6) | (next & 0x3f);
    }
    out.push_back(code);
    i += length;
  }
  return out;
}

std::string encode_utf8(char32_t code) {
  std::string out;
  if (code < 0x80) {
    out += static_cast<char>(code);
  } else if (code < 0x800) {
    out += static_cast<char>(0xc0 | (code >> 6));
    out += static_cast<char>(0x80 | (code & 0x3f));
  } else if (code < 0x10000) {
    out += static_cast<char>(0xe0 | (code >> 12));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (code & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (code >> 18));
    out += static_cast<char>(0x80 | ((code >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (code & 0x3f));
  }
  return out;
}

// GPT-2's reversible byte -> printable character table: printable Latin-1 bytes map to themselves, the others to
// code points from 256 upward, in byte order.
const std::vector<std::string>& byte_symbols() {
  static const std::vector<std::string> table = [] {
    std::vector<std::string> symbols(256);
    int next = 256;
    for (int byte = 0; byte < 256; ++byte) {
      bool printable = (byte >= '!' && byte <= '~') || (byte >= 0xa1 && byte <= 0xac) || (byte >= 0xae && byte <= 0xff);
      symbols[byte] = encode_utf8(static_cast<char32_t>(printable ? byte : next++));
    }
    return symbols;
  }();
  return table;
}

// The token string of a tokenizer_config.json entry: either "text" or {"content": "text", ...}.
std::string token_text(const nlohmann::json& config, const std::string& key, const std::filesystem::path& source) {
  if (!config.contains(key)) throw error(source.string() + ": missing '" + key + "'");
  const auto& value = config[key];
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string())
    return value["content"].get<std::string>();
  throw error(source.string() + ": '" + key + "' is neither a string nor {\"content\": ...}");
}

// Splits CLIP-normalised text into pre-tokens: contractions, letter runs, single digits, runs of other
// non-space characters; whitespace is dropped.
std::vector<std::u32string> pre_tokenize(const std::u32string& text) {
  static const char32_t* contractions[] = {U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"};
  const auto& unicode = classes();
  std::vector<std::u32string> pieces;
  std::size_t i = 0;
  while (i < text.size()) {
    char32_t c = text[i];
    if (unicode.is_space(c)) {
      ++i;
      continue;
    }
    bool matched = false;
    if (c == U'\'') {
      for (const char32_t* contraction : contractions) {
        std::u32string candidate(contraction);
        if (text.compare(i, candidate.size(), candidate) == 0) {
          pieces.push_back(candidate);
          i += candidate.size();
          matched = true;
          break;
        }
      }
    }
    if (matched) continue;
    std::size_t end = i + 1;
    if (unicode.is_letter(c)) {
      while (end < text.size() && unicode.is_letter(text[end])) ++end;
    } else if (!unicode.is_number(c)) {
      while (end < text.size() && !unicode.is_space(text[end]) && !unicode.is_letter(text[end]) &&
             !unicode.is_number(text[end]))
        ++end;
    }
    pieces.push_back(text.substr(i, end - i));
    i = end;
  }
  return pieces;
}

}  // namespace

clip_tokenizer clip_tokenizer::load(const std::filesystem::path& dir) {
  auto read = [](const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw error(path.string() + ": file is missing");
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  return from_text(read(dir / "vocab.json"), read(dir / "merges.txt"), read(dir / "tokenizer_config.json"), dir);
}

clip_tokenizer clip_tokenizer::from_text(const std::string& vocab_json, const std::string& merges_txt,
                                         const std::string& tokenizer_config_json, const std::filesystem::path& dir) {
  clip_tokenizer tokenizer;
  const auto vocab_path = dir / "vocab.json";
  auto vocab = parse_json_text(vocab_json, vocab_path);
  if (!vocab.is_object() || vocab.empty()) throw error(vocab_path.string() + ": not a token -> id object");
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer()) throw error(vocab_path.string() + ": id of '" + token + "' is not an integer");
    tokenizer.vocab_[token] = id.get<std::int64_t>();
  }

  const auto merges_path = dir / "merges.txt";
  std::istringstream merges(merges_txt);
  std::string line;
  int rank = 0;
  int line_number = 0;
  while (std::getline(merges, line)) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_number == 1 && line.rfind("#version", 0) == 0)) continue;
    auto space = line.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string::npos)
      throw error(merges_path.string() + ": line " + std::to_string(line_number) + " is not a pair 'a b'");
    tokenizer.merge_rank_.emplace(std::make_pair(line.substr(0, space), line.substr(space + 1)), rank++);
  }

  const auto config_path = dir / "tokenizer_config.json";
  auto config = parse_json_text(tokenizer_config_json, config_path);
  if (!config.is_object()) throw error(config_path.string() + ": not a JSON object");
  auto id_of = [&](const std::string& key) {
    auto text = token_text(config, key, config_path);
    auto found = tokenizer.vocab_.find(text);
    if (found == tokenizer.vocab_.end())
      throw error(config_path.string() + ": " + key + " '" + text + "' is not in vocab.json");
    return found->second;
  };
  tokenizer.bos_id_ = id_of("bos_token");
  tokenizer.eos_id_ = id_of("eos_token");
  tokenizer.pad_id_ = id_of("pad_token");
  tokenizer.unk_id_ = id_of("unk_token");
  for (const auto& key : {"bos_token", "eos_token", "pad_token", "unk_token"})
    tokenizer.special_tokens_[token_text(config, key, config_path)] = id_of(key);
  if (config.contains("model_max_length") && config["model_max_length"].is_number_integer()) {
    auto length = config["model_max_length"].get<std::int64_t>();
    if (length < 2 || length > 4096)
      throw error(config_path.string() + ": model_max_length " + std::to_string(length) + " is outside [2, 4096]");
    tokenizer.max_length_ = static_cast<std::size_t>(length);
  }
  return tokenizer;
}

std::vector<std::string> clip_tokenizer::bpe(const std::string& word) const {
  std::vector<std::string> symbols;
  for (unsigned char byte : word) symbols.push_back(byte_symbols()[byte]);
  if (symbols.empty()) return symbols;
  symbols.back() += "</w>";
  while (symbols.size() > 1) {
    int best_rank = std::numeric_limits<int>::max();
    std::size_t best = 0;
    for (std::size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto found = merge_rank_.find({symbols[i], symbols[i + 1]});
      if (found != merge_rank_.end() && found->second < best_rank) {
        best_rank = found->second;
        best = i;
      }
    }
    if (best_rank == std::numeric_limits<int>::max()) break;
    // Merge every occurrence of the best pair, left to right.
    const std::string first = symbols[best], second = symbols[best + 1];
    std::vector<std::string> merged;
    for (std::size_t i = 0; i < symbols.size();) {
      if (i + 1 < symbols.size() && symbols[i] == first && symbols[i + 1] == second) {
        merged.push_back(first + second);
        i += 2;
      } else {
        merged.push_back(symbols[i++]);
      }
    }
    symbols = std::move(merged);
  }
  return symbols;
}

std::vector<std::int64_t> clip_tokenizer::tokenize(const std::string& text) const {
  std::vector<std::int64_t> ids;
  auto encode_segment = [&](const std::string& segment) {
    std::u32string normalised;
    bool in_space = false;
    for (char32_t c : decode_utf8(segment)) {
      if (classes().is_space(c)) {
        if (!in_space) normalised.push_back(U' ');
        in_space = true;
      } else {
        normalised.push_back(classes().lower(c));
        in_space = false;
      }
    }
    for (const auto& piece : pre_tokenize(normalised)) {
      std::string bytes;
      for (char32_t c : piece) bytes += encode_utf8(c);
      for (const auto& symbol : bpe(bytes)) {
        auto found = vocab_.find(symbol);
        ids.push_back(found == vocab_.end() ? unk_id_ : found->second);
      }
    }
  };
  // Special tokens (bos, eos, pad, unk) in the raw text are kept whole, as transformers does with its added
  // tokens: with tokenizer_2's pad token "!", "tree!!" gives tree</w> ! ! rather than tree</w> ! !</w>.
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t next = std::string::npos;
    std::pair<std::string, std::int64_t> special;
    for (const auto& [token, id] : special_tokens_) {
      auto position = text.find(token, start);
      if (position < next || (position == next && position != std::string::npos && token.size() > special.first.size())) {
        next = position;
        special = {token, id};
      }
    }
    encode_segment(text.substr(start, next == std::string::npos ? std::string::npos : next - start));
    if (next == std::string::npos) break;
    ids.push_back(special.second);
    start = next + special.first.size();
  }
  return ids;
}

std::vector<std::int64_t> clip_tokenizer::encode(const std::string& text, bool* truncated) const {
  auto tokens = tokenize(text);
  const std::size_t room = max_length_ - 2;
  if (truncated != nullptr) *truncated = tokens.size() > room;
  if (tokens.size() > room) tokens.resize(room);
  std::vector<std::int64_t> ids;
  ids.reserve(max_length_);
  ids.push_back(bos_id_);
  ids.insert(ids.end(), tokens.begin(), tokens.end());
  ids.push_back(eos_id_);
  ids.resize(max_length_, pad_id_);
  return ids;
}

}  // namespace hybridiff::models
