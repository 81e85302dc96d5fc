#include "runtime/tensor_link.hpp"

#include <cstdint>
#include <cstring>
#include <limits>

#include <torch/torch.h>

#include "models/errors.hpp"

namespace hybridiff::runtime {

tensor_meta describe_tensor(const std::string& name, const at::Tensor& tensor) {
  tensor_meta meta;
  meta.name = name;
  if (!tensor.defined()) return meta;
  meta.dtype = static_cast<std::int32_t>(tensor.scalar_type());
  meta.shape = tensor.sizes().vec();
  meta.channels_last = wire_layout(tensor) == at::MemoryFormat::ChannelsLast;
  return meta;
}

at::MemoryFormat wire_layout(const at::Tensor& tensor) {
  return tensor.dim() == 4 && tensor.is_contiguous(at::MemoryFormat::ChannelsLast) && !tensor.is_contiguous()
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

at::MemoryFormat wire_layout(const tensor_meta& meta) {
  return meta.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

transport_kind parse_transport(const std::string& name, const c10::Device& device) {
  if (name == "cpu") return transport_kind::cpu;
  if (name == "auto") return device.is_cuda() ? transport_kind::nccl : transport_kind::cpu;
  if (name == "nccl") {
#ifdef HYBRIDIFF_WITH_CUDA
    if (!device.is_cuda()) throw error("--transport nccl moves GPU tensors: give a CUDA --device, or use --transport cpu");
    return transport_kind::nccl;
#else
    throw error("--transport nccl: this build has no CUDA (configure with the CUDA toolkit)");
#endif
  }
  throw error("--transport '" + name + "': use auto, cpu or nccl");
}

std::string to_string(transport_kind kind) { return kind == transport_kind::nccl ? "nccl" : "cpu"; }

namespace {

// "tensor 'a'" or "tensors 'a', 'b'": the described tensors, for errors.
std::string names_of(const std::vector<tensor_meta>& metas) {
  std::string names;
  for (const auto& meta : metas) names += (names.empty() ? "'" : ", '") + meta.name + "'";
  return (metas.size() == 1 ? "tensor " : "tensors ") + names;
}

// Tensors inside the CAF message that announces them: `send` returns the defined tensors' bytes one after the
// other in their wire layouts, `receive` cuts them by the descriptions. CAF writes a std::string's bytes as one
// block, and the message needs no second connection or round trip.
class message_link : public tensor_link {
 public:
  explicit message_link(int peer) : peer_(peer) {}

  std::string send(const std::vector<at::Tensor>& tensors) override {
    std::vector<at::Tensor> hosts;
    std::size_t total = 0;
    for (const auto& tensor : tensors) {
      if (!tensor.defined()) continue;
      hosts.push_back(tensor.to(torch::kCPU).contiguous(wire_layout(tensor)));
      total += hosts.back().nbytes();
    }
    // BASP, CAF 0.17's wire protocol, states a message's length in 32 bits; the rest of the message needs room too.
    constexpr std::size_t most = std::numeric_limits<std::uint32_t>::max() - (std::size_t{1} << 20);
    if (total > most)
      throw error(describe() + ": " + std::to_string(total) +
                  " bytes in one message, more than a CAF message can carry (" + std::to_string(most) +
                  "); use the nccl transport");
    std::string bytes;
    bytes.reserve(total);
    for (const auto& host : hosts) bytes.append(static_cast<const char*>(host.data_ptr()), host.nbytes());
    return bytes;
  }

  std::vector<at::Tensor> receive(const std::vector<tensor_meta>& metas, const std::string& carried,
                                  const c10::Device& device) override {
    std::vector<at::Tensor> tensors;
    std::size_t needed = 0;
    for (const auto& meta : metas) {
      if (meta.dtype < 0) {
        tensors.emplace_back();
        continue;
      }
      tensors.push_back(torch::empty(meta.shape, torch::TensorOptions().dtype(static_cast<c10::ScalarType>(meta.dtype)),
                                     wire_layout(meta)));
      needed += tensors.back().nbytes();
    }
    if (carried.size() != needed)
      throw error(describe() + ": " + names_of(metas) + " arrived with " + std::to_string(carried.size()) +
                  " bytes, their descriptions need " + std::to_string(needed));
    std::size_t offset = 0;
    for (auto& tensor : tensors) {
      if (!tensor.defined()) continue;
      std::memcpy(tensor.data_ptr(), carried.data() + offset, tensor.nbytes());
      offset += tensor.nbytes();
      tensor = tensor.to(device);
    }
    return tensors;
  }

  std::string describe() const override { return "cpu link to rank " + std::to_string(peer_); }

 private:
  int peer_;
};

class message_link_factory : public link_factory {
 public:
  std::vector<char> offer(int) override { return {}; }
  std::unique_ptr<tensor_link> open(int peer, const std::vector<char>&) override {
    return std::make_unique<message_link>(peer);
  }
};

}  // namespace

std::unique_ptr<link_factory> make_link_factory(transport_kind kind, const process_placement& placement,
                                                const c10::Device& device, std::chrono::milliseconds timeout) {
  if (kind == transport_kind::nccl) {
#ifdef HYBRIDIFF_WITH_CUDA
    return make_nccl_link_factory(placement, device, timeout);
#else
    throw error("the nccl transport needs a build with CUDA");
#endif
  }
  return std::make_unique<message_link_factory>();
}

}  // namespace hybridiff::runtime
