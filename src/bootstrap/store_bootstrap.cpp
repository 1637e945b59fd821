#include "src/bootstrap/store_bootstrap.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <thread>

#include "src/core/env.hpp"
#include "src/core/log.hpp"
#include "src/core/rank_list.hpp"

namespace moecomm {

namespace {

// MOECOMM_<name> wins over <name>, as UCX_ and NCCL_ variables do over generic ones.
std::optional<std::string> launchVariable(const std::string& name, std::string* used) {
  for (const std::string& candidate : {"MOECOMM_" + name, name}) {
    if (auto value = envString(candidate.c_str())) {
      *used = candidate;
      return value;
    }
  }
  *used = name;
  return std::nullopt;
}

Status readInt(const std::string& name, bool required, int fallback, int* out) {
  std::string used;
  auto value = launchVariable(name, &used);
  if (!value) {
    if (!required) {
      *out = fallback;
      return Status::ok();
    }
    return makeError(StatusCode::kInvalidArgument,
                     "{} is not set; a launcher (torchrun, scripts/moecomm-launch) sets RANK, "
                     "WORLD_SIZE, MASTER_ADDR and MASTER_PORT, or set MOECOMM_{} yourself",
                     name, name);
  }
  int parsed = 0;
  auto [end, ec] = std::from_chars(value->data(), value->data() + value->size(), parsed);
  if (ec != std::errc() || end != value->data() + value->size()) {
    return makeError(StatusCode::kInvalidArgument, "{}='{}' is not an integer", used, *value);
  }
  *out = parsed;
  return Status::ok();
}

}  // namespace

Status readLaunchEnv(LaunchEnv* out) {
  LaunchEnv env;
  MOECOMM_RETURN_IF_ERROR(readInt("WORLD_SIZE", true, 0, &env.size));
  MOECOMM_RETURN_IF_ERROR(readInt("RANK", true, 0, &env.rank));
  MOECOMM_RETURN_IF_ERROR(readInt("LOCAL_RANK", false, env.rank, &env.local_rank));
  MOECOMM_RETURN_IF_ERROR(readInt("MASTER_PORT", true, 0, &env.master_port));
  std::string used;
  env.master_addr = launchVariable("MASTER_ADDR", &used).value_or("127.0.0.1");
  if (env.size < 1) {
    return makeError(StatusCode::kInvalidArgument, "WORLD_SIZE={} must be >= 1", env.size);
  }
  if (env.rank < 0 || env.rank >= env.size) {
    return makeError(StatusCode::kInvalidArgument, "RANK={} is out of range [0, WORLD_SIZE={})",
                     env.rank, env.size);
  }
  if (env.master_port < 1 || env.master_port > 65535) {
    return makeError(StatusCode::kInvalidArgument, "MASTER_PORT={} is not a TCP port",
                     env.master_port);
  }
  *out = env;
  return Status::ok();
}

Status StoreBootstrap::create(const LaunchEnv& env, Deadline deadline,
                              std::unique_ptr<Bootstrap>* out) {
  std::unique_ptr<StoreBootstrap> b(new StoreBootstrap());
  b->rank_ = env.rank;
  b->size_ = env.size;
  if (env.rank == 0) {
    MOECOMM_RETURN_IF_ERROR(
        TcpStoreServer::start(env.master_addr, env.master_port, env.size, &b->server_));
  }
  MOECOMM_RETURN_IF_ERROR(TcpStoreClient::connect(env.master_addr, env.master_port, env.rank,
                                                  env.size, deadline, &b->client_));
  MOECOMM_LOG(LogLevel::kInfo, "rank {}/{}: bootstrap through the store at {}", env.rank, env.size,
              b->client_->address());
  *out = std::move(b);
  return Status::ok();
}

StoreBootstrap::~StoreBootstrap() {
  client_.reset();
  // Rank 0 keeps serving until the other ranks are done with the store (bounded).
  if (server_) server_->drain(Deadline::afterMs(std::min<int64_t>(defaultTimeoutMs(), 10000)));
}

Status StoreBootstrap::allGather(const void* in, void* out, size_t bytes, Deadline deadline) {
  const std::string prefix = text::format("ag/{}/", generation_++);
  const int64_t rpc_timeout_ms =
      std::max<int64_t>(2000, std::chrono::duration_cast<std::chrono::milliseconds>(
                                  deadline.when() - Deadline::Clock::now())
                                  .count());
  Status wrote =
      client_->set(prefix + std::to_string(rank_), in, bytes, Deadline::afterMs(rpc_timeout_ms));
  if (!wrote.isOk()) {
    return makeError(StatusCode::kRemoteError,
                     "rank {}: bootstrap all-gather could not write to the store (rank 0 is "
                     "unreachable or dead): {}",
                     rank_, wrote.message());
  }
  std::vector<int> missing(static_cast<size_t>(size_));
  for (int r = 0; r < size_; ++r) missing[r] = r;
  auto* dst = static_cast<std::byte*>(out);
  int backoff_us = 50;
  while (!missing.empty()) {
    std::vector<std::string> keys;
    for (int r : missing) keys.push_back(prefix + std::to_string(r));
    std::vector<std::optional<std::vector<std::byte>>> values;
    // The store answers at once; the caller's deadline bounds the waiting, not this round trip.
    Status got = client_->tryGet(keys, &values, Deadline::afterMs(rpc_timeout_ms));
    if (!got.isOk()) {
      return makeError(
          got.code() == StatusCode::kTimeout ? StatusCode::kTimeout : StatusCode::kRemoteError,
          "rank {}: bootstrap all-gather failed waiting for rank(s) {}: {}", rank_,
          formatRankList(missing), got.message());
    }
    std::vector<int> still;
    for (size_t i = 0; i < missing.size(); ++i) {
      if (!values[i]) {
        still.push_back(missing[i]);
        continue;
      }
      if (values[i]->size() != bytes) {
        return makeError(StatusCode::kInvalidUsage,
                         "rank {}: bootstrap all-gather of {} bytes but rank {} gathered {}; every "
                         "rank must make the same calls in the same order",
                         rank_, bytes, missing[i], values[i]->size());
      }
      if (bytes > 0) std::memcpy(dst + bytes * missing[i], values[i]->data(), bytes);
    }
    missing = std::move(still);
    if (missing.empty()) break;
    if (deadline.expired()) {
      return makeError(StatusCode::kTimeout,
                       "rank {}: bootstrap all-gather timed out waiting for rank(s) {}; they did "
                       "not reach this call (stuck, dead or never started)",
                       rank_, formatRankList(missing));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(backoff_us));
    backoff_us = std::min(backoff_us * 2, 20000);
  }
  return Status::ok();
}

}  // namespace moecomm
