#include "src/core/host_mirror.hpp"

#include "src/core/device.hpp"

namespace moecomm {

bool anyCuda(std::initializer_list<const TensorView*> views) {
  for (const TensorView* v : views) {
    if (v != nullptr && v->device.isCuda()) return true;
  }
  return false;
}

HostMirror::~HostMirror() {
  // Pinned blocks may not go back while a copy still reads or writes them.
  if (copies_in_flight_) (void)device::synchronize(stream_);
}

Status HostMirror::pinned(size_t bytes, std::byte** out) {
  std::shared_ptr<std::byte> block;
  MOECOMM_RETURN_IF_ERROR(device::acquirePinned(bytes, &block));
  *out = block.get();
  blocks_.push_back(std::move(block));
  return Status::ok();
}

Status HostMirror::input(const TensorView& view, TensorView* host) {
  *host = view;
  if (!view.device.isCuda()) return Status::ok();
  MOECOMM_RETURN_IF_ERROR(device::requireDevice(view.device.index));
  std::byte* copy = nullptr;
  MOECOMM_RETURN_IF_ERROR(pinned(view.bytes(), &copy));
  if (view.bytes() > 0 && view.data != nullptr) {
    copies_in_flight_ = true;
    MOECOMM_RETURN_IF_ERROR(
        device::copyAsync(copy, view.data, view.bytes(), device::Direction::kToHost, stream_));
  }
  host->data = view.data != nullptr ? copy : nullptr;
  host->device = Device::cpu();
  return Status::ok();
}

Status HostMirror::output(const TensorView& view, TensorView* host) {
  *host = view;
  if (!view.device.isCuda()) return Status::ok();
  MOECOMM_RETURN_IF_ERROR(device::requireDevice(view.device.index));
  std::byte* copy = nullptr;
  MOECOMM_RETURN_IF_ERROR(pinned(view.bytes(), &copy));
  host->data = view.data != nullptr ? copy : nullptr;
  host->device = Device::cpu();
  if (view.data != nullptr) outputs_.push_back({view.data, copy, view.bytes()});
  return Status::ok();
}

Status HostMirror::ready() {
  if (!copies_in_flight_) return Status::ok();
  copies_in_flight_ = false;
  return device::synchronize(stream_);
}

Status HostMirror::writeBack() {
  for (const Pending& p : outputs_) {
    copies_in_flight_ = true;
    MOECOMM_RETURN_IF_ERROR(
        device::copyAsync(p.device, p.host, p.bytes, device::Direction::kToDevice, stream_));
  }
  outputs_.clear();
  return ready();
}

}  // namespace moecomm
