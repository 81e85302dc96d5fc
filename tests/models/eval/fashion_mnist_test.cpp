// Fashion-MNIST (the Debian package `dataset-fashion-mnist`, installed by scripts/install-deps.sh) and the
// committed classifier of models/builtin/fashion-classifier.
#include "models/eval/fashion_mnist.hpp"

#include <zlib.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/errors.hpp"
#include "test_support.hpp"

namespace hybridiff::models {
namespace {

std::string idx_bytes(unsigned char type, const std::vector<std::uint32_t>& dims, std::size_t data_bytes) {
  std::string bytes = {0, 0, static_cast<char>(type), static_cast<char>(dims.size())};
  for (auto d : dims)
    for (int shift : {24, 16, 8, 0}) bytes.push_back(static_cast<char>((d >> shift) & 0xff));
  for (std::size_t i = 0; i < data_bytes; ++i) bytes.push_back(static_cast<char>(i % 251));
  return bytes;
}

void write_gzip(const std::filesystem::path& path, const std::string& bytes) {
  gzFile file = gzopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr);
  ASSERT_EQ(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  gzclose(file);
}

TEST(Idx, ReadsPlainAndGzippedFiles) {
  test::temp_dir dir;
  const auto bytes = idx_bytes(0x08, {3, 2, 5}, 30);
  test::write_file(dir / "plain.idx", bytes);
  write_gzip(dir / "packed.idx.gz", bytes);
  for (const auto* name : {"plain.idx", "packed.idx.gz"}) {
    auto tensor = read_idx(dir / name);
    EXPECT_EQ(tensor.sizes(), (c10::IntArrayRef{3, 2, 5})) << name;
    EXPECT_EQ(tensor.scalar_type(), torch::kUInt8);
    EXPECT_EQ(tensor[2][1][4].item<int>(), 29) << name;  // the bytes in order
  }
}

TEST(Idx, MalformedFilesAreClearErrors) {
  test::temp_dir dir;
  struct bad {
    std::string bytes, message;
  };
  const bad cases[] = {
      {"\x01\x02\x08\x01", "bad magic number"},
      {idx_bytes(0x0D, {4}, 16), "element type 13 is not unsigned bytes"},
      {idx_bytes(0x08, {1, 1, 1, 1, 1}, 1), "5 dimensions"},
      {idx_bytes(0x08, {10}, 9), "need 10 bytes of data, the file holds 9"},
      {std::string("\0\0\x08\x02\0\0", 6), "header cut short"},
  };
  for (const auto& c : cases) {
    test::write_file(dir / "bad.idx", c.bytes);
    try {
      read_idx(dir / "bad.idx");
      ADD_FAILURE() << "no error for " << c.message;
    } catch (const error& failure) {
      EXPECT_NE(std::string(failure.what()).find(c.message), std::string::npos) << failure.what();
    }
  }
  EXPECT_THROW(read_idx(dir / "missing.idx"), error);
}

TEST(FashionMnist, BothSplitsLoadWithTheirSizes) {
  ASSERT_TRUE(std::filesystem::exists(fashion_mnist_dir())) << fashion_mnist_dir() << " is missing: install the "
                                                               "Debian package dataset-fashion-mnist (scripts/install-deps.sh)";
  auto train = load_fashion_mnist(fashion_mnist_dir(), true);
  auto test = load_fashion_mnist(fashion_mnist_dir(), false);
  EXPECT_EQ(train.images.sizes(), (c10::IntArrayRef{60000, 28, 28}));
  EXPECT_EQ(test.images.sizes(), (c10::IntArrayRef{10000, 28, 28}));
  // The dataset's documented balance: 6000 training and 1000 test images per class.
  EXPECT_TRUE(torch::equal(torch::bincount(train.labels), torch::full({10}, 6000, torch::kLong)));
  EXPECT_TRUE(torch::equal(torch::bincount(test.labels), torch::full({10}, 1000, torch::kLong)));
  auto pixels = to_model_pixels(test.images.slice(0, 0, 2));
  EXPECT_EQ(pixels.sizes(), (c10::IntArrayRef{2, 1, 32, 32}));
  EXPECT_EQ(pixels.min().item<float>(), -1.0f);
  EXPECT_LE(pixels.max().item<float>(), 1.0f);
}

TEST(FashionClassifier, TheCommittedClassifierIsRightOnAtLeast90PercentOfTheTestSet) {
  // The bar for a quality instrument: >= 90 % on the 10,000 test images it never trained on.
  auto classifier = load_fashion_classifier(std::filesystem::path(HYBRIDIFF_SOURCE_DIR) / "models/builtin/fashion-classifier");
  auto test = load_fashion_mnist(fashion_mnist_dir(), false);
  EXPECT_GE(classifier_accuracy(classifier, test.images, test.labels), 0.90);
}

}  // namespace
}  // namespace hybridiff::models
