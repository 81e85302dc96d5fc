// Trains the built-in models on Fashion-MNIST (Debian `dataset-fashion-mnist`) with LibTorch.
//   train_builtin classifier --out models/builtin/fashion-classifier [--epochs 5] [--device cpu|cuda] [--seed 0]
// writes DIR/config.json and DIR/model.safetensors, logging the test-set accuracy after every epoch.
//   train_builtin diffusion --out models/builtin/fashion-diffusion --device cuda --steps N [--minutes M]
// writes a HybridiffClassConditionalPipeline folder (EMA weights in fp16) and DIR/training.json, then samples 50
// images per class with guidance and reports the classifier's accuracy on them (--classifier DIR).
//   train_builtin evaluate --out DIR --classifier DIR [--eval-guidance G] [--eval-steps N] [--eval-per-class K]
// samples an existing folder the same way and prints the result as JSON.
#include <chrono>
#include <cmath>
#include <fstream>
#include <iostream>

#include <boost/program_options.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "models/pipelines/class_conditional_pipeline.hpp"
#include "models/errors.hpp"
#include "models/eval/fashion_mnist.hpp"
#include "models/io/image_io.hpp"
#include "models/io/safetensors.hpp"
#include "models/pipelines/sampler.hpp"
#include "schedule/tau_controller.hpp"

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

// Samples `per_class` images of every class with classifier-free guidance (all classes in one batch), returns the
// pixels [classes * per_class, 1, H, W] in [-1, 1] and fills `rel_mae` with the mean rel-MAE of ε_c vs ε_u per step.
at::Tensor sample_every_class(models::class_conditional_pipeline& pipeline, std::int64_t per_class, std::int64_t steps,
                              double guidance, std::uint64_t seed, std::vector<double>& rel_mae) {
  torch::NoGradGuard no_grad;
  const auto classes = static_cast<std::int64_t>(pipeline.class_names().size());
  const auto device = pipeline.placement().device;
  std::vector<at::Tensor> positive;
  for (std::int64_t label = 0; label < classes; ++label) {
    auto context = pipeline.context_of(label);
    for (std::int64_t i = 0; i < per_class; ++i) positive.push_back(context);
  }
  auto positive_context = torch::cat(positive, 0);
  auto null_context = pipeline.context_of(classes).expand_as(positive_context);
  models::branch_conditioning both{torch::cat({null_context, positive_context}, 0), {}, {}};
  auto sampler = pipeline.make_sampler("");
  sampler->set_timesteps(steps);
  const auto n = positive_context.size(0);
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto plan = pipeline.plan({});  // the folder's sample size
  auto shape = pipeline.latent_shape(plan.height, plan.width);
  shape[0] = n;
  auto x = torch::randn(shape, generator).to(device) * sampler->init_noise_sigma();
  for (std::int64_t i = 0; i < steps; ++i) {
    auto input = sampler->scale_model_input(torch::cat({x, x}, 0), i);
    auto eps = pipeline.predict(input, sampler->timesteps()[i].to(device), both).chunk(2, 0);
    rel_mae.push_back(schedule::relative_mae((eps[1] - eps[0]).abs().mean().item<double>(), eps[0].abs().mean().item<double>()));
    x = sampler->step(models::guide(eps[0], eps[1], guidance), i, x);
  }
  return x.clamp(-1.0, 1.0);
}

// Samples 50 images per class from the folder as a user loads it (fp16 weights -> float32), reports the
// classifier's accuracy on them and writes them as a grid (rows: classes) next to the folder.
nlohmann::json evaluate_folder(const std::filesystem::path& dir, const c10::Device& device, const po::variables_map& values) {
  auto loaded = models::load_pipeline(dir, {device, torch::kFloat32, ""});
  auto& pipeline = dynamic_cast<models::class_conditional_pipeline&>(*loaded);
  const auto guidance = values["eval-guidance"].as<double>();
  const auto steps = values["eval-steps"].as<std::int64_t>();
  const std::int64_t per_class = values["eval-per-class"].as<std::int64_t>();
  std::vector<double> rel_mae;
  auto images = sample_every_class(pipeline, per_class, steps, guidance, 1234, rel_mae);
  auto classifier = models::load_fashion_classifier(values["classifier"].as<std::string>());
  torch::NoGradGuard no_grad;
  auto predicted = classifier->forward(images.to(torch::kCPU, torch::kFloat32)).argmax(1);
  const auto classes = static_cast<std::int64_t>(pipeline.class_names().size());
  auto wanted = torch::arange(classes, torch::kLong).repeat_interleave(per_class);
  const double accuracy = predicted.eq(wanted).to(torch::kFloat64).mean().item<double>();
  spdlog::info("{} samples per class, {} {} steps, guidance {}: classifier accuracy {:.4f}", per_class,
               pipeline.make_sampler("")->name(), steps, guidance, accuracy);
  const auto columns = std::min<std::int64_t>(per_class, 10);
  const auto height = images.size(2), width = images.size(3);
  models::save_png(dir.parent_path() / (dir.filename().string() + "-samples.png"),
                   images.add(1).div(2).view({classes, per_class, height, width}).slice(1, 0, columns)  // [class, sample, H, W]
                       .permute({0, 2, 1, 3})                                                           // rows: classes
                       .reshape({1, 1, classes * height, columns * width}));
  return {{"samples_per_class", per_class}, {"steps", steps}, {"guidance", guidance}, {"classifier_accuracy", accuracy},
          {"rel_mae_per_step", rel_mae}};
}

int evaluate(const po::variables_map& values) {
  if (!values.count("classifier")) throw po::error("evaluate needs --classifier DIR");
  const auto result = evaluate_folder(values["out"].as<std::string>(), c10::Device(values["device"].as<std::string>()), values);
  std::cout << result.dump() << "\n";
  return 0;
}

int train_diffusion(const po::variables_map& values) {
  const std::filesystem::path out = values["out"].as<std::string>();
  const auto device = c10::Device(values["device"].as<std::string>());
  const auto steps = values["steps"].as<std::int64_t>();
  const auto batch = values["batch"].as<std::int64_t>();
  const auto lr = values["lr"].as<double>();
  const auto ema_decay = values["ema"].as<double>();
  const auto label_dropout = values["label-dropout"].as<double>();
  const auto minutes = values["minutes"].as<double>();
  torch::manual_seed(values["seed"].as<std::uint64_t>());
  const auto data = values["data"].as<std::string>();
  auto train = models::load_fashion_mnist(data, true);
  spdlog::info("Fashion-MNIST from {}: {} training images", data, train.images.size(0));
  // Fixed shapes: let cuDNN pick the fastest convolutions; TF32 matrix products (Hopper's tensor cores).
  at::globalContext().setBenchmarkCuDNN(true);
  at::globalContext().setAllowTF32CuBLAS(true);

  models::class_conditional_layout layout;
  layout.class_names = models::fashion_mnist_classes();
  models::write_class_conditional_configs(out, layout);
  auto unet = models::make_class_conditional_unet(out);
  auto embedder = models::make_class_embedder(out);
  unet->to(device);
  embedder->to(device);
  unet->train();
  std::vector<at::Tensor> parameters = unet->parameters();
  for (auto& p : embedder->parameters()) parameters.push_back(p);
  std::int64_t count = 0;
  for (auto& p : parameters) count += p.numel();
  spdlog::info("UNet + class tokens: {} parameters", count);
  std::vector<at::Tensor> ema;
  for (auto& p : parameters) ema.push_back(p.detach().clone());
  torch::optim::AdamW optimizer(parameters, torch::optim::AdamWOptions(lr).weight_decay(0.0));

  // The noise schedule of the folder's own scheduler config, as its sampler builds it: alphas_cumprod [T].
  const auto alphas_cumprod = models::alphas_cumprod_of(models::read_config(out / "scheduler" / "scheduler_config.json")).to(device);
  const auto train_timesteps = alphas_cumprod.size(0);
  auto pixels = models::to_model_pixels(train.images).to(device);  // [60000, 1, 32, 32] in [-1, 1]
  auto labels = train.labels.to(device);
  const auto null_class = static_cast<std::int64_t>(layout.class_names.size());
  const auto warmup = std::min<std::int64_t>(500, steps / 10 + 1);
  const auto started = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(); };
  // The loss stays on the device and is read every 500 steps: a read-back per step would stall the GPU's queue.
  auto loss_sum = torch::zeros({}, torch::TensorOptions(torch::kFloat32).device(device));
  double last_mean_loss = 0;
  std::int64_t done = 0;
  for (; done < steps; ++done) {
    // Warm-up, then cosine decay to a tenth.
    const double progress = static_cast<double>(done) / static_cast<double>(steps);
    const double factor = done < warmup ? static_cast<double>(done + 1) / static_cast<double>(warmup)
                                        : 0.1 + 0.9 * 0.5 * (1.0 + std::cos(M_PI * progress));
    for (auto& group : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr * factor);
    auto index = torch::randint(pixels.size(0), {batch}, torch::TensorOptions(torch::kLong).device(device));
    auto x0 = pixels.index_select(0, index);
    auto y = labels.index_select(0, index);
    // Label dropout: the null class teaches the unconditional branch of classifier-free guidance.
    y = torch::where(torch::rand({batch}, x0.options()) < label_dropout, torch::full_like(y, null_class), y);
    auto t = torch::randint(train_timesteps, {batch}, torch::TensorOptions(torch::kLong).device(device));
    auto noise = torch::randn_like(x0);
    auto a = alphas_cumprod.index_select(0, t).view({-1, 1, 1, 1});
    auto noisy = a.sqrt() * x0 + (1.0 - a).sqrt() * noise;
    auto predicted = unet->forward(noisy, t.to(torch::kFloat32), {embedder->forward(y), {}, {}});
    auto loss = torch::mse_loss(predicted, noise);
    optimizer.zero_grad();
    loss.backward();
    torch::nn::utils::clip_grad_norm_(parameters, 1.0);
    optimizer.step();
    {
      torch::NoGradGuard no_grad;
      // ema ← d·ema + (1 − d)·θ, d ramping up to --ema so that the random initial weights fade out early.
      const double decay = std::min(ema_decay, (1.0 + static_cast<double>(done)) / (10.0 + static_cast<double>(done)));
      at::_foreach_lerp_(ema, parameters, 1.0 - decay);
    }
    loss_sum += loss.detach();
    if ((done + 1) % 500 == 0) {
      last_mean_loss = loss_sum.item<double>() / 500;
      spdlog::info("step {}/{}: mean loss {:.4f}, lr {:.2e}, {:.1f} steps/s", done + 1, steps, last_mean_loss,
                   lr * factor, static_cast<double>(done + 1) / elapsed());
      loss_sum.zero_();
    }
    if (minutes > 0 && (done + 1) % 100 == 0 && elapsed() > minutes * 60) {
      spdlog::warn("--minutes {} reached after {} of {} steps", minutes, done + 1, steps);
      ++done;
      break;
    }
  }
  const double seconds = elapsed();
  {
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < parameters.size(); ++i) parameters[i].copy_(ema[i]);
  }
  models::save_class_conditional_weights(out, *unet, *embedder, torch::kHalf);
  spdlog::info("trained {} steps in {:.1f} s; wrote {}", done, seconds, out.string());

  nlohmann::json record = {{"steps", done}, {"seconds", seconds}, {"batch", batch}, {"lr", lr}, {"ema", ema_decay},
                           {"label_dropout", label_dropout}, {"seed", values["seed"].as<std::uint64_t>()},
                           {"parameters", count}, {"mean_loss_last_500", last_mean_loss},
                           {"device", device.str()}, {"torch", TORCH_VERSION}};
  if (values.count("classifier")) record["eval"] = evaluate_folder(out, device, values);
  std::ofstream(out / "training.json") << record.dump(2) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  po::options_description options("train_builtin classifier|diffusion|evaluate --out DIR [options]");
  // clang-format off
  options.add_options()
      ("help,h", "print this help")
      ("what", po::value<std::string>()->required(), "classifier, diffusion (train), or evaluate (sample the diffusion folder --out)")
      ("out", po::value<std::string>()->required(), "folder to write config.json and model.safetensors to")
      ("data", po::value<std::string>()->default_value(models::fashion_mnist_dir().string()), "Fashion-MNIST folder")
      ("epochs", po::value<int>()->default_value(5), "classifier: passes over the training set")
      ("steps", po::value<std::int64_t>()->default_value(20000), "diffusion: optimiser steps")
      ("minutes", po::value<double>()->default_value(0), "diffusion: stop after this many minutes (0: no limit)")
      ("ema", po::value<double>()->default_value(0.999), "diffusion: decay of the weights' moving average (saved)")
      ("label-dropout", po::value<double>()->default_value(0.1), "diffusion: share of labels replaced by the null class")
      ("classifier", po::value<std::string>(), "diffusion, evaluate: classifier folder that measures samples")
      ("eval-guidance", po::value<double>()->default_value(3.0), "diffusion, evaluate: guidance of those samples")
      ("eval-steps", po::value<std::int64_t>()->default_value(50), "diffusion, evaluate: sampler steps")
      ("eval-per-class", po::value<std::int64_t>()->default_value(50), "diffusion, evaluate: samples per class")
      ("batch", po::value<std::int64_t>()->default_value(128), "batch size")
      ("lr", po::value<double>()->default_value(1e-3), "Adam learning rate (diffusion: the peak)")
      ("lr-decay", po::value<double>()->default_value(0.6), "classifier: learning rate factor after every epoch")
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
    const auto what = values["what"].as<std::string>();
    if (what == "classifier") return train_classifier(values);
    if (what == "diffusion") return train_diffusion(values);
    if (what == "evaluate") return evaluate(values);
    throw po::error("'" + what + "': train_builtin does: classifier, diffusion, evaluate");
  } catch (const po::error& bad) {
    std::cerr << "train_builtin: " << bad.what() << "\n";
    return 2;
  } catch (const std::exception& failure) {
    std::cerr << "train_builtin: error: " << failure.what() << "\n";
    return 1;
  }
}
