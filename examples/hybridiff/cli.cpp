#include "cli.hpp"

#include <fstream>
#include <iostream>

#include "models/errors.hpp"
#include "runtime/logging.hpp"

namespace hybridiff::cli {

std::optional<po::variables_map> parse(command_line& line, const std::vector<std::string>& args) {
  po::options_description common("Common options");
  common.add_options()("help,h", "print this help and exit")(
      "config", po::value<std::string>()->value_name("FILE"),
      "read options from an INI file (key = value, keys are long option names); the command line wins")(
      "log-level", po::value<std::string>()->default_value("info")->value_name("LEVEL"),
      "trace, debug, info, warn, error, critical or off");
  po::options_description all;
  all.add(line.options).add(common);

  po::variables_map values;
  try {
    po::store(po::command_line_parser(args).options(all).positional(line.positional).run(), values);
    if (values.count("help")) {
      std::cout << "Usage: " << line.usage << "\n\n" << line.summary << "\n\n" << all << "\n";
      return std::nullopt;
    }
    if (values.count("config")) {
      const auto path = values["config"].as<std::string>();
      std::ifstream file(path);
      if (!file) throw usage_error("--config: cannot open '" + path + "'");
      po::store(po::parse_config_file(file, all, /*allow_unregistered=*/false), values);
    }
    po::notify(values);
  } catch (const po::error& bad) {
    throw usage_error(bad.what());
  }
  try {
    runtime::configure_logging(values["log-level"].as<std::string>());
  } catch (const error& bad) {
    throw usage_error(bad.what());
  }
  return values;
}

}  // namespace hybridiff::cli
