#pragma once
// The data plane of a multi-process run. Tensors between two processes travel over a link: NCCL between GPUs, or,
// between CPUs, inside the CAF message that announces them. CAF messages always carry the tensors' descriptions
// (tensor_meta); an NCCL link carries the data itself. An NCCL link joins rank 0 and one other rank and is used by
// one thread on each side, so tensors arrive in the order they were sent: a receiver allocates from the
// descriptions and takes them in that order.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "runtime/bootstrap.hpp"

namespace hybridiff::runtime {

/// What a receiver needs to allocate a tensor: a name (for errors), the dtype (c10::ScalarType as a number; −1:
/// an undefined tensor, for which nothing travels), the shape and the layout the bytes travel in.
struct tensor_meta {
  std::string name;
  std::int32_t dtype = -1;
  std::vector<std::int64_t> shape;
  /// The bytes are [N, H, W, C] (a channels-last UNet's activations travel as they are, no layout copy either side).
  bool channels_last = false;
};
tensor_meta describe_tensor(const std::string& name, const at::Tensor& tensor);
/// The layout `tensor` travels in: channels-last when it is stored so (4-D, and not also standard-contiguous),
/// else the standard one. Senders make tensors contiguous in this layout; `describe_tensor` records it.
at::MemoryFormat wire_layout(const at::Tensor& tensor);
/// The layout a described tensor's bytes travel in, for the receiver's allocation.
at::MemoryFormat wire_layout(const tensor_meta& meta);

class tensor_link {
 public:
  virtual ~tensor_link() = default;
  /// Sends the defined tensors of `tensors`, in order, and returns the bytes that must travel in the message that
  /// announces them: the tensors themselves (cpu) or nothing (NCCL, which carries them). May return before the
  /// peer has them (NCCL enqueues on the link's stream; the caching allocator keeps the memory until the transfer
  /// is done).
  virtual std::string send(const std::vector<at::Tensor>& tensors) = 0;
  /// Receives the tensors that `metas` describe (undefined ones where dtype is −1) onto `device`; `carried` is what
  /// the sender's `send` returned. Throws hybridiff::error naming the peer and the tensor when one does not arrive
  /// within the link's timeout or does not fit its description.
  virtual std::vector<at::Tensor> receive(const std::vector<tensor_meta>& metas, const std::string& carried,
                                          const c10::Device& device) = 0;
  virtual std::string describe() const = 0;
};

/// cpu: the tensors' bytes in the CAF message that announces them (rank 0's CAF connections, no other port);
/// nccl: one NCCL communicator per link (GPU tensors only).
enum class transport_kind { cpu, nccl };
/// "cpu", "nccl", or "auto": nccl for a CUDA device, else cpu. Throws hybridiff::error for other names and for
/// nccl in a build without CUDA.
transport_kind parse_transport(const std::string& name, const c10::Device& device);
std::string to_string(transport_kind kind);

/// One per process. Rank 0 hands every other rank an offer (the data its link needs) in a CAF message; both sides
/// then open the link with it.
class link_factory {
 public:
  virtual ~link_factory() = default;
  /// Rank 0: what `peer` needs to open its link (NCCL: a fresh ncclUniqueId; cpu: nothing).
  virtual std::vector<char> offer(int peer) = 0;
  /// Opens the link between this process and `peer` (rank 0 names the other rank, the other rank names 0). NCCL:
  /// collective, returns once both sides joined; throws hybridiff::error after the timeout.
  virtual std::unique_ptr<tensor_link> open(int peer, const std::vector<char>& offer) = 0;
};

/// `timeout` bounds every wait of the NCCL links: connecting, and each tensor's arrival.
std::unique_ptr<link_factory> make_link_factory(transport_kind kind, const process_placement& placement,
                                                const c10::Device& device, std::chrono::milliseconds timeout);

#ifdef HYBRIDIFF_WITH_CUDA
std::unique_ptr<link_factory> make_nccl_link_factory(const process_placement& placement, const c10::Device& device,
                                                     std::chrono::milliseconds timeout);
#endif

}  // namespace hybridiff::runtime
