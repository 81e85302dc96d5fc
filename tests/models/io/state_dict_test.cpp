#include "models/io/state_dict.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/errors.hpp"
#include "test_support.hpp"

namespace hybridiff::models {
namespace {

// A module whose parameter names have the dotted structure of a checkpoint: "proj.weight", "blocks.0.weight", ...
struct ToyImpl : torch::nn::Module {
  ToyImpl() {
    proj = register_module("proj", torch::nn::Linear(4, 3));
    blocks = register_module("blocks", torch::nn::ModuleList(torch::nn::LayerNorm(torch::nn::LayerNormOptions({3}))));
    steps = register_buffer("steps", torch::zeros({2}, torch::kInt64));
  }
  torch::nn::Linear proj{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  at::Tensor steps;
};
TORCH_MODULE(Toy);

std::vector<std::pair<std::string, at::Tensor>> state_of(Toy& module) {
  std::vector<std::pair<std::string, at::Tensor>> state;
  for (const auto& item : module->named_parameters()) state.emplace_back(item.key(), item.value().detach().clone());
  for (const auto& item : module->named_buffers()) state.emplace_back(item.key(), item.value().clone());
  return state;
}

TEST(StateDict, LoadsByExactNameAndCasts) {
  test::temp_dir dir;
  Toy source;
  source->steps.fill_(5);
  save_safetensors(dir / "w.safetensors", state_of(source));
  Toy target;
  load_state_dict(*target, checkpoint::open(dir / "w.safetensors"), {c10::kCPU, at::kHalf});
  EXPECT_EQ(target->proj->weight.scalar_type(), at::kHalf);
  EXPECT_EQ(target->steps.scalar_type(), at::kLong);  // integer buffers keep their dtype
  EXPECT_TRUE(torch::allclose(target->proj->weight.to(at::kFloat), source->proj->weight, 1e-3, 1e-3));
  EXPECT_EQ(target->steps[0].item<int64_t>(), 5);
  EXPECT_EQ(target->named_parameters()["blocks.0.weight"].sizes(), (c10::IntArrayRef{3}));
}

TEST(StateDict, ListsMissingUnexpectedAndMismatchedKeys) {
  test::temp_dir dir;
  Toy source;
  auto state = state_of(source);
  state.erase(std::remove_if(state.begin(), state.end(), [](const auto& item) { return item.first == "proj.bias"; }),
              state.end());
  state.emplace_back("extra.weight", torch::ones({1}));
  for (auto& [name, tensor] : state)
    if (name == "blocks.0.weight") tensor = torch::ones({4});
  save_safetensors(dir / "w.safetensors", state);
  Toy target;
  auto before = target->proj->weight.clone();
  try {
    load_state_dict(*target, checkpoint::open(dir / "w.safetensors"));
    FAIL() << "loading a checkpoint that does not fit should fail";
  } catch (const error& failure) {
    std::string message = failure.what();
    EXPECT_NE(message.find("w.safetensors"), std::string::npos) << message;
    EXPECT_NE(message.find("missing keys (1): proj.bias"), std::string::npos) << message;
    EXPECT_NE(message.find("unexpected keys (1): extra.weight"), std::string::npos) << message;
    EXPECT_NE(message.find("blocks.0.weight (checkpoint [4] F32, model [3])"), std::string::npos) << message;
  }
  EXPECT_TRUE(torch::equal(target->proj->weight, before));  // nothing changed
}

TEST(StateDict, IntegerDtypeMismatchIsAnError) {
  test::temp_dir dir;
  Toy source;
  auto state = state_of(source);
  for (auto& [name, tensor] : state)
    if (name == "steps") tensor = tensor.to(at::kFloat);
  save_safetensors(dir / "w.safetensors", state);
  Toy target;
  EXPECT_THROW(load_state_dict(*target, checkpoint::open(dir / "w.safetensors")), error);
}

}  // namespace
}  // namespace hybridiff::models
