#include "schedule/policy.hpp"

#include <algorithm>
#include <mutex>
#include <stdexcept>

#include "schedule/builtin_policies.hpp"

namespace hybridiff::schedule {
namespace {

[[noreturn]] void reject(const std::string& message) { throw std::invalid_argument(message); }
[[noreturn]] void reject_spec(const std::string& message) { throw policy_spec_error(message); }

std::string join(const std::vector<std::string>& items) {
  std::string joined;
  for (const auto& item : items) joined += (joined.empty() ? "" : ", ") + item;
  return joined;
}

struct registry_entry {
  std::string name, summary;
  policy_factory make;
};

class policy_registry {
 public:
  policy_registry() {
    entries_.push_back({"slope",
                        "the reference's detector: window from the first step whose rel-MAE slope over L steps is in "
                        "[0, eps), k steps long; else from step cap (L, eps, k, cap)",
                        make_slope_policy});
    entries_.push_back({"fixed", "one window [tau1, tau2] (tau1, tau2)", make_fixed_policy});
    entries_.push_back({"never", "CFG data parallelism on every step", make_never_policy});
    entries_.push_back(
        {"always", "CFG for warmup steps (the last one fills), then pipeline to the end (warmup)", make_always_policy});
  }
  void add(registry_entry entry) {
    std::lock_guard lock(mutex_);
    if (find(entry.name)) reject("a schedule policy named '" + entry.name + "' is already registered");
    entries_.push_back(std::move(entry));
  }
  std::optional<registry_entry> lookup(const std::string& name) {
    std::lock_guard lock(mutex_);
    if (const auto* entry = find(name)) return *entry;
    return std::nullopt;
  }
  std::vector<std::pair<std::string, std::string>> list() {
    std::lock_guard lock(mutex_);
    std::vector<std::pair<std::string, std::string>> names;
    for (const auto& entry : entries_) names.emplace_back(entry.name, entry.summary);
    return names;
  }

 private:
  const registry_entry* find(const std::string& name) const {
    for (const auto& entry : entries_)
      if (entry.name == name) return &entry;
    return nullptr;
  }
  std::mutex mutex_;
  std::vector<registry_entry> entries_;
};

policy_registry& registry() {
  static policy_registry instance;
  return instance;
}

}  // namespace

policy_parameters::policy_parameters(std::string policy, std::map<std::string, std::string> values)
    : policy_(std::move(policy)), values_(std::move(values)) {}

std::optional<std::string> policy_parameters::take(const std::string& key) {
  asked_.push_back(key);
  const auto found = values_.find(key);
  if (found == values_.end()) return std::nullopt;
  return found->second;
}

int policy_parameters::integer(const std::string& key, int fallback) {
  return optional_integer(key).value_or(fallback);
}

std::optional<int> policy_parameters::optional_integer(const std::string& key) {
  const auto text = take(key);
  if (!text) return std::nullopt;
  try {
    std::size_t used = 0;
    const long value = std::stol(*text, &used);
    if (used == text->size() && value >= -1'000'000 && value <= 1'000'000) return static_cast<int>(value);
  } catch (const std::exception&) {}
  reject_spec("policy " + policy_ + ": " + key + "='" + *text + "' is not an integer");
}

double policy_parameters::real(const std::string& key, double fallback) {
  const auto text = take(key);
  if (!text) return fallback;
  try {
    std::size_t used = 0;
    const double value = std::stod(*text, &used);
    if (used == text->size()) return value;
  } catch (const std::exception&) {}
  reject_spec("policy " + policy_ + ": " + key + "='" + *text + "' is not a number");
}

void policy_parameters::finish() const {
  for (const auto& [key, value] : values_) {
    if (std::find(asked_.begin(), asked_.end(), key) != asked_.end()) continue;
    reject_spec("policy " + policy_ + ": unknown parameter '" + key + "' (" +
                (asked_.empty() ? std::string("it takes none") : "it takes " + join(asked_)) + ")");
  }
}

void register_policy(const std::string& name, const std::string& summary, policy_factory make) {
  if (name.empty() || name.find_first_of(":,= ") != std::string::npos)
    reject("schedule policy name '" + name + "' must be non-empty without ':', ',', '=' or spaces");
  if (!make) reject("schedule policy '" + name + "' has no factory");
  registry().add({name, summary, std::move(make)});
}

std::vector<std::pair<std::string, std::string>> registered_policies() { return registry().list(); }

std::pair<std::string, std::map<std::string, std::string>> parse_policy_spec(const std::string& spec) {
  const auto colon = spec.find(':');
  std::pair<std::string, std::map<std::string, std::string>> parsed{spec.substr(0, colon), {}};
  if (parsed.first.empty()) reject_spec("policy '" + spec + "': the name is empty (e.g. slope:L=12,eps=4e-4)");
  if (colon == std::string::npos) return parsed;
  std::size_t begin = colon + 1;
  while (begin <= spec.size()) {
    const auto end = std::min(spec.find(',', begin), spec.size());
    const auto item = spec.substr(begin, end - begin);
    const auto equals = item.find('=');
    if (equals == std::string::npos || equals == 0 || equals + 1 == item.size())
      reject_spec("policy '" + spec + "': '" + item + "' is not KEY=VALUE");
    if (!parsed.second.emplace(item.substr(0, equals), item.substr(equals + 1)).second)
      reject_spec("policy '" + spec + "': " + item.substr(0, equals) + " is given twice");
    begin = end + 1;
  }
  return parsed;
}

std::unique_ptr<schedule_policy> make_policy(const std::string& spec, const policy_context& context) {
  auto [name, values] = parse_policy_spec(spec);
  const auto entry = registry().lookup(name);
  if (!entry) {
    std::vector<std::string> names;
    for (const auto& [known, summary] : registry().list()) names.push_back(known);
    reject_spec("unknown schedule policy '" + name + "' (registered: " + join(names) + ")");
  }
  policy_parameters parameters(name, std::move(values));
  auto policy = entry->make(parameters, context);
  parameters.finish();
  if (!policy) reject("schedule policy '" + name + "': its factory returned no policy");
  return policy;
}

}  // namespace hybridiff::schedule
