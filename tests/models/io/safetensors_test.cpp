#include "models/io/safetensors.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/errors.hpp"
#include "test_support.hpp"

namespace hybridiff::models {
namespace {

using test::safetensors_bytes;
using test::temp_dir;
using test::write_file;

// Expects `open` to throw a hybridiff::error whose message names the file and contains `what`.
void expect_open_error(const std::filesystem::path& path, const std::string& what) {
  try {
    safetensors_file::open(path);
    FAIL() << "opening " << path << " should have failed with '" << what << "'";
  } catch (const error& failure) {
    std::string message = failure.what();
    EXPECT_NE(message.find(path.string()), std::string::npos) << message;
    EXPECT_NE(message.find(what), std::string::npos) << message;
  }
}

TEST(Safetensors, ReadsFixtureUnetHeaderAndTensors) {
  auto file = safetensors_file::open(test::fixtures_dir() / "tiny-sdxl/unet/diffusion_pytorch_model.safetensors");
  const tensor_entry* conv_in = file->find("conv_in.weight");
  ASSERT_NE(conv_in, nullptr);
  EXPECT_EQ(conv_in->dtype_name, "F32");
  // tiny-sdxl/unet/config.json: block_out_channels[0] = 32, in_channels = 4, conv_in_kernel = 3.
  EXPECT_EQ(conv_in->shape, (std::vector<std::int64_t>{32, 4, 3, 3}));
  auto weight = file->tensor("conv_in.weight");
  EXPECT_EQ(weight.sizes(), (c10::IntArrayRef{32, 4, 3, 3}));
  EXPECT_TRUE(torch::isfinite(weight).all().item<bool>());
  EXPECT_EQ(file->find("no.such.tensor"), nullptr);
}

TEST(Safetensors, TensorsAreZeroCopyViewsAndWritesNeverReachTheFile) {
  temp_dir dir;
  auto original = torch::arange(12, torch::kFloat32).reshape({3, 4});
  save_safetensors(dir / "a.safetensors", {{"x", original}});
  auto file = safetensors_file::open(dir / "a.safetensors");
  auto first = file->tensor("x");
  auto second = file->tensor("x");
  EXPECT_EQ(first.data_ptr(), second.data_ptr());  // both view the one mapping
  first.fill_(7.0f);                                // copy-on-write page: the file keeps its bytes
  auto reread = safetensors_file::open(dir / "a.safetensors")->tensor("x");
  EXPECT_TRUE(torch::equal(reread, original));
}

TEST(Safetensors, ViewOutlivesTheFileObject) {
  temp_dir dir;
  save_safetensors(dir / "a.safetensors", {{"x", torch::ones({5})}});
  at::Tensor view;
  {
    auto file = safetensors_file::open(dir / "a.safetensors");
    view = file->tensor("x");
  }
  EXPECT_FLOAT_EQ(view.sum().item<float>(), 5.0f);
}

TEST(Safetensors, RoundTripsEveryDtypeAndMetadata) {
  temp_dir dir;
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"f64", torch::randn({2, 3}, torch::kFloat64)},
      {"f32", torch::randn({4}, torch::kFloat32)},
      {"f16", torch::randn({3, 1}).to(torch::kHalf)},
      {"bf16", torch::randn({5}).to(torch::kBFloat16)},
      {"i64", torch::arange(7, torch::kInt64)},
      {"i32", torch::arange(3, torch::kInt32)},
      {"u8", torch::arange(9, torch::kUInt8)},
      {"bool", torch::tensor({true, false, true})},
      {"scalar", torch::tensor(3.5f)},
      {"empty", torch::zeros({0, 4})},
      {"strided", torch::randn({4, 6}).t()},
  };
  save_safetensors(dir / "all.safetensors", tensors, {{"format", "pt"}});
  auto file = safetensors_file::open(dir / "all.safetensors");
  EXPECT_EQ(file->metadata().at("format"), "pt");
  ASSERT_EQ(file->entries().size(), tensors.size());
  for (const auto& [name, tensor] : tensors) {
    auto loaded = file->tensor(name);
    EXPECT_EQ(loaded.scalar_type(), tensor.scalar_type()) << name;
    EXPECT_TRUE(torch::equal(loaded, tensor)) << name;
  }
}

TEST(Safetensors, MisalignedDataIsCopiedNotMisread) {
  temp_dir dir;
  // A 7-byte header pushes the data section to offset 15: an F32 at offset 0 is misaligned.
  std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  header.append((8 - (8 + header.size()) % 8) % 8 + 1, ' ');
  float values[2] = {1.5f, -2.0f};
  write_file(dir / "odd.safetensors", safetensors_bytes(header, std::string(reinterpret_cast<char*>(values), 8)));
  auto loaded = safetensors_file::open(dir / "odd.safetensors")->tensor("a");
  EXPECT_FLOAT_EQ(loaded[0].item<float>(), 1.5f);
  EXPECT_FLOAT_EQ(loaded[1].item<float>(), -2.0f);
}

TEST(SafetensorsErrors, MissingFile) { expect_open_error("/nonexistent/x.safetensors", "cannot open"); }

TEST(SafetensorsErrors, TruncatedBeforeHeaderLength) {
  temp_dir dir;
  write_file(dir / "t.safetensors", "abc");
  expect_open_error(dir / "t.safetensors", "truncated file");
}

TEST(SafetensorsErrors, HeaderLongerThanFile) {
  temp_dir dir;
  std::string bytes = safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "\0\0\0\0");
  bytes.resize(20);  // cut inside the header
  write_file(dir / "h.safetensors", bytes);
  expect_open_error(dir / "h.safetensors", "longer than the file");
}

TEST(SafetensorsErrors, HeaderLengthOverLimit) {
  temp_dir dir;
  std::string bytes(8, '\0');
  bytes[5] = 0x10;  // 2^44 bytes
  write_file(dir / "big.safetensors", bytes + "{}");
  expect_open_error(dir / "big.safetensors", "exceeds the limit");
}

TEST(SafetensorsErrors, MalformedJson) {
  temp_dir dir;
  write_file(dir / "j.safetensors", safetensors_bytes(R"({"a":{"dtype":"F32",)", ""));
  expect_open_error(dir / "j.safetensors", "not valid JSON");
}

TEST(SafetensorsErrors, UnknownDtype) {
  temp_dir dir;
  write_file(dir / "d.safetensors",
             safetensors_bytes(R"({"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})", std::string(16, '\0')));
  expect_open_error(dir / "d.safetensors", "unknown dtype 'F128'");
}

TEST(SafetensorsErrors, SizeMismatch) {
  temp_dir dir;
  write_file(dir / "s.safetensors",
             safetensors_bytes(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0')));
  expect_open_error(dir / "s.safetensors", "size mismatch");
}

TEST(SafetensorsErrors, RangeOutsideDataSection) {
  temp_dir dir;
  write_file(dir / "r.safetensors",
             safetensors_bytes(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(8, '\0')));
  expect_open_error(dir / "r.safetensors", "reach past the data section");
}

TEST(SafetensorsErrors, OverlappingRanges) {
  temp_dir dir;
  write_file(dir / "o.safetensors",
             safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                               std::string(12, '\0')));
  expect_open_error(dir / "o.safetensors", "overlapping byte ranges");
}

TEST(SafetensorsErrors, NegativeShapeAndBadOffsets) {
  temp_dir dir;
  write_file(dir / "n.safetensors",
             safetensors_bytes(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", std::string(4, '\0')));
  expect_open_error(dir / "n.safetensors", "not a non-negative integer");
  write_file(dir / "b.safetensors",
             safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", std::string(8, '\0')));
  expect_open_error(dir / "b.safetensors", "end before they begin");
}

TEST(Checkpoint, ShardedIndexReadsEveryShard) {
  temp_dir dir;
  auto a = torch::randn({2, 2});
  auto b = torch::randn({3});
  save_safetensors(dir / "model-00001-of-00002.safetensors", {{"layer.a", a}});
  save_safetensors(dir / "model-00002-of-00002.safetensors", {{"layer.b", b}});
  write_file(dir / "model.safetensors.index.json",
             R"({"metadata":{"total_size":28},"weight_map":{"layer.a":"model-00001-of-00002.safetensors",)"
             R"("layer.b":"model-00002-of-00002.safetensors"}})");
  auto weights = checkpoint::open(dir / "model.safetensors.index.json");
  ASSERT_EQ(weights.entries().size(), 2u);
  EXPECT_TRUE(torch::equal(weights.tensor("layer.a"), a));
  EXPECT_TRUE(torch::equal(weights.tensor("layer.b"), b));
  EXPECT_EQ(weights.files().size(), 2u);
  EXPECT_EQ(find_component_weights(dir.path()), dir / "model.safetensors.index.json");
}

TEST(Checkpoint, ShardIndexErrorsNameTheIndex) {
  temp_dir dir;
  write_file(dir / "m.safetensors.index.json", R"({"weight_map":{"w":"missing.safetensors"}})");
  EXPECT_THROW(
      {
        try {
          checkpoint::open(dir / "m.safetensors.index.json");
        } catch (const error& failure) {
          EXPECT_NE(std::string(failure.what()).find("shard 'missing.safetensors'"), std::string::npos);
          throw;
        }
      },
      error);
  save_safetensors(dir / "one.safetensors", {{"other", torch::ones({1})}});
  write_file(dir / "n.safetensors.index.json", R"({"weight_map":{"w":"one.safetensors"}})");
  EXPECT_THROW(checkpoint::open(dir / "n.safetensors.index.json"), error);
  write_file(dir / "bad.safetensors.index.json", R"({"weight_map":[1,2]})");
  EXPECT_THROW(checkpoint::open(dir / "bad.safetensors.index.json"), error);
}

TEST(Checkpoint, MissingWeightsNameWhatWasLookedFor) {
  temp_dir dir;
  try {
    find_component_weights(dir.path());
    FAIL();
  } catch (const error& failure) {
    EXPECT_NE(std::string(failure.what()).find("diffusion_pytorch_model.safetensors"), std::string::npos);
  }
  EXPECT_THROW(find_component_weights(dir / "absent"), error);
}

TEST(Checkpoint, VariantsAreFoundByDiffusersNamesAndAnOnlyVariantIsTakenAlone) {
  temp_dir dir;
  const auto weights = torch::arange(4, torch::kFloat32);
  // A sharded fp16 variant as diffusers names it: the index carries the variant before .json, the shards after
  // the stem.
  save_safetensors(dir / "diffusion_pytorch_model.fp16-00001-of-00001.safetensors", {{"w", weights}});
  write_file(dir / "diffusion_pytorch_model.safetensors.index.fp16.json",
             R"({"weight_map":{"w":"diffusion_pytorch_model.fp16-00001-of-00001.safetensors"}})");
  EXPECT_EQ(find_component_weights(dir.path(), "fp16"), dir / "diffusion_pytorch_model.safetensors.index.fp16.json");
  // No plain file: the only variant loads without being asked for.
  EXPECT_EQ(find_component_weights(dir.path()), dir / "diffusion_pytorch_model.safetensors.index.fp16.json");
  EXPECT_TRUE(torch::equal(checkpoint::open(find_component_weights(dir.path())).tensor("w"), weights));

  // A variant the folder lacks: named, with what the folder has.
  try {
    find_component_weights(dir.path(), "bf16");
    FAIL() << "a missing variant must be an error";
  } catch (const error& failure) {
    const std::string message = failure.what();
    EXPECT_NE(message.find("no 'bf16' variant weights found"), std::string::npos) << message;
    EXPECT_NE(message.find("diffusion_pytorch_model.bf16.safetensors"), std::string::npos) << message;
    EXPECT_NE(message.find("diffusion_pytorch_model.safetensors.index.fp16.json"), std::string::npos) << message;
  }

  // Two variants and no plain file: the user chooses.
  save_safetensors(dir / "diffusion_pytorch_model.bf16.safetensors", {{"w", weights}});
  EXPECT_EQ(find_component_weights(dir.path(), "bf16"), dir / "diffusion_pytorch_model.bf16.safetensors");
  try {
    find_component_weights(dir.path());
    FAIL() << "two variants without a choice must be an error";
  } catch (const error& failure) {
    EXPECT_NE(std::string(failure.what()).find("several variants (bf16, fp16): choose one with --variant"),
              std::string::npos)
        << failure.what();
  }
  // The plain file wins when there is one, as in diffusers.
  save_safetensors(dir / "diffusion_pytorch_model.safetensors", {{"w", weights}});
  EXPECT_EQ(find_component_weights(dir.path()), dir / "diffusion_pytorch_model.safetensors");
}

}  // namespace
}  // namespace hybridiff::models
