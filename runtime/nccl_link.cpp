// The NCCL transport: per link (rank 0 and one other rank) a two-rank communicator created from an ncclUniqueId
// that rank 0 sends in a CAF message, and a blocking one split off it for the transfers. Transfers run on the
// link's own stream, after the work that produced the tensors; every wait polls with a deadline, so a dead peer
// becomes an error, not a hang.
#include <future>
#include <thread>

#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <torch/torch.h>

#include "models/errors.hpp"
#include "runtime/tensor_link.hpp"

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 18, 0)
#error "hybridiff's NCCL links need NCCL 2.18 or newer (ncclCommSplit with a configuration)"
#endif

namespace hybridiff::runtime {
namespace {

void check(ncclResult_t result, const std::string& what) {
  if (result != ncclSuccess && result != ncclInProgress)
    throw error(what + ": " + ncclGetErrorString(result) + " (" + ncclGetLastError(nullptr) + ")");
}

class nccl_link : public tensor_link {
 public:
  nccl_link(const std::vector<char>& offer, int self, int peer, const c10::Device& device,
            std::chrono::milliseconds timeout)
      : peer_(peer), device_(device), timeout_(timeout),
        stream_(c10::cuda::getStreamFromPool(/*isHighPriority=*/true, device.index())) {
    ncclUniqueId id;
    if (offer.size() != sizeof(id.internal))
      throw error("nccl link to rank " + std::to_string(peer) + ": the offer holds " + std::to_string(offer.size()) +
                  " bytes, not an ncclUniqueId (" + std::to_string(sizeof(id.internal)) + ")");
    std::copy(offer.begin(), offer.end(), id.internal);
    c10::cuda::CUDAGuard guard(device);
    // Non-blocking initialisation: a peer that never joins is a timeout, not a hang.
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    check(ncclCommInitRankConfig(&setup_, 2, id, self == 0 ? 0 : 1, &config), describe() + ": ncclCommInitRank");
    try {
      await_comm(setup_, "joining");
      split_for_transfers();
      connect();
    } catch (...) {
      abort();  // the destructor does not run for a constructor that throws
      throw;
    }
  }

  ~nccl_link() override { abort(); }

 private:
  // Abort, not destroy: destroy waits for transfers that a dead peer would never complete.
  void abort() {
    if (comm_ != nullptr) ncclCommAbort(comm_);
    if (setup_ != nullptr) ncclCommAbort(setup_);
    comm_ = setup_ = nullptr;
  }

  // A non-blocking communicator hands every group of transfers to a thread that NCCL starts for it (NCCL
  // src/group.cc); on 2 × H100 each transfer of a step took 0.3–0.9 ms. Transfers therefore go over a blocking
  // child, which enqueues them on the caller's thread. The split itself is non-blocking (it follows the parent,
  // NCCL docs "Creating more communicators"), so a peer that stops here is a timeout as well.
  void split_for_transfers() {
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 1;
    check(ncclCommSplit(setup_, 0, rank_in_pair(), &comm_, &config), describe() + ": ncclCommSplit");
    await_comm(setup_, "splitting");
    if (comm_ == nullptr) throw error(describe() + ": ncclCommSplit gave no communicator");
  }

  // NCCL connects a pair at its first transfer, which needs both sides inside NCCL. Both are here now (open is
  // collective): one byte each way, so that later sends are enqueued without waiting for the peer. On the blocking
  // communicator this first group waits for the peer, so it runs on a helper thread that a peer stopped at this
  // moment would leave behind: the caller gets the timeout as an error (and the process ends with it).
  void connect() {
    auto probe = torch::zeros({1}, torch::TensorOptions().dtype(torch::kUInt8).device(device_));
    auto echo = torch::empty_like(probe);
    auto done = std::make_shared<std::promise<ncclResult_t>>();
    auto connected = done->get_future();
    std::thread([done, comm = comm_, stream = stream_.stream(), peer = 1 - rank_in_pair(), device = device_.index(),
                 probe, echo] {
      cudaSetDevice(device);
      ncclResult_t result = ncclGroupStart();
      if (result == ncclSuccess) result = ncclSend(probe.data_ptr(), 1, ncclUint8, peer, comm, stream);
      if (result == ncclSuccess) result = ncclRecv(echo.data_ptr(), 1, ncclUint8, peer, comm, stream);
      const ncclResult_t ended = ncclGroupEnd();
      done->set_value(result == ncclSuccess ? ended : result);
    }).detach();
    if (connected.wait_for(timeout_) != std::future_status::ready) {
      comm_ = setup_ = nullptr;  // the helper may still be inside NCCL: leave both to the ending process
      throw error(describe() + ": connecting did not finish within " + std::to_string(timeout_.count()) +
                  " ms (did rank " + std::to_string(peer_) + " stop?)");
    }
    check(connected.get(), describe() + ": connecting");
    await_stream("connecting");
  }

 public:
  std::string send(const std::vector<at::Tensor>& tensors) override {
    c10::cuda::CUDAGuard guard(device_);
    auto ready = after_current_work();
    std::vector<at::Tensor> staged;
    for (const auto& tensor : tensors)
      if (tensor.defined()) staged.push_back(tensor.to(device_).contiguous(wire_layout(tensor)));
    ready.block(stream_);
    check(ncclGroupStart(), describe() + ": ncclGroupStart");
    for (const auto& tensor : staged) {
      c10::cuda::CUDACachingAllocator::recordStream(tensor.storage().data_ptr(), stream_);
      check(ncclSend(tensor.data_ptr(), tensor.nbytes(), ncclUint8, 1 - rank_in_pair(), comm_, stream_.stream()),
            describe() + ": ncclSend");
    }
    check(ncclGroupEnd(), describe() + ": ncclGroupEnd");
    await_comm(comm_, "sending");
    return {};  // the link carried the data
  }

  std::vector<at::Tensor> receive(const std::vector<tensor_meta>& metas, const std::string& carried,
                                  const c10::Device& device) override {
    if (!carried.empty())
      throw error(describe() + ": " + std::to_string(carried.size()) +
                  " bytes came in the message, as from the cpu transport; every rank must use the same transport");
    c10::cuda::CUDAGuard guard(device_);
    std::vector<at::Tensor> tensors;
    for (const auto& meta : metas)
      tensors.push_back(meta.dtype < 0 ? at::Tensor()
                                       : torch::empty(meta.shape,
                                                      torch::TensorOptions()
                                                          .dtype(static_cast<c10::ScalarType>(meta.dtype))
                                                          .device(device_),
                                                      wire_layout(meta)));
    auto ready = after_current_work();  // the allocations are ordered on the current stream
    ready.block(stream_);
    check(ncclGroupStart(), describe() + ": ncclGroupStart");
    for (const auto& tensor : tensors) {
      if (!tensor.defined()) continue;
      c10::cuda::CUDACachingAllocator::recordStream(tensor.storage().data_ptr(), stream_);
      check(ncclRecv(tensor.data_ptr(), tensor.nbytes(), ncclUint8, 1 - rank_in_pair(), comm_, stream_.stream()),
            describe() + ": ncclRecv");
    }
    check(ncclGroupEnd(), describe() + ": ncclGroupEnd");
    await_comm(comm_, "receiving");
    // Wait (with the deadline) until the data is there: the caller's next use may be on any stream or the CPU.
    await_stream("tensors (first '" + (metas.empty() ? std::string("?") : metas.front().name) + "')");
    for (auto& tensor : tensors)
      if (tensor.defined() && tensor.device() != device) tensor = tensor.to(device);
    return tensors;
  }

  std::string describe() const override {
    return "nccl link to rank " + std::to_string(peer_) + " (" + device_.str() + ")";
  }

 private:
  int rank_in_pair() const { return peer_ == 0 ? 1 : 0; }

  at::cuda::CUDAEvent after_current_work() const {
    at::cuda::CUDAEvent event;
    event.record(c10::cuda::getCurrentCUDAStream(device_.index()));
    return event;
  }

  // Polls until the link's stream has done its work; a peer that is gone or silent becomes an error.
  void await_stream(const std::string& what) {
    at::cuda::CUDAEvent done;
    done.record(stream_);
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    while (!done.query()) {
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress) check(async, describe() + ": " + what);
      if (std::chrono::steady_clock::now() > deadline)
        throw error(describe() + ": " + what + " did not arrive within " + std::to_string(timeout_.count()) + " ms");
      std::this_thread::yield();
    }
  }

  // Non-blocking communicators return ncclInProgress until an operation is queued; wait for that, bounded.
  void await_comm(ncclComm_t comm, const char* what) {
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    ncclResult_t state = ncclInProgress;
    while (true) {
      check(ncclCommGetAsyncError(comm, &state), describe() + ": " + what);
      if (state != ncclInProgress) break;
      if (std::chrono::steady_clock::now() > deadline)
        throw error(describe() + ": " + what + " did not finish within " + std::to_string(timeout_.count()) +
                    " ms (did rank " + std::to_string(peer_) + " start?)");
      std::this_thread::yield();
    }
    check(state, describe() + ": " + what);
  }

  int peer_;
  c10::Device device_;
  std::chrono::milliseconds timeout_;
  c10::cuda::CUDAStream stream_;
  ncclComm_t setup_ = nullptr;  // non-blocking: joining and splitting
  ncclComm_t comm_ = nullptr;   // blocking: the transfers
};

class nccl_link_factory : public link_factory {
 public:
  nccl_link_factory(const process_placement& placement, const c10::Device& device, std::chrono::milliseconds timeout)
      : placement_(placement), device_(device), timeout_(timeout) {
    if (!device.is_cuda()) throw error("the nccl transport needs a CUDA device, not " + device.str());
  }

  std::vector<char> offer(int) override {
    ncclUniqueId id;
    check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    return std::vector<char>(id.internal, id.internal + sizeof(id.internal));
  }

  std::unique_ptr<tensor_link> open(int peer, const std::vector<char>& offer) override {
    return std::make_unique<nccl_link>(offer, placement_.rank, peer, device_, timeout_);
  }

 private:
  process_placement placement_;
  c10::Device device_;
  std::chrono::milliseconds timeout_;
};

}  // namespace

std::unique_ptr<link_factory> make_nccl_link_factory(const process_placement& placement, const c10::Device& device,
                                                     std::chrono::milliseconds timeout) {
  return std::make_unique<nccl_link_factory>(placement, device, timeout);
}

}  // namespace hybridiff::runtime
