#include "transport/transport.hpp"

#include <algorithm>

#include "src/core/rank_list.hpp"

namespace moecomm {

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
