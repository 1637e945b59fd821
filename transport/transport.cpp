#include "transport/transport.hpp"

#include <algorithm>

#include "src/core/rank_list.hpp"

namespace moecomm {

Status Transport::createWindow(size_t, Deadline, std::unique_ptr<Window>*) {
  return makeError(StatusCode::kInvalidUsage, "transport '{}' has no one-sided puts", name());
}

Status Transport::postPut(Window&, int, size_t, const void*, size_t, uint64_t, Request*) {
  return makeError(StatusCode::kInvalidUsage, "transport '{}' has no one-sided puts", name());
}

std::byte* Transport::mappedPart(Window&, int) {
  return nullptr;
}

Status Transport::allGatherBytes(const void* in, size_t bytes, std::vector<std::byte>* out,
                                 Deadline deadline) {
  const int n = size();
  const uint64_t tag = next_control_tag_++;
  out->assign(bytes * static_cast<size_t>(n), std::byte{0});
  std::vector<Request> requests;
  Status posted;
  for (int p = 0; p < n && posted.isOk(); ++p) {
    Request r;
    posted = postRecv(p, out->data() + bytes * p, bytes, tag, &r);
    if (posted.isOk()) requests.push_back(r);
  }
  for (int p = 0; p < n && posted.isOk(); ++p) {
    Request r;
    posted = postSend(p, in, bytes, tag, &r);
    if (posted.isOk()) requests.push_back(r);
  }
  if (!posted.isOk()) {
    for (const Request& r : requests) cancel(r);
    return posted;
  }
  MOECOMM_RETURN_IF_ERROR(waitAll(requests, deadline, "window set-up"));
  for (const Request& r : requests) {
    if (!r->is_send && (r->bytes != bytes || r->truncated)) {
      return makeError(StatusCode::kInternalError,
                       "rank {}: window set-up got {} bytes from rank {}, expected {}", rank(),
                       r->bytes, r->peer, bytes);
    }
  }
  return Status::ok();
}

Status Transport::waitAll(const std::vector<Request>& requests, Deadline deadline,
                          const char* what) {
  Status failure;
  for (const Request& request : requests) {
    Status status = wait(request, deadline);
    if (!status.isOk()) {
      failure = status;
      break;
    }
  }
  if (failure.isOk()) return failure;

  std::vector<int> silent_sources, blocked_destinations;
  for (const Request& request : requests) {
    if (isComplete(request)) continue;
    cancel(request);
    (request->is_send ? blocked_destinations : silent_sources).push_back(request->peer);
  }
  for (auto* list : {&silent_sources, &blocked_destinations}) {
    std::sort(list->begin(), list->end());
    list->erase(std::unique(list->begin(), list->end()), list->end());
  }
  if (failure.code() != StatusCode::kTimeout) return failure;
  return makeError(StatusCode::kTimeout,
                   "rank {}: {} timed out over transport '{}': no data from rank(s) {}; rank(s) {} "
                   "did not take our data. Those ranks are slow, stuck or dead; raise "
                   "MOECOMM_TIMEOUT_MS if they are only slow",
                   rank(), what, name(), formatRankList(silent_sources),
                   formatRankList(blocked_destinations));
}

}  // namespace moecomm
