#include <iomanip>
#include <iostream>

#include "cli.hpp"
#include "models/io/inventory.hpp"
#include "models/io/single_file.hpp"

namespace hybridiff::cli {

int run_info(const std::vector<std::string>& args) {
  command_line line;
  line.name = "info";
  line.usage = "hybridiff info [options] DIR|FILE.safetensors";
  line.summary =
      "Lists the components of a diffusers folder (model_index.json), of a single component folder\n"
      "(config.json) or of a single-file SDXL/SD3 checkpoint: name, class, weight dtypes and the exact parameter "
      "count\n"
      "(elements of all floating-point tensors), then the total. Reads only the safetensors headers.";
  // clang-format off
  line.options.add_options()
      ("dir", po::value<std::string>()->required()->value_name("DIR"), "the model folder or single file")
      ("config-from", po::value<std::string>()->value_name("DIR"),
       "a single file's configs and tokenizers (default: its family's repository in the Hugging Face cache)");
  // clang-format on
  line.positional.add("dir", 1);
  auto values = parse(line, args);
  if (!values) return 0;

  const auto folder =
      models::open_model((*values)["dir"].as<std::string>(),
                         values->count("config-from") ? (*values)["config-from"].as<std::string>() : std::string());
  const auto summaries = models::summarize(folder);
  std::cout << folder.dir().string();
  if (!folder.pipeline_class().empty()) std::cout << " (" << folder.pipeline_class() << ")";
  std::cout << "\n";
  std::cout << std::left << std::setw(18) << "component" << std::setw(34) << "class" << std::setw(12) << "dtypes"
            << std::right << std::setw(14) << "parameters" << "\n";
  std::int64_t total = 0;
  for (const auto& summary : summaries) {
    std::string dtypes;
    for (const auto& dtype : summary.dtypes) dtypes += (dtypes.empty() ? "" : ",") + dtype;
    std::cout << std::left << std::setw(18) << summary.name << std::setw(34) << summary.class_name << std::setw(12)
              << (dtypes.empty() ? "-" : dtypes) << std::right << std::setw(14) << summary.parameter_count << "\n";
    total += summary.parameter_count;
  }
  std::cout << std::left << std::setw(64) << "total" << std::right << std::setw(14) << total << "\n";
  return 0;
}

}  // namespace hybridiff::cli
