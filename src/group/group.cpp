#include <cstring>
#include <vector>

#include "src/bootstrap/in_process.hpp"
#include "src/core/env.hpp"
#include "src/core/log.hpp"
#include "src/group/group_impl.hpp"
#include "transport/factory.hpp"

#include <unistd.h>

namespace moecomm {

namespace {

// What each rank contributes to the creation all-gather: its config, and its own verdict on it so
// that a rank with a bad config fails everyone at once instead of leaving them waiting.
struct WireConfig {
  int32_t num_experts;
  int32_t hidden;
  int32_t dtype;
  int32_t topk;
  char transport[32];
  int64_t pid;
  uint32_t transports_built;
  int32_t status;
  char error[220];
};

Status compareConfigs(const std::vector<WireConfig>& all, int me) {
  for (size_t r = 0; r < all.size(); ++r) {
    if (all[r].status != 0) {
      return makeError(StatusCode::kRemoteError,
                       "rank {}: group creation failed because rank {} rejected its config: {}", me,
                       r, all[r].error);
    }
  }
  const WireConfig& ref = all[0];
  for (size_t r = 1; r < all.size(); ++r) {
    const WireConfig& other = all[r];
    auto mismatch = [&](const char* field, auto mine, auto theirs) {
      return makeError(StatusCode::kInvalidArgument,
                       "GroupConfig mismatch: rank {} has {}={} but rank 0 has {}={}; every rank "
                       "must pass the same configuration",
                       r, field, theirs, field, mine);
    };
    if (other.num_experts != ref.num_experts)
      return mismatch("num_experts", ref.num_experts, other.num_experts);
    if (other.hidden != ref.hidden) return mismatch("hidden", ref.hidden, other.hidden);
    if (other.dtype != ref.dtype) {
      return mismatch("dtype", dtypeName(static_cast<DType>(ref.dtype)),
                      dtypeName(static_cast<DType>(other.dtype)));
    }
    if (other.topk != ref.topk) return mismatch("topk", ref.topk, other.topk);
    if (std::strncmp(other.transport, ref.transport, sizeof(ref.transport)) != 0) {
      return mismatch("transport", std::string(ref.transport), std::string(other.transport));
    }
  }
  return Status::ok();
}

std::string requestedTransport(const std::string& requested) {
  std::string name = requested.empty() ? "auto" : requested;
  if (name == "auto") {
    if (auto env = envString("MOECOMM_TRANSPORT")) name = *env;
  }
  return name;
}

// Every rank resolves "auto" from the same gathered facts, so all pick the same transport.
Status resolveTransport(const std::string& requested, const std::vector<WireConfig>& all,
                        std::string* out) {
  uint32_t common = ~uint32_t{0};
  bool one_process = true;
  for (const WireConfig& c : all) {
    common &= c.transports_built;
    one_process = one_process && c.pid == all[0].pid;
  }
  if (requested != "auto") {
    const uint32_t bit = transportBit(requested);
    if (bit == 0 || (common & bit) == 0) {
      return makeError(StatusCode::kInvalidArgument,
                       "transport '{}' is not available on every rank; available everywhere: {}",
                       requested, transportList(common));
    }
    *out = requested;
    return Status::ok();
  }
  if (one_process) {
    *out = "local";
  } else if (common & kTransportUcx) {
    *out = "ucx";
  } else if (common & kTransportMpi) {
    *out = "mpi";
  } else {
    return makeError(StatusCode::kInvalidArgument,
                     "the ranks run in several processes but no inter-process transport is built "
                     "on every rank (available everywhere: {}); rebuild with UCX or MPI",
                     transportList(common));
  }
  return Status::ok();
}

}  // namespace

Status createGroup(std::shared_ptr<Bootstrap> bootstrap, const GroupConfig& config,
                   std::shared_ptr<Group::Impl>* out) {
  auto impl = std::make_shared<Group::Impl>();
  impl->config = config;
  impl->rank = bootstrap->rank();
  impl->size = bootstrap->size();
  impl->timeout_ms = config.timeout_ms > 0 ? config.timeout_ms : defaultTimeoutMs();
  const std::string requested = requestedTransport(config.transport);

  WireConfig mine{};
  mine.num_experts = config.num_experts;
  mine.hidden = config.hidden;
  mine.dtype = static_cast<int32_t>(config.dtype);
  mine.topk = config.topk;
  mine.pid = static_cast<int64_t>(getpid());
  mine.transports_built = builtTransports();
  std::snprintf(mine.transport, sizeof(mine.transport), "%s", requested.c_str());
  Status own = validateGroupConfig(config, impl->size);
  if (own.isOk() && requested != "auto" && transportBit(requested) == 0) {
    own = makeError(
        StatusCode::kInvalidArgument,
        "transport '{}' is unknown; choose auto, local, ucx, mpi or nccl (built here: {})",
        requested, transportList(builtTransports()));
  }
  if (!own.isOk()) {
    mine.status = static_cast<int32_t>(own.code());
    std::snprintf(mine.error, sizeof(mine.error), "%s", own.message().c_str());
  }
  std::vector<WireConfig> all(static_cast<size_t>(impl->size));
  Deadline deadline = impl->deadline();
  MOECOMM_RETURN_IF_ERROR(bootstrap->allGather(&mine, all.data(), sizeof(mine), deadline));
  if (!own.isOk()) return own;
  MOECOMM_RETURN_IF_ERROR(compareConfigs(all, impl->rank));
  std::string transport;
  MOECOMM_RETURN_IF_ERROR(resolveTransport(requested, all, &transport));

  impl->local_experts = config.num_experts / impl->size;
  if (transport == "nccl") {
    // GPU buffers move over NCCL; the control rounds take the transport "auto" would.
    MOECOMM_RETURN_IF_ERROR(resolveTransport("auto", all, &transport));
#if defined(MOECOMM_HAVE_NCCL)
    MOECOMM_RETURN_IF_ERROR(createNcclTransport(*bootstrap, deadline, &impl->device_transport));
#endif
  }
  MOECOMM_RETURN_IF_ERROR(createTransport(transport, *bootstrap, deadline, &impl->transport));
  impl->bootstrap = std::move(bootstrap);
  MOECOMM_LOG(LogLevel::kInfo,
              "rank {}/{}: group ready: {} experts ({} local), hidden {}, {}, "
              "top-{}, transport {}{} (asked: {}), bootstrap {}, timeout {} ms",
              impl->rank, impl->size, config.num_experts, impl->local_experts, config.hidden,
              dtypeName(config.dtype), config.topk, impl->transport->name(),
              impl->device_transport ? " + nccl for GPU buffers" : "", requested,
              impl->bootstrap->kind(), impl->timeout_ms);
  *out = std::move(impl);
  return Status::ok();
}

Status validateGroupConfig(const GroupConfig& config, int ranks) {
  if (config.num_experts < 1) {
    return makeError(StatusCode::kInvalidArgument, "num_experts must be >= 1, got {}",
                     config.num_experts);
  }
  if (config.num_experts % ranks != 0) {
    return makeError(StatusCode::kInvalidArgument,
                     "num_experts={} is not divisible by the {} ranks; experts are spread in equal "
                     "contiguous blocks, so choose a multiple of {}",
                     config.num_experts, ranks, ranks);
  }
  if (config.hidden < 1) {
    return makeError(StatusCode::kInvalidArgument, "hidden must be >= 1, got {}", config.hidden);
  }
  if (config.dtype != DType::kF32 && config.dtype != DType::kBF16 &&
      config.dtype != DType::kFP8E4M3) {
    return makeError(StatusCode::kInvalidArgument,
                     "dtype {} is not a dispatch payload type; use f32, bf16 or fp8e4m3 (with "
                     "per-128 block scales)",
                     dtypeName(config.dtype));
  }
  if (config.topk < 1 || config.topk > config.num_experts) {
    return makeError(StatusCode::kInvalidArgument, "topk={} is out of range [1, num_experts={}]",
                     config.topk, config.num_experts);
  }
  return Status::ok();
}

void Group::Impl::raise(const Status& status) {
  {
    std::lock_guard<std::mutex> lock(error_mutex);
    last_error = std::string(statusString(status.code())) + ": " + status.message();
  }
  throwIfError(status);
}

Group Group::create(LocalWorld& world, int rank, const GroupConfig& config) {
  if (rank < 0 || rank >= world.size()) {
    throw Error(
        StatusCode::kInvalidArgument,
        text::format("rank {} is out of range [0, {}) for this LocalWorld", rank, world.size()));
  }
  Group group;
  throwIfError(
      createGroup(std::make_shared<InProcessBootstrap>(world.state(), rank), config, &group.impl_));
  return group;
}

Group Group::create(World& world, const GroupConfig& config) {
  if (!world.state()) throw Error(StatusCode::kInvalidUsage, "Group::create on an empty World");
  Group group;
  throwIfError(createGroup(world.state()->bootstrap, config, &group.impl_));
  return group;
}

int Group::rank() const noexcept {
  return impl_->rank;
}
int Group::size() const noexcept {
  return impl_->size;
}
const GroupConfig& Group::config() const noexcept {
  return impl_->config;
}
int Group::localExperts() const noexcept {
  return impl_->local_experts;
}
int Group::firstLocalExpert() const noexcept {
  return impl_->rank * impl_->local_experts;
}
int Group::expertOwner(int expert) const noexcept {
  return (expert < 0 || expert >= impl_->config.num_experts) ? -1 : expert / impl_->local_experts;
}
const char* Group::transportName() const noexcept {
  return impl_->transport->name();
}
std::string Group::lastError() const {
  std::lock_guard<std::mutex> lock(impl_->error_mutex);
  return impl_->last_error;
}

}  // namespace moecomm
