// Host copies of a call's CUDA tensors, for work that runs on the CPU or crosses a transport that
// cannot read GPU memory: CUDA inputs are copied into pinned host memory before the work, CUDA
// outputs are written to pinned host memory and copied to the GPU only when the work succeeded,
// so a failed call leaves the caller's outputs untouched. CPU views pass through unchanged.
#pragma once

#include <array>
#include <cstddef>
#include <initializer_list>
#include <memory>
#include <vector>

#include "moecomm/types.hpp"
#include "src/core/status.hpp"

namespace moecomm {

// True when any of the views lives on a GPU.
bool anyCuda(std::initializer_list<const TensorView*> views);

class HostMirror {
 public:
  explicit HostMirror(ExecContext context) : stream_(context.stream) {}
  ~HostMirror();
  HostMirror(const HostMirror&) = delete;
  HostMirror& operator=(const HostMirror&) = delete;

  // A host view with the same contents (the copy is enqueued; ready() waits for it).
  Status input(const TensorView& view, TensorView* host);
  // A host view to write instead of `view`; writeBack() copies it over `view`.
  Status output(const TensorView& view, TensorView* host);
  // Waits for the input copies.
  Status ready();
  // Copies every output to its GPU view and waits for the copies.
  Status writeBack();

 private:
  struct Pending {
    void* device;
    const std::byte* host;
    size_t bytes;
  };
  Status pinned(size_t bytes, std::byte** out);

  void* stream_;
  bool copies_in_flight_ = false;
  std::vector<std::shared_ptr<std::byte>> blocks_;
  std::vector<Pending> outputs_;
};

// Runs work(host_inputs, host_outputs, staging_status) on host views of `inputs` and `outputs`
// (pinned copies of the CUDA ones; CPU views pass through), then writes the outputs back to the
// GPU only when it succeeded. A staging failure reaches `work` as its status, so a collective can
// still tell the peers instead of leaving them waiting.
template <size_t In, size_t Out, typename Work>
Status runMirrored(ExecContext context, const std::array<const TensorView*, In>& inputs,
                   const std::array<const TensorView*, Out>& outputs, Work work) {
  HostMirror mirror(context);
  std::array<TensorView, In> host_in;
  std::array<TensorView, Out> host_out;
  Status status;
  for (size_t i = 0; i < In && status.isOk(); ++i) status = mirror.input(*inputs[i], &host_in[i]);
  for (size_t i = 0; i < Out && status.isOk(); ++i) {
    status = mirror.output(*outputs[i], &host_out[i]);
  }
  if (status.isOk()) status = mirror.ready();
  status = work(host_in, host_out, status);
  if (status.isOk()) status = mirror.writeBack();
  return status;
}

}  // namespace moecomm
