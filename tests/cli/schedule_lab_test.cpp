// The schedule lab through the binary, as a user drives it: policies chosen on the command line, traces written by
// generate, a cost profile from them, simulate and sweep (tables, plots, refusals, the quality side), and the cost
// model checked against measured runs. The built-in model on the CPU (40 steps: its detector's window fits).
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "actors/hybridiff.hpp"
#include "cli/run_binary.hpp"
#include "test_support.hpp"

namespace hybridiff {
namespace {

using test::quoted;
using test::run_hybridiff;

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string modes_of(const std::filesystem::path& trace) {
  std::string modes;
  for (const auto& row : read_trace_csv(trace.string())) modes += row.mode == "cfg-pipeline" ? 'P' : row.mode.front();
  return modes;
}

double traced_ms(const std::filesystem::path& trace) {
  double total = 0;
  for (const auto& row : read_trace_csv(trace.string())) total += row.step_ms;
  return total;
}

// Traces of every mode, written once: the profile's runs (profile/) and a second, independent set (check/).
class ScheduleLab : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::temp_dir;
    for (const char* folder : {"cfg", "profile", "check"}) std::filesystem::create_directories(path(folder));
    for (const char* set : {"profile", "check"})
      for (const char* mode : {"none", "cfg", "asyncdiff", "hybrid"})
        generate(mode, 1, path(set) / (std::string(mode) + ".csv"));
    for (int seed : {2, 3}) generate("cfg", seed, path("cfg") / ("seed" + std::to_string(seed) + ".csv"));
  }
  static void TearDownTestSuite() { delete dir_; }

  static std::filesystem::path path(const std::string& name) { return dir_->path() / name; }
  static void generate(const std::string& mode, int seed, const std::filesystem::path& trace) {
    auto run = run_hybridiff("generate --prompt sneaker --steps 40 --seed " + std::to_string(seed) + " --parallel " +
                             mode + " --trace " + quoted(trace) + " --output " + quoted(path("image.png")));
    ASSERT_EQ(run.exit_code, 0) << run.output;
  }
  static std::string profile_path() {
    const auto out = path("profile.json");
    if (!std::filesystem::exists(out)) {
      auto made = run_hybridiff("schedule profile --model built-in --out " + quoted(out) + " " +
                                quoted(path("profile/none.csv")) + " " + quoted(path("profile/cfg.csv")) + " " +
                                quoted(path("profile/asyncdiff.csv")));
      EXPECT_EQ(made.exit_code, 0) << made.output;
    }
    return quoted(out);
  }
  static inline test::temp_dir* dir_ = nullptr;
};

TEST_F(ScheduleLab, PoliciesAreListedAndChosenOnTheCommandLine) {
  auto listed = run_hybridiff("schedule policies");
  ASSERT_EQ(listed.exit_code, 0) << listed.output;
  for (const char* name : {"slope\t", "fixed\t", "never\t", "always\t"})
    EXPECT_NE(listed.output.find(name), std::string::npos) << listed.output;
  const auto request = "generate --prompt sneaker --steps 40 --output " + quoted(path("policy.png")) + " --trace " +
                       quoted(path("policy.csv"));
  auto fixed = run_hybridiff(request + " --policy fixed:tau1=10,tau2=14");
  ASSERT_EQ(fixed.exit_code, 0) << fixed.output;
  EXPECT_EQ(modes_of(path("policy.csv")), std::string(10, 'c') + "fpppp" + std::string(25, 'c'));
  auto never = run_hybridiff(request + " --policy never");
  ASSERT_EQ(never.exit_code, 0) << never.output;
  EXPECT_EQ(modes_of(path("policy.csv")), std::string(40, 'c'));
  // The detector by spec decides as its flags do.
  auto by_spec = run_hybridiff(request + " --policy slope:L=6,eps=1e-3,k=4,cap=20");
  ASSERT_EQ(by_spec.exit_code, 0) << by_spec.output;
  const auto spec_modes = modes_of(path("policy.csv"));
  auto by_flags = run_hybridiff(request + " --L_slope 6 --eps_slope 1e-3 --k 4 --tau_cap 20");
  ASSERT_EQ(by_flags.exit_code, 0) << by_flags.output;
  EXPECT_EQ(modes_of(path("policy.csv")), spec_modes);

  auto unknown = run_hybridiff(request + " --policy sometimes");
  EXPECT_EQ(unknown.exit_code, 2) << unknown.output;
  EXPECT_NE(unknown.output.find("unknown schedule policy 'sometimes' (registered: slope, fixed, never, always"),
            std::string::npos)
      << unknown.output;
  auto parameter = run_hybridiff(request + " --policy slope:window=3");
  EXPECT_EQ(parameter.exit_code, 2) << parameter.output;
  EXPECT_NE(parameter.output.find("policy slope: unknown parameter 'window' (it takes L, eps, k, cap)"),
            std::string::npos)
      << parameter.output;
  auto range = run_hybridiff(request + " --policy fixed:tau1=30,tau2=45");
  EXPECT_EQ(range.exit_code, 2) << range.output;
  EXPECT_NE(range.output.find("need 0 <= tau1 <= tau2 < steps (40)"), std::string::npos) << range.output;
  auto mode = run_hybridiff(request + " --parallel cfg --policy never");
  EXPECT_EQ(mode.exit_code, 2) << mode.output;
  EXPECT_NE(mode.output.find("--policy applies to --parallel hybrid"), std::string::npos) << mode.output;
  auto both = run_hybridiff(request + " --policy never --tau1 3 --tau2 5");
  EXPECT_EQ(both.exit_code, 2) << both.output;
  EXPECT_NE(both.output.find("--policy and --tau1/--tau2 exclude each other"), std::string::npos) << both.output;
}

TEST_F(ScheduleLab, TheCostModelPredictsEveryModeWithinAFactorOfTwo) {
  // The profile comes from one set of runs; each run of the other set is priced by its own schedule and compared
  // with its measured step times. Generous: a loaded machine's timings wander, but a wrong model (a missing or
  // misattributed phase) is off by more.
  const auto profile = profile_path();
  nlohmann::json costs = nlohmann::json::parse(read_file(path("profile.json")));
  for (const char* phase : {"cfg", "fill", "pipeline"}) EXPECT_TRUE(costs["step_ms"].contains(phase)) << costs.dump();
  for (const char* mode : {"none", "cfg", "asyncdiff", "hybrid"}) {
    const auto trace = path("check") / (std::string(mode) + ".csv");
    const int workers = std::string(mode) == "none" ? 1 : 2;
    double predicted = 0;
    for (const auto& row : read_trace_csv(trace.string()))
      predicted += costs["step_ms"][row.mode][std::to_string(workers)].get<double>();
    const double measured = traced_ms(trace);
    std::cout << mode << ": predicted " << predicted << " ms, measured " << measured << " ms\n";
    EXPECT_GT(predicted / measured, 0.5) << mode;
    EXPECT_LT(predicted / measured, 2.0) << mode;
  }
  // simulate prices a replayed schedule the same way: the hybrid run's own window, replayed on its metrics.
  auto simulated = run_hybridiff("schedule simulate --trace " + quoted(path("check/cfg.csv")) +
                                 " --policy fixed:tau1=10,tau2=15 --cost " + profile + " --workers 2");
  ASSERT_EQ(simulated.exit_code, 0) << simulated.output;
  std::smatch found;
  ASSERT_TRUE(std::regex_search(simulated.output, found, std::regex("\\{\"predicted_ms\":([0-9.e+]+)")))
      << simulated.output;
  const double expected = 34 * costs["step_ms"]["cfg"]["2"].get<double>() +
                          costs["step_ms"]["fill"]["2"].get<double>() +
                          5 * costs["step_ms"]["pipeline"]["2"].get<double>();
  EXPECT_NEAR(std::stod(found[1]), expected, 1e-6 * expected);
}

TEST_F(ScheduleLab, SimulateReplaysATraceAndRefusesWhatDoesNotFit) {
  const auto trace = quoted(path("cfg/seed2.csv"));
  auto by_spec = run_hybridiff("schedule simulate --trace " + trace + " --policy slope:L=8,eps=4e-4,k=5,cap=25");
  auto by_flags = run_hybridiff("schedule simulate --trace " + trace + " --L_slope 8 --tau_cap 25");
  ASSERT_EQ(by_spec.exit_code, 0) << by_spec.output;
  ASSERT_EQ(by_flags.exit_code, 0) << by_flags.output;
  EXPECT_EQ(by_spec.output, by_flags.output);
  EXPECT_NE(by_spec.output.find("39,cfg"), std::string::npos) << by_spec.output;

  auto steps = run_hybridiff("schedule simulate --trace " + trace + " --steps 50");
  EXPECT_EQ(steps.exit_code, 2) << steps.output;
  EXPECT_NE(steps.output.find("--steps 50 but the trace"), std::string::npos) << steps.output;
  EXPECT_NE(steps.output.find("has 40 steps"), std::string::npos) << steps.output;
  // A profile without the window's steps cannot price a hybrid schedule.
  std::ofstream(path("partial.json")) << R"({"step_ms": {"cfg": {"1": 60, "2": 55}}})";
  auto partial = run_hybridiff("schedule simulate --trace " + trace + " --policy fixed:tau1=5,tau2=9 --cost " +
                               quoted(path("partial.json")));
  EXPECT_EQ(partial.exit_code, 1) << partial.output;
  EXPECT_NE(partial.output.find("the cost profile has no 'fill' step on 2 worker(s) (it has: cfg@1, cfg@2)"),
            std::string::npos)
      << partial.output;
  std::ofstream(path("corrupt.json")) << R"({"step_ms": {"cfg": {"two": 55}}})";
  auto corrupt = run_hybridiff("schedule simulate --trace " + trace + " --cost " + quoted(path("corrupt.json")));
  EXPECT_EQ(corrupt.exit_code, 1) << corrupt.output;
  EXPECT_NE(corrupt.output.find("step_ms.cfg.two: the key must be a worker count"), std::string::npos)
      << corrupt.output;
  std::ofstream(path("not-a-trace.csv")) << "a,b\n1,2\n";
  auto foreign = run_hybridiff("schedule simulate --trace " + quoted(path("not-a-trace.csv")));
  EXPECT_EQ(foreign.exit_code, 1) << foreign.output;
  EXPECT_NE(foreign.output.find("not a hybridiff trace (no 'step' column)"), std::string::npos) << foreign.output;
}

TEST_F(ScheduleLab, SweepWritesTablesAndPlotsAndListsRefusedSettings) {
  const auto profile = profile_path();
  const auto sweep = "schedule sweep --traces " + quoted(path("cfg")) + " --cost " + profile;
  auto table = run_hybridiff(sweep + " --grid \"L=4,20 k=3,5\" --out " + quoted(path("sweep.json")) + " --plot " +
                             quoted(path("sweep.png")));
  ASSERT_EQ(table.exit_code, 0) << table.output;
  const auto json = nlohmann::json::parse(read_file(path("sweep.json")));
  EXPECT_EQ(json["traces"], 2);
  EXPECT_EQ(json["steps"], 40);
  ASSERT_EQ(json["settings"].size(), 4u);
  int refused = 0;
  for (const auto& setting : json["settings"]) {
    if (setting.contains("refused")) {
      ++refused;
      EXPECT_EQ(setting["parameters"]["L"], "20");  // L must be below cap (15 by default)
      EXPECT_NE(setting["refused"].get<std::string>().find("must be less than cap=15"), std::string::npos);
    } else {
      EXPECT_GT(setting["mean_speedup"].get<double>(), 0);
      EXPECT_LE(setting["min_speedup"].get<double>(), setting["max_speedup"].get<double>());
      EXPECT_GE(setting["mean_window_steps"].get<double>(), setting["parameters"]["k"] == "3" ? 3.0 : 5.0);
    }
  }
  EXPECT_EQ(refused, 2);
  EXPECT_EQ(read_file(path("sweep.png")).substr(1, 3), "PNG");
  auto csv = run_hybridiff(sweep + " --grid \"k=3,5\"");
  ASSERT_EQ(csv.exit_code, 0) << csv.output;
  EXPECT_NE(csv.output.find("spec,mean_speedup,min_speedup,max_speedup,mean_window_steps,refused\n\"slope:k=3\","),
            std::string::npos)
      << csv.output;

  auto key = run_hybridiff(sweep + " --grid \"L=4 width=3\"");
  EXPECT_EQ(key.exit_code, 2) << key.output;
  EXPECT_NE(key.output.find("policy slope: unknown parameter 'width'"), std::string::npos) << key.output;
  auto grid = run_hybridiff(sweep + " --grid \"L\"");
  EXPECT_EQ(grid.exit_code, 2) << grid.output;
  EXPECT_NE(grid.output.find("--grid: 'L' is not KEY=V1,V2,..."), std::string::npos) << grid.output;
  auto out = run_hybridiff(sweep + " --grid \"k=3\" --out " + quoted(path("sweep.txt")));
  EXPECT_EQ(out.exit_code, 2) << out.output;
  EXPECT_NE(out.output.find("use a .csv or .json file"), std::string::npos) << out.output;
  // A trace of another step count in the folder.
  std::filesystem::create_directories(path("mixed"));
  std::filesystem::copy_file(path("cfg/seed2.csv"), path("mixed/a.csv"));
  auto shorter = run_hybridiff("generate --prompt sneaker --steps 35 --parallel cfg --trace " +
                               quoted(path("mixed/b.csv")) + " --output " + quoted(path("image.png")));
  ASSERT_EQ(shorter.exit_code, 0) << shorter.output;
  auto mixed = run_hybridiff("schedule sweep --traces " + quoted(path("mixed")) + " --cost " + profile + " --grid k=3");
  EXPECT_EQ(mixed.exit_code, 1) << mixed.output;
  EXPECT_NE(mixed.output.find("the traces of a sweep must have one step count"), std::string::npos) << mixed.output;

  // Traces name their model (generate writes the pipeline class); a trace of another model is refused by sweep,
  // by profile, and by --measure (which generates with the built-in model).
  const auto trace = read_file(path("cfg/seed2.csv"));
  EXPECT_NE(trace.find(",tau1,tau2,model\n"), std::string::npos) << trace.substr(0, 200);
  EXPECT_NE(trace.find(",HybridiffClassConditionalPipeline\n"), std::string::npos) << trace.substr(0, 400);
  std::filesystem::create_directories(path("models"));
  std::filesystem::copy_file(path("cfg/seed2.csv"), path("models/a.csv"));
  std::ofstream(path("models/b.csv")) << std::regex_replace(trace, std::regex("HybridiffClassConditionalPipeline"),
                                                            "StableDiffusionXLPipeline");
  auto models =
      run_hybridiff("schedule sweep --traces " + quoted(path("models")) + " --cost " + profile + " --grid k=3");
  EXPECT_EQ(models.exit_code, 1) << models.output;
  EXPECT_NE(models.output.find("the traces of a sweep must come from one model: "), std::string::npos) << models.output;
  EXPECT_NE(models.output.find("b.csv of StableDiffusionXLPipeline"), std::string::npos) << models.output;
  auto profiled = run_hybridiff("schedule profile --out " + quoted(path("mixed.json")) + " " +
                                quoted(path("models/a.csv")) + " " + quoted(path("models/b.csv")));
  EXPECT_EQ(profiled.exit_code, 1) << profiled.output;
  EXPECT_NE(profiled.output.find("the traces of a profile must come from one model"), std::string::npos)
      << profiled.output;
  std::filesystem::remove(path("models/a.csv"));
  auto measured = run_hybridiff("schedule sweep --traces " + quoted(path("models")) + " --cost " + profile +
                                " --grid k=3 --measure 1");
  EXPECT_EQ(measured.exit_code, 1) << measured.output;
  EXPECT_NE(measured.output.find("is a trace of StableDiffusionXLPipeline"), std::string::npos) << measured.output;
}

TEST_F(ScheduleLab, MeasureAddsPsnrAndAccuracyPerSetting) {
  auto measured = run_hybridiff("schedule sweep --traces " + quoted(path("cfg")) + " --cost " + profile_path() +
                                " --grid \"k=3,8\" --L_slope 8 --tau_cap 25 --measure 1 --out " +
                                quoted(path("measured.json")) + " --plot " + quoted(path("measured.png")));
  ASSERT_EQ(measured.exit_code, 0) << measured.output;
  const auto json = nlohmann::json::parse(read_file(path("measured.json")));
  EXPECT_EQ(json["measured_images"], 1);
  ASSERT_EQ(json["settings"].size(), 2u);
  for (const auto& setting : json["settings"]) {
    // A window changes the image (stale activations), but it stays the same picture: well above noise.
    EXPECT_GT(setting["psnr_db"].get<double>(), 15.0) << setting.dump();
    EXPECT_LT(setting["psnr_db"].get<double>(), 100.0) << setting.dump();
    EXPECT_GE(setting["accuracy"].get<double>(), 0.0);
    EXPECT_LE(setting["accuracy"].get<double>(), 1.0);
  }
  // A longer window departs further from the sequential image.
  EXPECT_GT(json["settings"][0]["psnr_db"].get<double>(), json["settings"][1]["psnr_db"].get<double>());
  EXPECT_EQ(read_file(path("measured.png")).substr(1, 3), "PNG");
}

}  // namespace
}  // namespace hybridiff
