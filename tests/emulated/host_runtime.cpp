// The CUDA runtime, cuBLAS and NCCL calls moecomm makes, on the host, for the emulated GPU tests.
// "Device" memory is host memory from this file's allocator, which remembers every block, so a
// copy or memset that overruns one, or a free of something it never gave, aborts naming it.
// Stream work runs at once, in call order: ordering bugs between streams do not show here.
// cuBLAS GEMMs accumulate in f64; NCCL has one rank per communicator (sends to itself).
// Each thread counts the calls that would make its host wait for a GPU (synchronizations, the
// blocking copies and frees, and async copies with pageable host memory):
// moecommEmulatedHostWaits() lets a test prove that a call never waits.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#if MOECOMM_EMULATE_NCCL
#include <nccl.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

namespace {

[[noreturn]] void fail(const char* what, const void* p, size_t bytes) {
  std::fprintf(stderr, "cuda emulation: %s (%p, %zu bytes)\n", what, p, bytes);
  std::abort();
}

class Allocations {
 public:
  void* allocate(size_t bytes) {
    // The exact size, aligned as cudaMalloc aligns, so that AddressSanitizer sees every overrun.
    void* p = nullptr;
    if (posix_memalign(&p, 256, bytes > 0 ? bytes : 1) != 0) return nullptr;
    std::memset(p, 0xa5, bytes);  // garbage, as cudaMalloc gives
    const std::lock_guard<std::mutex> lock(mutex_);
    blocks_[reinterpret_cast<uintptr_t>(p)] = bytes;
    return p;
  }
  cudaError_t release(void* p, const char* what) {
    if (p == nullptr) return cudaSuccess;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      const auto it = blocks_.find(reinterpret_cast<uintptr_t>(p));
      if (it == blocks_.end()) fail(what, p, 0);
      blocks_.erase(it);
    }
    std::free(p);
    return cudaSuccess;
  }
  // True when p lies in one of our blocks ("device" or pinned memory), false for pageable memory.
  bool owns(const void* p) {
    const auto a = reinterpret_cast<uintptr_t>(p);
    const std::lock_guard<std::mutex> lock(mutex_);
    auto it = blocks_.upper_bound(a);
    if (it == blocks_.begin()) return false;
    --it;
    return a < it->first + std::max<size_t>(it->second, 1);
  }
  // A range that starts inside one of our blocks must end inside it; others are the caller's.
  void check(const void* p, size_t bytes, const char* what) {
    if (bytes == 0) return;
    if (p == nullptr) fail(what, p, bytes);
    const auto a = reinterpret_cast<uintptr_t>(p);
    const std::lock_guard<std::mutex> lock(mutex_);
    auto it = blocks_.upper_bound(a);
    if (it == blocks_.begin()) return;
    --it;
    if (a < it->first + it->second && a + bytes > it->first + it->second) fail(what, p, bytes);
  }

 private:
  std::mutex mutex_;
  std::map<uintptr_t, size_t> blocks_;
};

Allocations& allocations() {
  static Allocations a;
  return a;
}

thread_local int current_device = 0;
thread_local unsigned long long host_waits = 0;  // see moecommEmulatedHostWaits

cudaError_t copy(void* dst, const void* src, size_t bytes) {
  allocations().check(dst, bytes, "a copy overruns its destination");
  allocations().check(src, bytes, "a copy overruns its source");
  if (bytes > 0) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t set(void* dst, int value, size_t bytes) {
  allocations().check(dst, bytes, "a memset overruns its destination");
  if (bytes > 0) std::memset(dst, value, bytes);
  return cudaSuccess;
}
int deviceCount() {
  const char* e = std::getenv("MOECOMM_EMULATED_GPUS");
  return e != nullptr ? std::atoi(e) : 1;
}

struct Stream {};
struct Event {
  double ms = 0;
};
struct Pool {};

// Streams, events and pools are opaque handles to small host objects.
template <typename Object, typename Handle>
cudaError_t makeHandle(Handle* out) {
  *out = reinterpret_cast<Handle>(new Object);
  return cudaSuccess;
}
template <typename Object, typename Handle>
cudaError_t dropHandle(Handle handle) {
  delete reinterpret_cast<Object*>(handle);
  return cudaSuccess;
}

}  // namespace

extern "C" {

unsigned long long moecommEmulatedHostWaits(void) {
  return host_waits;
}

// ------------------------------------------------------------------------------- the runtime
cudaError_t cudaGetDeviceCount(int* count) {
  *count = deviceCount();
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= deviceCount()) return cudaErrorInvalidDevice;
  current_device = device;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = current_device;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties_v2(cudaDeviceProp* prop, int device) {
  if (device < 0 || device >= deviceCount()) return cudaErrorInvalidDevice;
  std::memset(prop, 0, sizeof(*prop));
  std::snprintf(prop->name, sizeof(prop->name), "emulated GPU");
  prop->totalGlobalMem = size_t{16} << 30;
  prop->multiProcessorCount = 4;
  prop->major = 9;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  return cudaGetDeviceProperties_v2(prop, device);
}
cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = allocations().allocate(bytes);
  return *p != nullptr ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaMallocHost(void** p, size_t bytes) {
  return cudaMalloc(p, bytes);
}
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  return cudaMalloc(p, bytes);
}
cudaError_t cudaMallocFromPoolAsync(void** p, size_t bytes, cudaMemPool_t pool, cudaStream_t) {
  if (pool == nullptr) return cudaErrorInvalidValue;
  return cudaMalloc(p, bytes);
}
cudaError_t cudaFree(void* p) {
  ++host_waits;  // cudaFree waits for the device's outstanding work
  return allocations().release(p, "cudaFree of memory it did not give");
}
cudaError_t cudaFreeHost(void* p) {
  ++host_waits;
  return allocations().release(p, "cudaFreeHost of memory it did not give");
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t) {
  return allocations().release(p, "cudaFreeAsync of memory it did not give");
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  ++host_waits;
  return copy(dst, src, bytes);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind,
                            cudaStream_t) {
  // Pageable host memory on either side makes the driver stage the copy, and it may wait.
  if (bytes > 0 && (!allocations().owns(dst) || !allocations().owns(src))) ++host_waits;
  return copy(dst, src, bytes);
}
cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  ++host_waits;
  return set(dst, value, bytes);
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) {
  return set(dst, value, bytes);
}
cudaError_t cudaLaunchHostFunc(cudaStream_t, cudaHostFn_t fn, void* data) {
  fn(data);  // stream work runs at once
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  return makeHandle<Stream>(stream);
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned) {
  return cudaStreamCreate(stream);
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  return dropHandle<Stream>(stream);
}
cudaError_t cudaStreamSynchronize(cudaStream_t) {
  ++host_waits;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  ++host_waits;
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t event, unsigned) {
  return event != nullptr ? cudaSuccess : cudaErrorInvalidResourceHandle;
}
cudaError_t cudaEventCreate(cudaEvent_t* event) {
  return makeHandle<Event>(event);
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned) {
  return cudaEventCreate(event);
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  return dropHandle<Event>(event);
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t) {
  if (event == nullptr) return cudaErrorInvalidResourceHandle;
  reinterpret_cast<Event*>(event)->ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch())
          .count();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) {
  ++host_waits;
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  *ms = static_cast<float>(reinterpret_cast<Event*>(end)->ms - reinterpret_cast<Event*>(start)->ms);
  return cudaSuccess;
}
cudaError_t cudaGetLastError() {
  return cudaSuccess;
}
cudaError_t cudaPeekAtLastError() {
  return cudaSuccess;
}
const char* cudaGetErrorString(cudaError_t error) {
  return error == cudaSuccess ? "no error" : "an emulated CUDA error";
}
const char* cudaGetErrorName(cudaError_t error) {
  return error == cudaSuccess ? "cudaSuccess" : "cudaErrorEmulated";
}
cudaError_t cudaMemPoolCreate(cudaMemPool_t* pool, const cudaMemPoolProps*) {
  return makeHandle<Pool>(pool);
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, cudaMemPoolAttr, void*) {
  return cudaSuccess;
}
cudaError_t cudaMemPoolDestroy(cudaMemPool_t pool) {
  return dropHandle<Pool>(pool);
}

// -------------------------------------------------------------------------------------- cuBLAS
struct cublasContext {
  cudaStream_t stream = nullptr;
};
cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  *handle = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}
const char* cublasGetStatusString(cublasStatus_t status) {
  return status == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "an emulated cuBLAS error";
}

}  // extern "C"

namespace {

float load(const void* p, cudaDataType type, int64_t i) {
  if (type == CUDA_R_32F) return static_cast<const float*>(p)[i];
  if (type != CUDA_R_16BF) fail("a cuBLAS operand that is neither f32 nor bf16", p, 0);
  const uint32_t bits = uint32_t{static_cast<const uint16_t*>(p)[i]} << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

void store(void* p, cudaDataType type, int64_t i, float v) {
  if (type == CUDA_R_32F) {
    static_cast<float*>(p)[i] = v;
    return;
  }
  if (type != CUDA_R_16BF) fail("a cuBLAS output that is neither f32 nor bf16", p, 0);
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
  bits = nan ? 0x7fff0000u : bits + 0x7fffu + ((bits >> 16) & 1u);  // round to nearest even
  static_cast<uint16_t*>(p)[i] = static_cast<uint16_t>(bits >> 16);
}

// Column-major C = alpha op(A) op(B) + beta C, as cuBLAS defines it.
cublasStatus_t gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
                    const void* a, cudaDataType at, int lda, const void* b, cudaDataType bt,
                    int ldb, float beta, void* c, cudaDataType ct, int ldc) {
  const bool na = ta == CUBLAS_OP_N, nb = tb == CUBLAS_OP_N;
  if (m < 0 || n < 0 || k < 0 || lda < std::max(1, na ? m : k) || ldb < std::max(1, nb ? k : n) ||
      ldc < std::max(1, m)) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      double sum = 0;
      for (int p = 0; p < k; ++p) {
        const float x = na ? load(a, at, int64_t{p} * lda + i) : load(a, at, int64_t{i} * lda + p);
        const float y = nb ? load(b, bt, int64_t{j} * ldb + p) : load(b, bt, int64_t{p} * ldb + j);
        sum += static_cast<double>(x) * y;
      }
      const int64_t at_c = int64_t{j} * ldc + i;
      const double old = beta == 0.0f ? 0.0 : static_cast<double>(beta) * load(c, ct, at_c);
      store(c, ct, at_c, static_cast<float>(alpha * sum + old));
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

extern "C" {

cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void* alpha, const void* a, cudaDataType at,
                            int lda, const void* b, cudaDataType bt, int ldb, const void* beta,
                            void* c, cudaDataType ct, int ldc, cublasComputeType_t,
                            cublasGemmAlgo_t) {
  return gemm(ta, tb, m, n, k, *static_cast<const float*>(alpha), a, at, lda, b, bt, ldb,
              *static_cast<const float*>(beta), c, ct, ldc);
}

cublasStatus_t cublasGemmGroupedBatchedEx(cublasHandle_t, const cublasOperation_t ta[],
                                          const cublasOperation_t tb[], const int m[],
                                          const int n[], const int k[], const void* alpha,
                                          const void* const a[], cudaDataType_t at, const int lda[],
                                          const void* const b[], cudaDataType_t bt, const int ldb[],
                                          const void* beta, void* const c[], cudaDataType_t ct,
                                          const int ldc[], int groups, const int group_size[],
                                          cublasComputeType_t) {
  const auto* alphas = static_cast<const float*>(alpha);
  const auto* betas = static_cast<const float*>(beta);
  int problem = 0;
  for (int g = 0; g < groups; ++g) {
    for (int i = 0; i < group_size[g]; ++i, ++problem) {
      const cublasStatus_t s =
          gemm(ta[g], tb[g], m[g], n[g], k[g], alphas[g], a[problem], at, lda[g], b[problem], bt,
               ldb[g], betas[g], c[problem], ct, ldc[g]);
      if (s != CUBLAS_STATUS_SUCCESS) return s;
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasScalEx(cublasHandle_t, int n, const void* alpha, cudaDataType alpha_type,
                            void* x, cudaDataType xt, int incx, cudaDataType) {
  if (alpha_type != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  const float s = *static_cast<const float*>(alpha);
  for (int i = 0; i < n; ++i) store(x, xt, int64_t{i} * incx, s * load(x, xt, int64_t{i} * incx));
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"

// ---------------------------------------------------------------------------------------- NCCL
#if MOECOMM_EMULATE_NCCL
struct ncclComm {
  struct Op {
    void* buffer;
    size_t bytes;
  };
  std::vector<Op> sends, recvs;  // posted in the open group
};

namespace {

thread_local int group_depth = 0;
thread_local std::vector<ncclComm*> group_comms;
thread_local const char* last_error = "";

size_t elementBytes(ncclDataType_t type) {
  switch (type) {
    case ncclInt8:
    case ncclUint8:
      return 1;
    case ncclFloat16:
    case ncclBfloat16:
      return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
      return 4;
    default:
      return 8;
  }
}

// Sends to itself meet its receives in posting order, with the same sizes.
ncclResult_t completeGroup() {
  for (ncclComm* comm : group_comms) {
    if (comm->sends.size() != comm->recvs.size()) {
      last_error = "the group's sends and receives to this rank do not pair up";
      return ncclInvalidUsage;
    }
    for (size_t i = 0; i < comm->sends.size(); ++i) {
      if (comm->sends[i].bytes != comm->recvs[i].bytes) {
        last_error = "a send and its receive differ in size";
        return ncclInvalidUsage;
      }
      allocations().check(comm->sends[i].buffer, comm->sends[i].bytes, "ncclSend overruns");
      allocations().check(comm->recvs[i].buffer, comm->recvs[i].bytes, "ncclRecv overruns");
      std::memmove(comm->recvs[i].buffer, comm->sends[i].buffer, comm->sends[i].bytes);
    }
    comm->sends.clear();
    comm->recvs.clear();
  }
  group_comms.clear();
  return ncclSuccess;
}

ncclResult_t post(ncclComm* comm, bool send, const void* buffer, size_t count, ncclDataType_t type,
                  int peer) {
  if (comm == nullptr || peer != 0) {
    last_error = "the emulation has one rank per communicator";
    return ncclInvalidArgument;
  }
  (send ? comm->sends : comm->recvs)
      .push_back({const_cast<void*>(buffer), count * elementBytes(type)});
  if (std::find(group_comms.begin(), group_comms.end(), comm) == group_comms.end()) {
    group_comms.push_back(comm);
  }
  return group_depth > 0 ? ncclSuccess : completeGroup();
}

}  // namespace

extern "C" {

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::memset(id, 0x42, sizeof(*id));
  return ncclSuccess;
}
ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId, int rank,
                                    ncclConfig_t*) {
  if (nranks != 1 || rank != 0) {
    last_error = "the emulation has one rank per communicator";
    return ncclInvalidUsage;
  }
  *comm = new ncclComm;
  return ncclSuccess;
}
ncclResult_t ncclCommGetAsyncError(ncclComm_t, ncclResult_t* state) {
  *state = ncclSuccess;
  return ncclSuccess;
}
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}
ncclResult_t ncclCommAbort(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}
const char* ncclGetErrorString(ncclResult_t result) {
  return result == ncclSuccess ? "no error" : "an emulated NCCL error";
}
const char* ncclGetLastError(ncclComm_t) {
  return last_error;
}
ncclResult_t ncclGroupStart() {
  ++group_depth;
  return ncclSuccess;
}
ncclResult_t ncclGroupEnd() {
  if (group_depth == 0) return ncclInvalidUsage;
  return --group_depth > 0 ? ncclSuccess : completeGroup();
}
ncclResult_t ncclSend(const void* buffer, size_t count, ncclDataType_t type, int peer,
                      ncclComm_t comm, cudaStream_t) {
  return post(comm, true, buffer, count, type, peer);
}
ncclResult_t ncclRecv(void* buffer, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t) {
  return post(comm, false, buffer, count, type, peer);
}

}  // extern "C"
#endif  // MOECOMM_EMULATE_NCCL
