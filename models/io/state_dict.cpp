#include "models/io/state_dict.hpp"

#include <map>

#include <torch/torch.h>

#include "models/errors.hpp"

namespace hybridiff::models {
namespace {

std::string join_capped(const std::vector<std::string>& items, std::size_t cap = 12) {
  std::string text;
  for (std::size_t i = 0; i < items.size() && i < cap; ++i) text += (i ? ", " : "") + items[i];
  if (items.size() > cap) text += ", ... (" + std::to_string(items.size() - cap) + " more)";
  return text;
}

std::string shape_text(c10::IntArrayRef shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) text += (i ? "," : "") + std::to_string(shape[i]);
  return text + "]";
}

at::Tensor placed(const at::Tensor& source, at::ScalarType target_dtype, const load_options& options) {
  auto dtype = at::isFloatingType(source.scalar_type()) && options.dtype ? *options.dtype : target_dtype;
  return source.to(options.device, dtype);
}

}  // namespace

void load_state_dict(torch::nn::Module& module, const checkpoint& weights, const load_options& options) {
  std::map<std::string, at::Tensor> targets;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) targets.emplace(item.key(), item.value());
  for (const auto& item : module.named_buffers(/*recurse=*/true)) targets.emplace(item.key(), item.value());

  bool strip_prefix = !options.optional_prefix.empty();
  for (const auto& entry : weights.entries())
    if (entry.name.rfind(options.optional_prefix, 0) == 0) strip_prefix = false;
  auto checkpoint_key = [&](const std::string& name) {
    return strip_prefix && name.rfind(options.optional_prefix, 0) == 0 ? name.substr(options.optional_prefix.size()) : name;
  };
  std::map<std::string, at::Tensor> by_checkpoint_key;
  for (const auto& [name, target] : targets) by_checkpoint_key.emplace(checkpoint_key(name), target);
  targets = std::move(by_checkpoint_key);

  std::vector<std::string> missing, unexpected, mismatched;
  for (const auto& [name, target] : targets) {
    const tensor_entry* entry = weights.find(name);
    if (entry == nullptr) {
      missing.push_back(name);
      continue;
    }
    if (c10::IntArrayRef(entry->shape) != target.sizes()) {
      mismatched.push_back(name + " (checkpoint " + shape_text(entry->shape) + " " + entry->dtype_name + ", model " +
                           shape_text(target.sizes()) + ")");
      continue;
    }
    bool both_floating = at::isFloatingType(entry->dtype) && at::isFloatingType(target.scalar_type());
    if (!both_floating && entry->dtype != target.scalar_type())
      mismatched.push_back(name + " (checkpoint dtype " + entry->dtype_name + ", model dtype " +
                           c10::toString(target.scalar_type()) + ")");
  }
  for (const auto& entry : weights.entries())
    if (targets.find(entry.name) == targets.end()) unexpected.push_back(entry.name);

  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    std::string files;
    for (const auto& path : weights.files()) files += (files.empty() ? "" : ", ") + path.string();
    std::string message = files + ": checkpoint does not fit the model:";
    if (!missing.empty()) message += "\n  missing keys (" + std::to_string(missing.size()) + "): " + join_capped(missing);
    if (!unexpected.empty())
      message += "\n  unexpected keys (" + std::to_string(unexpected.size()) + "): " + join_capped(unexpected);
    if (!mismatched.empty())
      message += "\n  mismatched (" + std::to_string(mismatched.size()) + "): " + join_capped(mismatched);
    throw error(message);
  }

  torch::NoGradGuard no_grad;
  for (auto& [name, target] : targets) target.set_data(placed(weights.tensor(name), target.scalar_type(), options));
}

load_options component_options(const model_folder& folder, const std::string& name, load_options options) {
  options.weights = folder.get(name).weights;
  return options;
}

checkpoint component_weights(const std::filesystem::path& component_dir, const load_options& options) {
  return options.weights ? *options.weights : checkpoint::open(find_component_weights(component_dir, options.variant));
}

void place_module(torch::nn::Module& module, const load_options& options) {
  torch::NoGradGuard no_grad;
  for (auto& item : module.named_parameters(true)) item.value().set_data(placed(item.value(), item.value().scalar_type(), options));
  for (auto& item : module.named_buffers(true)) item.value().set_data(placed(item.value(), item.value().scalar_type(), options));
}

}  // namespace hybridiff::models
