#include "models/io/lora.hpp"

#include <cmath>
#include <map>
#include <optional>
#include <stdexcept>

#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "models/errors.hpp"
#include "models/io/safetensors.hpp"

namespace hybridiff::models {
namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool starts_with(const std::string& text, const std::string& prefix) { return text.rfind(prefix, 0) == 0; }

std::string shape_text(const at::Tensor& tensor) {
  std::string text = "[";
  for (std::int64_t d = 0; d < tensor.dim(); ++d) text += (d ? ", " : "") + std::to_string(tensor.size(d));
  return text + "]";
}

// kohya's prefixes: the component each names.
const std::pair<const char*, const char*> kohya_prefixes[] = {
    {"lora_unet_", "unet"},          {"lora_te1_", "text_encoder"}, {"lora_te2_", "text_encoder_2"},
    {"lora_te3_", "text_encoder_3"}, {"lora_te_", "text_encoder"},  {"lora_transformer_", "transformer"}};

enum class half { down, up, alpha };

}  // namespace

struct lora_merge::pair {
  std::filesystem::path file;
  double scale = 1.0;
  std::string component;
  std::string module;  // PEFT: the dotted module path; kohya: the path with '_' for '.'
  bool kohya = false;
  std::string key;  // a key of the pair, for messages
  at::Tensor down, up;
  std::optional<double> alpha;
  bool used = false;

  std::string name() const { return kohya ? "lora_" + component + ":" + module : component + "." + module; }
};

lora_spec parse_lora_spec(const std::string& text) {
  lora_spec spec;
  const auto colon = text.rfind(':');
  std::string file = text;
  if (colon != std::string::npos) {
    const auto scale_text = text.substr(colon + 1);
    std::size_t used = 0;
    double scale = 0;
    try {
      scale = std::stod(scale_text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    // A colon that does not start a number belongs to the path.
    if (used == scale_text.size() && !scale_text.empty()) {
      if (!std::isfinite(scale)) throw std::invalid_argument("--lora " + text + ": the scale must be a finite number");
      spec.scale = scale;
      file = text.substr(0, colon);
    }
  }
  if (file.empty()) throw std::invalid_argument("--lora '" + text + "': no file (use FILE or FILE:SCALE)");
  spec.file = file;
  return spec;
}

lora_merge::lora_merge(const std::vector<lora_spec>& loras) {
  for (const auto& spec : loras) {
    const auto file = safetensors_file::open(spec.file);
    const auto where = spec.file.string();
    // PEFT files from diffusers carry their alphas as metadata: {"unet.lora_alpha": 8, ...}.
    nlohmann::json adapter = nlohmann::json::object();
    if (auto found = file->metadata().find("lora_adapter_metadata"); found != file->metadata().end()) {
      try {
        adapter = nlohmann::json::parse(found->second);
      } catch (const nlohmann::json::exception& bad) {
        throw error(where + ": lora_adapter_metadata is not JSON (" + bad.what() + ")");
      }
    }
    std::map<std::string, pair*> by_name;
    auto pair_of = [&](const std::string& component, const std::string& module, bool kohya,
                       const std::string& key) -> pair& {
      auto made = std::make_unique<pair>(pair{spec.file, spec.scale, component, module, kohya, key});
      auto& slot = by_name[made->name()];
      if (!slot) {
        slot = made.get();
        pairs_.push_back(std::move(made));
      }
      return *slot;
    };
    for (const auto& entry : file->entries()) {
      const auto& key = entry.name;
      std::optional<half> part;
      std::string base;
      bool kohya = starts_with(key, "lora_");
      if (kohya) {
        const auto dot = key.find('.');
        const auto suffix = dot == std::string::npos ? "" : key.substr(dot + 1);
        base = key.substr(0, dot);
        if (suffix == "lora_down.weight") part = half::down;
        if (suffix == "lora_up.weight") part = half::up;
        if (suffix == "alpha") part = half::alpha;
      } else {
        for (const auto& [suffix, which] : {std::pair<const char*, half>{".lora_A.weight", half::down},
                                            {".lora_B.weight", half::up},
                                            {".lora.down.weight", half::down},
                                            {".lora.up.weight", half::up},
                                            {".alpha", half::alpha}})
          if (ends_with(key, suffix)) {
            part = which;
            base = key.substr(0, key.size() - std::string(suffix).size());
            break;
          }
      }
      if (!part)
        throw error(where + ": '" + key +
                    "' is not a LoRA weight this loader reads (diffusers/PEFT: .lora_A.weight, .lora_B.weight; kohya: "
                    ".lora_down.weight, .lora_up.weight, .alpha; LoCon, LoHa, LoKr and DoRA are not supported)");
      std::string component, module;
      if (kohya) {
        for (const auto& [prefix, name] : kohya_prefixes)
          if (starts_with(base, prefix)) {
            component = name;
            module = base.substr(std::string(prefix).size());
            break;
          }
        if (component.empty())
          throw error(where + ": '" + key +
                      "' names no component (lora_unet_, lora_te1_, lora_te2_, lora_transformer_)");
      } else {
        const auto dot = base.find('.');
        if (dot == std::string::npos || dot == 0 || dot + 1 == base.size())
          throw error(where + ": '" + key + "' names no component and module (COMPONENT.MODULE.lora_A.weight)");
        component = base.substr(0, dot);
        module = base.substr(dot + 1);
      }
      auto& target = pair_of(component, module, kohya, key);
      const auto tensor = file->tensor(key);
      if (*part == half::alpha) {
        if (tensor.numel() != 1) throw error(where + ": '" + key + "' is not one number");
        target.alpha = tensor.to(torch::kDouble).item<double>();
      } else {
        (*part == half::down ? target.down : target.up) = tensor;
      }
    }
    if (by_name.empty()) throw error(where + ": no LoRA weights in the file");
    for (auto& [name, lora] : by_name) {
      if (!lora->down.defined() || !lora->up.defined())
        throw error(where + ": '" + lora->key + "' has " + (lora->down.defined() ? "a down (A)" : "an up (B)") +
                    " matrix but no " + (lora->down.defined() ? "up (B)" : "down (A)") + " matrix");
      const auto& down = lora->down;
      const auto& up = lora->up;
      if ((down.dim() != 2 && down.dim() != 4) || up.dim() != down.dim() || up.size(1) != down.size(0) ||
          (up.dim() == 4 && (up.size(2) != 1 || up.size(3) != 1)))
        throw error(where + ": '" + lora->key + "': rank mismatch between down " + shape_text(down) + " and up " +
                    shape_text(up) + " (down [rank, in(, kh, kw)], up [out, rank(, 1, 1)])");
      if (!lora->alpha && !lora->kohya) {
        const auto field = lora->component + ".lora_alpha";
        if (adapter.contains(field) && adapter[field].is_number()) lora->alpha = adapter[field].get<double>();
      }
    }
    spdlog::info("{}: {} LoRA weight pair(s), scale {}", where, by_name.size(), spec.scale);
  }
}

lora_merge::~lora_merge() = default;

void lora_merge::merge(const std::string& component, torch::nn::Module& module, const kohya_alias& alias) {
  visited_.insert(component);
  torch::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> weights;
  for (const auto& item : module.named_parameters(true))
    if (ends_with(item.key(), ".weight")) weights.emplace(item.key(), item.value());
  // The names a LoRA may use for a weight: the dotted module path (PEFT) and with '_' (kohya); text encoders are
  // named with or without transformers' "text_model." prefix.
  std::map<std::string, std::string> peft_names, kohya_names;
  for (const auto& [name, weight] : weights) {
    const auto path = name.substr(0, name.size() - std::string(".weight").size());
    std::vector<std::string> spellings = {path};
    if (starts_with(path, "text_model."))
      spellings.push_back(path.substr(std::string("text_model.").size()));
    else if (starts_with(component, "text_encoder"))
      spellings.push_back("text_model." + path);
    for (const auto& spelling : spellings) {
      peft_names.emplace(spelling, name);
      auto underscored = spelling;
      for (auto& c : underscored)
        if (c == '.') c = '_';
      kohya_names.emplace(underscored, name);
    }
  }
  for (auto& lora : pairs_) {
    if (lora->component != component) continue;
    const auto& names = lora->kohya ? kohya_names : peft_names;
    auto found = names.find(lora->module);
    if (found == names.end() && lora->kohya && alias)
      if (auto own = alias(lora->module)) found = names.find(*own);
    if (found == names.end()) continue;
    auto& weight = weights.at(found->second);
    const auto down = lora->down.to(torch::kFloat).flatten(1);  // [rank, in·kh·kw]
    const auto up = lora->up.to(torch::kFloat).flatten(1);      // [out, rank]
    if (up.size(0) != weight.size(0) || down.size(1) * weight.size(0) != weight.numel())
      throw error(lora->file.string() + ": '" + lora->key + "': up " + shape_text(lora->up) + " · down " +
                  shape_text(lora->down) + " does not fit " + component + "'s " + found->second + " " +
                  shape_text(weight));
    const double rank = static_cast<double>(down.size(0));
    const double factor = lora->scale * lora->alpha.value_or(rank) / rank;
    const auto delta = up.matmul(down).reshape(weight.sizes()).mul(factor);
    if (before_change_) before_change_(weight);
    weight.add_(delta.to(weight.device(), weight.scalar_type()));
    lora->used = true;
    ++merged_;
  }
}

void lora_merge::skip(const std::string& component) { skipped_.insert(component); }

void lora_merge::finish() const {
  std::map<std::filesystem::path, std::vector<std::string>> unmatched;
  for (const auto& lora : pairs_) {
    if (lora->used || skipped_.count(lora->component)) continue;
    unmatched[lora->file].push_back(
        lora->key + (visited_.count(lora->component) ? "" : " (the pipeline has no " + lora->component + ")"));
  }
  if (unmatched.empty()) return;
  const auto& [file, keys] = *unmatched.begin();
  std::string listed;
  for (std::size_t i = 0; i < keys.size() && i < 5; ++i) listed += (i ? ", " : "") + keys[i];
  throw error(file.string() + ": " + std::to_string(keys.size()) +
              " LoRA weight pair(s) match no weight of the model, e.g. " + listed +
              " (a LoRA of another model family?)");
}

}  // namespace hybridiff::models
