// Trains the built-in models on Fashion-MNIST (Debian `dataset-fashion-mnist`) with LibTorch.
//   train_builtin classifier --out models/builtin/fashion-classifier [--epochs 5] [--device cpu|cuda] [--seed 0]
// writes DIR/config.json and DIR/model.safetensors, logging the test-set accuracy after every epoch.
#include <fstream>
#include <iostream>

#include <boost/program_options.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "models/errors.hpp"
#include "models/fashion_mnist.hpp"
#include "models/safetensors.hpp"

namespace po = boost::program_options;
using namespace hybridiff;

namespace {

int train_classifier(const po::variables_map& values) {
  const std::filesystem::path out = values["out"].as<std::string>();
  const auto device = c10::Device(values["device"].as<std::string>());
  const auto epochs = values["epochs"].as<int>();
  const auto batch = values["batch"].as<std::int64_t>();
  torch::manual_seed(values["seed"].as<std::uint64_t>());
  const auto data = values["data"].as<std::string>();
  auto train = models::load_fashion_mnist(data, true);
  auto test = models::load_fashion_mnist(data, false);
  spdlog::info("Fashion-MNIST from {}: {} training, {} test images", data, train.images.size(0), test.images.size(0));

  models::FashionClassifier classifier;
  classifier->to(device);
  torch::optim::Adam optimizer(classifier->parameters(), torch::optim::AdamOptions(values["lr"].as<double>()));
  const auto pixels = models::to_model_pixels(train.images);  // [60000, 1, 32, 32]
  for (int epoch = 0; epoch < epochs; ++epoch) {
    classifier->train();
    auto order = torch::randperm(pixels.size(0), torch::kLong);
    double loss_sum = 0;
    std::int64_t batches = 0;
    for (std::int64_t start = 0; start < pixels.size(0); start += batch) {
      auto index = order.slice(0, start, std::min(start + batch, pixels.size(0)));
      auto x = pixels.index_select(0, index).to(device);
      auto y = train.labels.index_select(0, index).to(device);
      optimizer.zero_grad();
      auto loss = torch::cross_entropy_loss(classifier->forward(x), y);
      loss.backward();
      optimizer.step();
      loss_sum += loss.item<double>();
      ++batches;
    }
    classifier->eval();
    classifier->to(torch::kCPU);
    const double accuracy = models::classifier_accuracy(classifier, test.images, test.labels);
    classifier->to(device);
    spdlog::info("epoch {}/{}: mean loss {:.4f}, test accuracy {:.4f}", epoch + 1, epochs, loss_sum / batches, accuracy);
    for (auto& group : optimizer.param_groups()) {  // a step decay per epoch
      auto& adam = static_cast<torch::optim::AdamOptions&>(group.options());
      adam.lr(adam.lr() * values["lr-decay"].as<double>());
    }
  }
  classifier->to(torch::kCPU);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& item : classifier->named_parameters()) tensors.emplace_back(item.key(), item.value().detach());
  std::filesystem::create_directories(out);
  models::save_safetensors(out / "model.safetensors", tensors);
  std::ofstream(out / "config.json") << "{\n  \"_class_name\": \"FashionClassifier\",\n  \"classes\": 10,\n"
                                        "  \"sample_size\": 32\n}\n";
  spdlog::info("wrote {}", out.string());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  po::options_description options("train_builtin classifier --out DIR [options]");
  // clang-format off
  options.add_options()
      ("help,h", "print this help")
      ("what", po::value<std::string>()->required(), "classifier")
      ("out", po::value<std::string>()->required(), "folder to write config.json and model.safetensors to")
      ("data", po::value<std::string>()->default_value(models::fashion_mnist_dir().string()), "Fashion-MNIST folder")
      ("epochs", po::value<int>()->default_value(5), "passes over the training set")
      ("batch", po::value<std::int64_t>()->default_value(128), "batch size")
      ("lr", po::value<double>()->default_value(1e-3), "Adam learning rate")
      ("lr-decay", po::value<double>()->default_value(0.6), "learning rate factor after every epoch")
      ("seed", po::value<std::uint64_t>()->default_value(0), "seed of the initial weights and the batch order")
      ("device", po::value<std::string>()->default_value("cpu"), "cpu, cuda or cuda:N");
  // clang-format on
  po::positional_options_description what;
  what.add("what", 1);
  try {
    po::variables_map values;
    po::store(po::command_line_parser(argc, argv).options(options).positional(what).run(), values);
    if (values.count("help")) {
      std::cout << options << "\n";
      return 0;
    }
    po::notify(values);
    if (values["what"].as<std::string>() != "classifier")
      throw po::error("'" + values["what"].as<std::string>() + "': train_builtin trains: classifier");
    return train_classifier(values);
  } catch (const po::error& bad) {
    std::cerr << "train_builtin: " << bad.what() << "\n";
    return 2;
  } catch (const std::exception& failure) {
    std::cerr << "train_builtin: error: " << failure.what() << "\n";
    return 1;
  }
}
