#include "runtime/tensor_link.hpp"

#include <algorithm>
#include <cstring>

#include <torch/csrc/distributed/c10d/TCPStore.hpp>
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

// Tensors through a TCPStore on rank 0: one FIFO queue per direction ("hybridiff/link/<from>><to>"), one entry
// per message holding its tensors' bytes one after the other (each entry costs a round trip to the store: one per
// tensor made a step request's latents and timestep two).
class store_link : public tensor_link {
 public:
  store_link(c10::intrusive_ptr<c10d::TCPStore> store, int self, int peer, std::chrono::milliseconds timeout)
      : store_(std::move(store)), peer_(peer), timeout_(timeout),
        outgoing_("hybridiff/link/" + std::to_string(self) + ">" + std::to_string(peer)),
        incoming_("hybridiff/link/" + std::to_string(peer) + ">" + std::to_string(self)) {}

  void send(const std::vector<at::Tensor>& tensors) override {
    std::vector<at::Tensor> hosts;
    std::size_t total = 0;
    for (const auto& tensor : tensors) {
      if (!tensor.defined()) continue;
      hosts.push_back(tensor.to(torch::kCPU).contiguous(wire_layout(tensor)));
      total += hosts.back().nbytes();
    }
    if (hosts.empty()) return;  // the receiver's descriptions have no defined tensor either: it pops nothing
    std::vector<std::uint8_t> entry;
    entry.reserve(total);
    for (const auto& host : hosts) {
      const auto* bytes = static_cast<const std::uint8_t*>(host.data_ptr());
      entry.insert(entry.end(), bytes, bytes + host.nbytes());
    }
    try {
      store_->queuePush(outgoing_, entry);
    } catch (const c10::Error& failure) {
      throw error(describe() + ": sending failed: " + failure.what_without_backtrace());
    }
  }

  std::vector<at::Tensor> receive(const std::vector<tensor_meta>& metas, const c10::Device& device) override {
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
    if (std::none_of(tensors.begin(), tensors.end(), [](const at::Tensor& t) { return t.defined(); }))
      return tensors;  // the sender pushed nothing
    std::vector<std::uint8_t> bytes;
    try {
      // The sender pushes before it sends the descriptions, so the entry is mostly there already: a plain pop is one
      // round trip to the store, a blocking one two (a wait, then the pop). The blocking pop is bounded by the store's
      // timeout.
      try {
        bytes = store_->queuePop(incoming_, /*block=*/false);
      } catch (const c10::DistQueueEmptyError&) {
        bytes = store_->queuePop(incoming_, /*block=*/true);
      }
    } catch (const c10::Error& failure) {
      throw error(describe() + ": " + names_of(metas) + " did not arrive within " + std::to_string(timeout_.count()) +
                  " ms (" + failure.what_without_backtrace() + ")");
    }
    if (bytes.size() != needed)
      throw error(describe() + ": " + names_of(metas) + " arrived with " + std::to_string(bytes.size()) +
                  " bytes, their descriptions need " + std::to_string(needed));
    std::size_t offset = 0;
    for (auto& tensor : tensors) {
      if (!tensor.defined()) continue;
      std::memcpy(tensor.data_ptr(), bytes.data() + offset, tensor.nbytes());
      offset += tensor.nbytes();
      tensor = tensor.to(device);
    }
    return tensors;
  }

  std::string describe() const override { return "cpu link to rank " + std::to_string(peer_); }

 private:
  c10::intrusive_ptr<c10d::TCPStore> store_;
  int peer_;
  std::chrono::milliseconds timeout_;
  std::string outgoing_, incoming_;
};

// Rank 0 serves the store on MASTER_PORT + 1; every link has its own client connection (one thread per link).
class store_link_factory : public link_factory {
 public:
  store_link_factory(const process_placement& placement, std::chrono::milliseconds timeout)
      : placement_(placement), timeout_(timeout) {
    if (placement.rank == 0) server_ = connect(true);
  }

  std::vector<char> offer(int) override { return {}; }

  std::unique_ptr<tensor_link> open(int peer, const std::vector<char>&) override {
    return std::make_unique<store_link>(connect(false), placement_.rank, peer, timeout_);
  }

 private:
  c10::intrusive_ptr<c10d::TCPStore> connect(bool serve) const {
    const int port = placement_.master_port + 1;
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(port);
    options.isServer = serve;
    options.waitWorkers = false;
    options.timeout = timeout_;
    try {
      return c10::make_intrusive<c10d::TCPStore>(placement_.master_addr, options);
    } catch (const std::exception& failure) {
      throw error(std::string(serve ? "cannot serve" : "cannot reach") + " the tensor store at " +
                  placement_.master_addr + ":" + std::to_string(port) + " (MASTER_PORT + 1): " + failure.what());
    }
  }

  process_placement placement_;
  std::chrono::milliseconds timeout_;
  c10::intrusive_ptr<c10d::TCPStore> server_;
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
  return std::make_unique<store_link_factory>(placement, timeout);
}

}  // namespace hybridiff::runtime
