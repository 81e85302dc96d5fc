// hybridiff metrics: the quality of a folder of generated images. Against the built-in Fashion-MNIST classifier
// (accuracy w.r.t. the class each file name asks for, and the Fréchet distance of its features to the test set's),
// and, with --reference, against a folder of reference images paired by file name (PSNR, LPIPS, Inception FID).
#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "cli.hpp"
#include "models/io/builtin.hpp"
#include "models/pipelines/class_conditional_pipeline.hpp"
#include "models/errors.hpp"
#include "models/eval/fashion_mnist.hpp"
#include "models/io/image_io.hpp"
#include "models/eval/image_metrics.hpp"

namespace hybridiff::cli {
namespace {

namespace fs = std::filesystem;

// The PNG files directly in `dir`, sorted by file name.
std::vector<fs::path> png_files(const fs::path& dir, const std::string& option) {
  std::error_code failure;
  if (!fs::is_directory(dir, failure)) throw error(dir.string() + " (" + option + "): not a folder");
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    auto extension = entry.path().extension().string();
    std::transform(extension.begin(), extension.end(), extension.begin(), [](unsigned char c) { return std::tolower(c); });
    if (entry.is_regular_file() && extension == ".png") files.push_back(entry.path());
  }
  if (files.empty()) throw error(dir.string() + " (" + option + "): holds no .png file");
  std::sort(files.begin(), files.end(), [](const fs::path& a, const fs::path& b) { return a.filename() < b.filename(); });
  return files;
}

// The class names as file names write them ("ankle boot" -> "ankle-boot"; coco names class prompts so).
std::vector<std::string> class_prefixes() {
  std::vector<std::string> prefixes;
  for (const auto& name : models::fashion_mnist_classes()) prefixes.push_back(models::class_file_stem(name));
  return prefixes;
}

// The label a generated file asks for: the name's prefix before the first '_' ("ankle-boot_0003.png" -> 9).
std::int64_t requested_class(const fs::path& file, const std::vector<std::string>& prefixes) {
  const auto stem = file.stem().string();
  const auto prefix = stem.substr(0, stem.find('_'));
  for (std::size_t label = 0; label < prefixes.size(); ++label)
    if (prefix == prefixes[label]) return static_cast<std::int64_t>(label);
  std::string valid;
  for (const auto& name : prefixes) valid += (valid.empty() ? "" : ", ") + name;
  throw error(file.string() + ": the file name's prefix '" + prefix +
              "' (before the first '_') names no Fashion-MNIST class; name files <class>_<anything>.png with <class> one "
              "of: " + valid);
}

// The classifier's 256-d features of `pixels` [N, 1, 32, 32] in [-1, 1], and its predicted labels; in batches.
struct classified {
  at::Tensor features;     // [N, 256] float32, CPU
  at::Tensor predictions;  // [N] int64, CPU
};
classified classify(models::FashionClassifier& classifier, const at::Tensor& pixels, const c10::Device& device) {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> features, predictions;
  for (std::int64_t start = 0; start < pixels.size(0); start += 1000) {
    auto batch = pixels.slice(0, start, std::min(start + 1000, pixels.size(0))).to(device);  // [n, 1, 32, 32]
    auto feature = classifier->features(batch);                                              // [n, 256]
    features.push_back(feature.to(torch::kCPU));
    predictions.push_back(classifier->fc2(feature).argmax(1).to(torch::kCPU));                // [n]
  }
  return {torch::cat(features), torch::cat(predictions)};
}

// JSON has no infinity: PSNR of identical images is written as the string "inf".
nlohmann::json json_number(double value) {
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  return value;
}

// One batch of same-shaped images for a network, or nullopt when the shapes differ.
std::optional<at::Tensor> stacked(const std::vector<at::Tensor>& images) {
  for (const auto& image : images)
    if (image.sizes() != images.front().sizes()) return std::nullopt;
  return torch::cat(images);
}

// Inception features [N, 2048] of images [1, C, H, W] (one batch when they share a shape).
at::Tensor inception_features(const models::fid_inception& inception, const std::vector<at::Tensor>& images) {
  if (auto batch = stacked(images)) return inception.features(*batch);
  std::vector<at::Tensor> rows;
  for (const auto& image : images) rows.push_back(inception.features(image));
  return torch::cat(rows);
}

}  // namespace

int run_metrics(const std::vector<std::string>& args) {
  command_line line;
  line.name = "metrics";
  line.usage = "hybridiff metrics --generated DIR [--reference DIR [--lpips-weights FILE] [--inception-weights FILE]] [options]";
  line.summary =
      "Measures a folder of generated PNGs. Fashion-MNIST images (32x32 or 28x28, grey or RGB; named\n"
      "<class>_<anything>.png with <class> one of t-shirt, trouser, pullover, dress, coat, sandal, shirt, sneaker,\n"
      "bag, ankle-boot): the built-in classifier's accuracy w.r.t. the requested class (overall and per class) and\n"
      "the feature FID (Frechet distance of the classifier's 256-d features to the Fashion-MNIST test set's).\n"
      "With --reference DIR (PNGs of the same file names): mean PSNR; LPIPS (alex, v0.1) with --lpips-weights;\n"
      "FID of the two folders with pytorch-fid's InceptionV3 with --inception-weights. See docs/models.md for the weight files.";
  // clang-format off
  line.options.add_options()
      ("generated", po::value<std::string>()->required()->value_name("DIR"), "folder of generated .png images")
      ("classifier", po::value<std::string>()->value_name("DIR"),
       "classifier folder (config.json + model.safetensors; default: the built-in fashion-classifier)")
      ("data", po::value<std::string>()->value_name("DIR"),
       "Fashion-MNIST folder for the feature FID (default: $HYBRIDIFF_FASHION_MNIST or /usr/share/datasets/fashion-mnist)")
      ("no-classifier", po::bool_switch(), "skip accuracy and feature FID (images of any size and name; needs --reference)")
      ("reference", po::value<std::string>()->value_name("DIR"), "folder of reference .png images, paired by file name")
      ("lpips-weights", po::value<std::string>()->value_name("FILE"),
       "LPIPS alex v0.1 weights (safetensors, the lpips package's key names); needs --reference")
      ("inception-weights", po::value<std::string>()->value_name("FILE"),
       "pytorch-fid InceptionV3 weights (safetensors of pt_inception-2015-12-05); FID against --reference")
      ("device", po::value<std::string>()->default_value("cpu")->value_name("DEV"), "cpu, cuda or cuda:N")
      ("json", po::value<std::string>()->value_name("FILE"), "also write every number to FILE (JSON)");
  // clang-format on
  auto parsed = parse(line, args);
  if (!parsed) return 0;
  const auto& values = *parsed;
  const bool use_classifier = !values["no-classifier"].as<bool>();
  const bool has_reference = values.count("reference") > 0;
  for (const char* option : {"lpips-weights", "inception-weights"})
    if (values.count(option) && !has_reference)
      throw usage_error(std::string("--") + option + " compares with the --reference folder: give --reference DIR");
  if (!use_classifier && !has_reference) throw usage_error("--no-classifier leaves nothing to measure without --reference DIR");
  if (!use_classifier && (values.count("classifier") || values.count("data")))
    throw usage_error("--classifier and --data are for the classifier metrics, which --no-classifier turns off");
  const auto device = parse_device(values["device"].as<std::string>());

  const fs::path generated_dir = values["generated"].as<std::string>();
  const auto generated_files = png_files(generated_dir, "--generated");
  std::vector<at::Tensor> generated;  // [1, C, H, W] in [0, 1] each
  for (const auto& file : generated_files) generated.push_back(models::load_png(file));
  nlohmann::json report = {{"generated", generated_dir.string()}, {"count", generated.size()}};
  std::cout << "generated: " << generated_dir.string() << " (" << generated.size() << " images)\n";
  std::cout << std::fixed;

  if (use_classifier) {
    const fs::path classifier_dir =
        values.count("classifier") ? fs::path(values["classifier"].as<std::string>()) : models::builtin_model_dir("fashion-classifier");
    const fs::path data_dir = values.count("data") ? fs::path(values["data"].as<std::string>()) : models::fashion_mnist_dir();
    // Check every name and size before the models load: a typo fails in milliseconds.
    const auto prefixes = class_prefixes();
    std::vector<std::int64_t> labels;
    std::vector<at::Tensor> pixels;
    for (std::size_t i = 0; i < generated.size(); ++i) {
      labels.push_back(requested_class(generated_files[i], prefixes));
      pixels.push_back(models::to_classifier_pixels(generated[i], generated_files[i].string()));
    }
    auto classifier = models::load_fashion_classifier(classifier_dir);
    classifier->to(device);
    const auto test_set = models::load_fashion_mnist(data_dir, /*train=*/false);
    spdlog::info("classifying {} generated and {} test images on {}", pixels.size(), test_set.images.size(0), device.str());
    const auto ours = classify(classifier, torch::cat(pixels), device);
    const auto reference = classify(classifier, models::to_model_pixels(test_set.images), device);
    const auto requested = torch::tensor(labels, torch::kLong);  // [N]
    const auto hits = ours.predictions.eq(requested);            // [N] bool
    const auto correct = hits.sum().item<std::int64_t>();
    const double accuracy = static_cast<double>(correct) / static_cast<double>(labels.size());
    const double feature_fid = models::frechet_distance(ours.features, reference.features);

    std::cout << "classifier: " << classifier_dir.string() << "\n";
    std::cout << "accuracy: " << std::setprecision(4) << accuracy << " (" << correct << " of " << labels.size()
              << " classified as requested)\n";
    nlohmann::json per_class = nlohmann::json::object();
    for (std::size_t label = 0; label < prefixes.size(); ++label) {
      const auto mine = requested.eq(static_cast<std::int64_t>(label));
      const auto count = mine.sum().item<std::int64_t>();
      if (count == 0) continue;
      const auto right = hits.logical_and(mine).sum().item<std::int64_t>();
      const double share = static_cast<double>(right) / static_cast<double>(count);
      per_class[prefixes[label]] = {{"count", count}, {"correct", right}, {"accuracy", share}};
      std::cout << "  " << std::left << std::setw(12) << prefixes[label] << std::right << std::setprecision(4) << share
                << " (" << right << "/" << count << ")\n";
    }
    std::cout << "feature FID (classifier features, 256-d) vs Fashion-MNIST test set (" << test_set.images.size(0)
              << " images): " << std::setprecision(4) << feature_fid << "\n";
    report["classifier"] = classifier_dir.string();
    report["accuracy"] = accuracy;
    report["correct"] = correct;
    report["per_class"] = per_class;
    report["data"] = data_dir.string();
    report["data_count"] = test_set.images.size(0);
    report["feature_fid"] = feature_fid;
  }

  if (has_reference) {
    const fs::path reference_dir = values["reference"].as<std::string>();
    const auto reference_files = png_files(reference_dir, "--reference");
    for (std::size_t i = 0; i < std::max(generated_files.size(), reference_files.size()); ++i) {
      const auto ours = i < generated_files.size() ? generated_files[i].filename().string() : std::string();
      const auto theirs = i < reference_files.size() ? reference_files[i].filename().string() : std::string();
      if (ours != theirs)
        throw error(generated_dir.string() + " and " + reference_dir.string() + " hold different file names (" +
                    std::to_string(generated_files.size()) + " and " + std::to_string(reference_files.size()) +
                    " PNGs); the first difference, in sorted order: " + (ours.empty() ? "(none)" : ours) + " vs " +
                    (theirs.empty() ? "(none)" : theirs));
    }
    std::vector<at::Tensor> references;
    for (std::size_t i = 0; i < reference_files.size(); ++i) {
      auto image = models::load_png(reference_files[i]);  // [1, C, H, W]
      if (image.size(2) != generated[i].size(2) || image.size(3) != generated[i].size(3))
        throw error(reference_files[i].string() + " is " + std::to_string(image.size(3)) + "x" + std::to_string(image.size(2)) +
                    " pixels, " + generated_files[i].string() + " " + std::to_string(generated[i].size(3)) + "x" +
                    std::to_string(generated[i].size(2)) + ": a pair must have one size");
      references.push_back(image);
    }
    // PSNR per pair; a grey image against an RGB one compares grey (mean of the channels) with grey.
    nlohmann::json psnr_each = nlohmann::json::object();
    double psnr_sum = 0.0;
    std::size_t identical = 0;
    for (std::size_t i = 0; i < references.size(); ++i) {
      auto a = generated[i], b = references[i];
      if (a.size(1) != b.size(1)) {
        a = a.mean(1, true);
        b = b.mean(1, true);
      }
      const double value = models::psnr(a, b);
      psnr_each[generated_files[i].filename().string()] = json_number(value);
      if (std::isinf(value)) ++identical;
      else psnr_sum += value;
    }
    // The mean over the pairs that differ (one identical pair would make it infinite); inf when all are identical.
    const auto differing = references.size() - identical;
    const double psnr_mean = differing == 0 ? std::numeric_limits<double>::infinity() : psnr_sum / static_cast<double>(differing);
    std::cout << "reference: " << reference_dir.string() << " (" << references.size() << " pairs, " << identical
              << " identical)\n";
    std::cout << "PSNR mean: " << std::setprecision(2) << psnr_mean << " dB (over the " << differing << " pairs that differ)\n";
    report["identical_pairs"] = identical;
    report["reference"] = reference_dir.string();
    report["pairs"] = references.size();
    report["psnr_mean"] = json_number(psnr_mean);
    report["psnr"] = psnr_each;

    if (values.count("lpips-weights")) {
      const auto weights = values["lpips-weights"].as<std::string>();
      const auto lpips = models::lpips_alex::load(weights, device);
      nlohmann::json lpips_each = nlohmann::json::object();
      double lpips_sum = 0.0;
      for (std::size_t i = 0; i < references.size(); ++i) {
        const double value = lpips.distance(generated[i], references[i]).item<double>();
        lpips_each[generated_files[i].filename().string()] = value;
        lpips_sum += value;
      }
      const double lpips_mean = lpips_sum / static_cast<double>(references.size());
      std::cout << "LPIPS (alex) mean: " << std::setprecision(4) << lpips_mean << "\n";
      report["lpips_weights"] = weights;
      report["lpips_mean"] = lpips_mean;
      report["lpips"] = lpips_each;
    }
    if (values.count("inception-weights")) {
      const auto weights = values["inception-weights"].as<std::string>();
      const auto inception = models::fid_inception::load(weights, device);
      spdlog::info("Inception features of {} + {} images on {}", generated.size(), references.size(), device.str());
      const double fid =
          models::frechet_distance(inception_features(inception, generated), inception_features(inception, references));
      std::cout << "FID (Inception pool features, 2048-d) vs reference: " << std::setprecision(4) << fid << "\n";
      report["inception_weights"] = weights;
      report["fid"] = fid;
    }
  }

  if (values.count("json")) {
    const auto path = values["json"].as<std::string>();
    std::ofstream file(path);
    if (!file) throw error(path + " (--json): cannot open for writing");
    file << report.dump(2) << "\n";
    if (!file.flush()) throw error(path + " (--json): write failed");
  }
  return 0;
}

}  // namespace hybridiff::cli
