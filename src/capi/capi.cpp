// The C ABI over the C++ objects. Every entry point runs inside `guarded`, so no exception crosses
// it; outputs are written only on success.
#include <cstddef>
#include <new>
#include <optional>
#include <string>

#include "moecomm/moecomm.h"
#include "moecomm/moecomm.hpp"
#include "src/core/status.hpp"

// Ranks as threads (local) or as this process's rank of a launched world (process).
struct moecommWorld {
  std::optional<moecomm::LocalWorld> local;
  std::optional<moecomm::World> process;
};

struct moecommGroup {
  moecomm::Group group;
  moecomm::Dispatcher dispatcher;
  std::string last_error;
};

struct moecommHandle {
  moecomm::ExpertBatch batch;
};

namespace {

thread_local std::string thread_last_error;

moecommResult_t fail(moecommGroup_t group, moecommResult_t code, const std::string& message) {
  thread_last_error = message;
  if (group != nullptr) group->last_error = message;
  return code;
}

template <typename Fn>
moecommResult_t guarded(moecommGroup_t group, Fn&& fn) {
  try {
    fn();
    return moecommSuccess;
  } catch (const moecomm::Error& e) {
    return fail(group, static_cast<moecommResult_t>(e.code()), e.what());
  } catch (const std::bad_alloc&) {
    return fail(group, moecommSystemError, "moecomm: out of host memory");
  } catch (const std::exception& e) {
    return fail(group, moecommInternalError, std::string("moecomm: internal error: ") + e.what());
  } catch (...) {
    return fail(group, moecommInternalError, "moecomm: internal error: unknown exception");
  }
}

void require(bool ok, const char* message) {
  if (!ok) throw moecomm::Error(moecomm::StatusCode::kInvalidArgument, message);
}

moecomm::TensorView toView(const moecommTensor_t* t, const char* name) {
  if (t == nullptr) {
    throw moecomm::Error(moecomm::StatusCode::kInvalidArgument,
                         std::string(name) + " is a NULL moecommTensor_t pointer");
  }
  if (t->ndim < 0 || t->ndim > moecomm::kMaxDims || t->dtype < moecommFloat32 ||
      t->dtype > moecommInt64) {
    throw moecomm::Error(moecomm::StatusCode::kInvalidArgument,
                         std::string(name) + " has an invalid ndim or dtype");
  }
  moecomm::TensorView v;
  v.data = t->data;
  v.dtype = static_cast<moecomm::DType>(t->dtype);
  v.device.kind = static_cast<moecomm::DeviceKind>(t->device_type);
  v.device.index = t->device_index;
  v.ndim = t->ndim;
  for (int i = 0; i < t->ndim; ++i) v.shape[i] = t->sizes[i];
  return v;
}

moecommTensor_t fromView(const moecomm::TensorView& v) {
  moecommTensor_t t{};
  t.data = v.data;
  t.dtype = static_cast<moecommDataType_t>(v.dtype);
  t.device_type = static_cast<moecommDeviceType_t>(v.device.kind);
  t.device_index = v.device.index;
  t.ndim = v.ndim;
  for (int i = 0; i < v.ndim; ++i) t.sizes[i] = v.shape[i];
  return t;
}

// Reads a config whose caller may have compiled an older, shorter struct: fields past its size keep
// their defaults.
moecomm::GroupConfig readConfig(const moecommConfig_t* config, moecomm::DispatchOptions* options) {
  require(config != nullptr, "config is NULL; pass a moecommConfig_t set from MOECOMM_CONFIG_INIT");
  require(config->magic == MOECOMM_CONFIG_MAGIC,
          "config.magic is wrong; initialize the struct with MOECOMM_CONFIG_INIT");
  require(config->size >= offsetof(moecommConfig_t, transport),
          "config.size is too small; initialize the struct with MOECOMM_CONFIG_INIT");
  moecomm::GroupConfig out;
  out.num_experts = config->num_experts;
  out.hidden = config->hidden;
  out.dtype = static_cast<moecomm::DType>(config->dtype);
  out.topk = config->topk;
  out.timeout_ms = config->timeout_ms;
  if (config->size >= offsetof(moecommConfig_t, transport) + sizeof(const char*) &&
      config->transport != nullptr) {
    out.transport = config->transport;
  }
  *options = {};
  if (config->size >= offsetof(moecommConfig_t, expert_alignment) + sizeof(int) &&
      config->expert_alignment != 0) {
    options->expert_alignment = config->expert_alignment;
  }
  if (config->size >= offsetof(moecommConfig_t, token_major) + sizeof(int)) {
    require(config->token_major == 0 || config->token_major == 1,
            "config.token_major must be 0 (expert-major batches) or 1 (token-major)");
    if (config->token_major == 1) options->layout = moecomm::BatchLayout::kTokenMajor;
  }
  return out;
}

// A C allocator's function pointers behind the C++ interface.
class CAllocator final : public moecomm::DeviceAllocator {
 public:
  explicit CAllocator(const moecommDeviceAllocator_t& c)
      : allocate_(c.allocate),
        release_(c.release),
        context_(c.context),
        name_(c.name != nullptr ? c.name : "application") {}
  void* allocate(size_t bytes, int device, void* stream) override {
    return allocate_(bytes, device, stream, context_);
  }
  void release(void* ptr, size_t bytes, int device, void* stream) noexcept override {
    release_(ptr, bytes, device, stream, context_);
  }
  const char* name() const noexcept override { return name_.c_str(); }

 private:
  void* (*allocate_)(size_t, int, void*, void*);
  void (*release_)(void*, size_t, int, void*, void*);
  void* context_;
  std::string name_;
};

}  // namespace

extern "C" {

moecommResult_t moecommSetDeviceAllocator(const moecommDeviceAllocator_t* allocator) {
  return guarded(nullptr, [&] {
    if (allocator == nullptr) {
      moecomm::setDeviceAllocator(nullptr);
      return;
    }
    require(allocator->magic == MOECOMM_ALLOCATOR_MAGIC,
            "allocator.magic is wrong; initialize the struct with MOECOMM_DEVICE_ALLOCATOR_INIT");
    require(allocator->size >= offsetof(moecommDeviceAllocator_t, name) + sizeof(const char*),
            "allocator.size is too small; initialize the struct with "
            "MOECOMM_DEVICE_ALLOCATOR_INIT");
    require(allocator->allocate != nullptr && allocator->release != nullptr,
            "allocator.allocate and allocator.release must both be set");
    moecomm::setDeviceAllocator(std::make_shared<CAllocator>(*allocator));
  });
}

const char* moecommGetErrorString(moecommResult_t result) {
  if (result < moecommSuccess || result >= moecommNumResults) return "unknown result code";
  return moecomm::statusString(static_cast<moecomm::StatusCode>(result));
}

const char* moecommGetLastError(moecommGroup_t group) {
  return group != nullptr ? group->last_error.c_str() : thread_last_error.c_str();
}

moecommResult_t moecommGetVersion(int* version) {
  if (version == nullptr) return fail(nullptr, moecommInvalidArgument, "version is NULL");
  *version = MOECOMM_VERSION_CODE;
  return moecommSuccess;
}

moecommResult_t moecommWorldCreate(int nranks, moecommWorld_t* world) {
  return guarded(nullptr, [&] {
    require(world != nullptr, "world is NULL");
    *world = new moecommWorld{moecomm::LocalWorld(nranks), std::nullopt};
  });
}

moecommResult_t moecommWorldFromEnv(int64_t timeout_ms, moecommWorld_t* world) {
  return guarded(nullptr, [&] {
    require(world != nullptr, "world is NULL");
    *world = new moecommWorld{std::nullopt, moecomm::World::fromEnv(timeout_ms)};
  });
}

moecommResult_t moecommWorldFromCallbacks(const moecommBootstrapCallbacks_t* callbacks,
                                          moecommWorld_t* world) {
  return guarded(nullptr, [&] {
    require(world != nullptr && callbacks != nullptr, "callbacks and world must not be NULL");
    require(callbacks->size == sizeof(moecommBootstrapCallbacks_t),
            "moecommBootstrapCallbacks_t.size does not match this library; initialize it with "
            "MOECOMM_BOOTSTRAP_CALLBACKS_INIT");
    moecomm::BootstrapCallbacks cb;
    cb.rank = callbacks->rank;
    cb.size = callbacks->nranks;
    cb.all_gather = callbacks->all_gather;
    cb.barrier = callbacks->barrier;
    cb.context = callbacks->context;
    *world = new moecommWorld{std::nullopt, moecomm::World::fromCallbacks(cb)};
  });
}

moecommResult_t moecommWorldRank(moecommWorld_t world, int* rank) {
  return guarded(nullptr, [&] {
    require(world != nullptr && rank != nullptr, "world and rank must not be NULL");
    *rank = world->process ? world->process->rank() : -1;
  });
}

moecommResult_t moecommWorldSize(moecommWorld_t world, int* size) {
  return guarded(nullptr, [&] {
    require(world != nullptr && size != nullptr, "world and size must not be NULL");
    *size = world->process ? world->process->size() : world->local->size();
  });
}

moecommResult_t moecommWorldDestroy(moecommWorld_t world) {
  delete world;
  return moecommSuccess;
}

moecommResult_t moecommGroupCreate(moecommWorld_t world, int rank, const moecommConfig_t* config,
                                   moecommGroup_t* group) {
  return guarded(nullptr, [&] {
    require(world != nullptr, "world is NULL; create it with moecommWorldCreate");
    require(group != nullptr, "group is NULL");
    moecomm::DispatchOptions options;
    moecomm::GroupConfig cfg = readConfig(config, &options);
    if (world->process) {
      require(rank == -1 || rank == world->process->rank(),
              "a launched world has one rank per process: pass -1 or this process's rank");
    }
    moecomm::Group g = world->process ? moecomm::Group::create(*world->process, cfg)
                                      : moecomm::Group::create(*world->local, rank, cfg);
    auto* created = new moecommGroup{g, moecomm::Dispatcher(g, options), {}};
    *group = created;
  });
}

moecommResult_t moecommGroupDestroy(moecommGroup_t group) {
  delete group;
  return moecommSuccess;
}

moecommResult_t moecommGroupRank(moecommGroup_t group, int* rank) {
  return guarded(group, [&] {
    require(group != nullptr && rank != nullptr, "group and rank must not be NULL");
    *rank = group->group.rank();
  });
}

moecommResult_t moecommGroupSize(moecommGroup_t group, int* size) {
  return guarded(group, [&] {
    require(group != nullptr && size != nullptr, "group and size must not be NULL");
    *size = group->group.size();
  });
}

moecommResult_t moecommDispatch(moecommGroup_t group, const moecommTensor_t* x,
                                const moecommTensor_t* topk_idx,
                                const moecommTensor_t* topk_weights, moecommHandle_t* handle,
                                void* stream) {
  return guarded(group, [&] {
    require(group != nullptr && handle != nullptr, "group and handle must not be NULL");
    auto batch = group->dispatcher.dispatch(toView(x, "x"), toView(topk_idx, "topk_idx"),
                                            toView(topk_weights, "topk_weights"),
                                            moecomm::ExecContext{stream});
    *handle = new moecommHandle{std::move(batch)};
  });
}

moecommResult_t moecommDispatchFp8(moecommGroup_t group, const moecommTensor_t* x,
                                   const moecommTensor_t* x_scales, const moecommTensor_t* topk_idx,
                                   const moecommTensor_t* topk_weights, moecommHandle_t* handle,
                                   void* stream) {
  return guarded(group, [&] {
    require(group != nullptr && handle != nullptr, "group and handle must not be NULL");
    auto batch = group->dispatcher.dispatch(
        toView(x, "x"), toView(x_scales, "x_scales"), toView(topk_idx, "topk_idx"),
        toView(topk_weights, "topk_weights"), moecomm::ExecContext{stream});
    *handle = new moecommHandle{std::move(batch)};
  });
}

moecommResult_t moecommHandleGetScales(moecommHandle_t handle, moecommTensor_t* x_scales) {
  return guarded(nullptr, [&] {
    require(handle != nullptr && x_scales != nullptr, "handle and x_scales must not be NULL");
    require(handle->batch.x_scales.numel() > 0 || handle->batch.x.numel() == 0,
            "this batch has no scales: it came from moecommDispatch, not moecommDispatchFp8");
    *x_scales = fromView(handle->batch.x_scales.view());
  });
}

moecommResult_t moecommHandleGetBatch(moecommHandle_t handle, moecommTensor_t* x,
                                      moecommTensor_t* row_weights, int64_t* expert_counts,
                                      int64_t* expert_offsets) {
  return guarded(nullptr, [&] {
    require(handle != nullptr, "handle is NULL; get one from moecommDispatch");
    const moecomm::ExpertBatch& b = handle->batch;
    if (x != nullptr) *x = fromView(b.x.view());
    if (row_weights != nullptr) *row_weights = fromView(b.row_weights.view());
    for (size_t e = 0; expert_counts != nullptr && e < b.expert_counts.size(); ++e) {
      expert_counts[e] = b.expert_counts[e];
    }
    for (size_t e = 0; expert_offsets != nullptr && e < b.expert_offsets.size(); ++e) {
      expert_offsets[e] = b.expert_offsets[e];
    }
  });
}

moecommResult_t moecommHandleGetTokenSlots(moecommHandle_t handle, moecommTensor_t* topk_idx,
                                           moecommTensor_t* topk_weights) {
  return guarded(nullptr, [&] {
    require(handle != nullptr, "handle is NULL; get one from moecommDispatch");
    require(handle->batch.topk_idx.defined(),
            "this batch is expert-major: its slots are rows; set config.token_major = 1 for "
            "token-major batches");
    if (topk_idx != nullptr) *topk_idx = fromView(handle->batch.topk_idx.view());
    if (topk_weights != nullptr) *topk_weights = fromView(handle->batch.topk_weights.view());
  });
}

moecommResult_t moecommHandleDestroy(moecommHandle_t handle) {
  delete handle;
  return moecommSuccess;
}

moecommResult_t moecommCombine(moecommGroup_t group, const moecommTensor_t* y,
                               moecommHandle_t handle, const moecommTensor_t* out, void* stream) {
  return guarded(group, [&] {
    require(group != nullptr && handle != nullptr, "group and handle must not be NULL");
    group->dispatcher.combine(toView(y, "y"), handle->batch.handle, toView(out, "out"),
                              moecomm::ExecContext{stream});
  });
}

moecommResult_t moecommDispatchBackward(moecommGroup_t group, const moecommTensor_t* grad_rows,
                                        moecommHandle_t handle, const moecommTensor_t* grad_x,
                                        void* stream) {
  return guarded(group, [&] {
    require(group != nullptr && handle != nullptr, "group and handle must not be NULL");
    group->dispatcher.dispatchBackward(toView(grad_rows, "grad_rows"), handle->batch.handle,
                                       toView(grad_x, "grad_x"), moecomm::ExecContext{stream});
  });
}

moecommResult_t moecommCombineBackward(moecommGroup_t group, const moecommTensor_t* grad_out,
                                       const moecommTensor_t* y, moecommHandle_t handle,
                                       const moecommTensor_t* grad_y,
                                       const moecommTensor_t* grad_weights, void* stream) {
  return guarded(group, [&] {
    require(group != nullptr && handle != nullptr, "group and handle must not be NULL");
    group->dispatcher.combineBackward(toView(grad_out, "grad_out"), toView(y, "y"),
                                      handle->batch.handle, toView(grad_y, "grad_y"),
                                      toView(grad_weights, "grad_weights"),
                                      moecomm::ExecContext{stream});
  });
}

}  // extern "C"
