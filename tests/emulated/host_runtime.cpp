// The CUDA runtime, cuBLAS and NCCL calls moecomm makes, on the host, for the emulated GPU tests.
// "Device" memory is host memory from this file's allocator, which remembers every block, so a
// copy or memset that overruns one, or a free of something it never gave, aborts naming it.
// Each stream runs its work (kernels, async copies and memsets, CUB, cuBLAS, NCCL, host
// functions, stream-ordered frees) on a thread of its own, in order, while the caller goes on.
// Events, stream waits and synchronizations order it as on a GPU, so a missing wait shows up as
// a wrong result: a host read before its copy finished, a peer's copy before its data was there.
// MOECOMM_EMULATED_JITTER_US=N (or moecommEmulatedSetJitter) delays each piece of stream work by
// up to N microseconds, and now and then by 20 times that, to widen such races;
// moecommEmulatedSetStreamDelay slows one stream's every piece of work, so that a test can hold
// one rank's stream a whole call behind its peers' every time. The legacy default
// stream (a null stream) waits for every stream and then runs its work at once, as do the blocking
// calls (cudaMemcpy, cudaMemset, cudaFree). cuBLAS GEMMs accumulate in f64; NCCL has one rank per
// communicator (sends to itself). Each thread counts the calls that would make its host wait for a
// GPU (synchronizations, the blocking copies and frees, and async copies with pageable host
// memory): moecommEmulatedHostWaits() lets a test prove that a call never waits.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#if MOECOMM_EMULATE_NCCL
#include <nccl.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
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

int deviceCount() {
  const char* e = std::getenv("MOECOMM_EMULATED_GPUS");
  return e != nullptr ? std::atoi(e) : 1;
}

// ----------------------------------------------------------------------------------- streams
// No wait on a GPU lasts this long in a test; one that does is a deadlock, so it aborts.
constexpr auto kWaitLimit = std::chrono::seconds(300);

std::atomic<int>& jitter() {
  static std::atomic<int> micros = [] {
    const char* e = std::getenv("MOECOMM_EMULATED_JITTER_US");
    return e != nullptr ? std::max(0, std::atoi(e)) : 0;
  }();
  return micros;
}

// A stream's work, in order. `done` counts what has run; a ticket is a position in the order.
struct Queue {
  std::mutex mutex;
  std::condition_variable wake, finished;
  std::deque<std::function<void()>> work;
  uint64_t enqueued = 0, done = 0;
  bool stop = false;
  std::atomic<int> delay_us{0};  // before each piece of work (moecommEmulatedSetStreamDelay)

  uint64_t push(std::function<void()> job) {
    uint64_t ticket;
    {
      const std::lock_guard<std::mutex> lock(mutex);
      work.push_back(std::move(job));
      ticket = ++enqueued;
    }
    wake.notify_one();
    return ticket;
  }
  uint64_t last() {
    const std::lock_guard<std::mutex> lock(mutex);
    return enqueued;
  }
  void waitFor(uint64_t ticket) {
    std::unique_lock<std::mutex> lock(mutex);
    if (!finished.wait_for(lock, kWaitLimit, [&] { return done >= ticket; })) {
      fail("a wait for stream work did not end in 300 s (a deadlock)", this, 0);
    }
  }
  void run() {
    std::minstd_rand random(static_cast<unsigned>(reinterpret_cast<uintptr_t>(this)));
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(mutex);
        wake.wait(lock, [&] { return stop || !work.empty(); });
        if (work.empty()) return;
        job = std::move(work.front());
        work.pop_front();
      }
      // Before each piece of work: this stream's own delay, plus up to the jitter and now and
      // then 20 times that, so that streams drift apart by whole calls, not only by a few kernels.
      unsigned wait = static_cast<unsigned>(delay_us.load());
      if (const int micros = jitter().load(); micros > 0) {
        const unsigned r = static_cast<unsigned>(random());
        wait += r % static_cast<unsigned>(micros) * (r % 16 == 0 ? 20 : 1);
      }
      if (wait > 0) std::this_thread::sleep_for(std::chrono::microseconds(wait));
      job();
      {
        const std::lock_guard<std::mutex> lock(mutex);
        ++done;
      }
      finished.notify_all();
    }
  }
};

// Every live stream, so that the legacy stream and the blocking calls can wait for them all.
struct Streams {
  std::mutex mutex;
  std::vector<std::shared_ptr<Queue>> live;
};
Streams& streams() {
  static auto* s = new Streams;  // stream threads may outlive static destruction
  return *s;
}

struct Stream {
  std::shared_ptr<Queue> queue = std::make_shared<Queue>();
  std::thread worker;

  Stream() {
    worker = std::thread([q = queue] { q->run(); });
    const std::lock_guard<std::mutex> lock(streams().mutex);
    streams().live.push_back(queue);
  }
  ~Stream() {
    {
      const std::lock_guard<std::mutex> lock(streams().mutex);
      auto& live = streams().live;
      live.erase(std::find(live.begin(), live.end(), queue));
    }
    {
      const std::lock_guard<std::mutex> lock(queue->mutex);
      queue->stop = true;
    }
    queue->wake.notify_one();
    worker.join();  // after the work already queued, as cudaStreamDestroy lets it finish
  }
};

// The legacy default stream: null, cudaStreamLegacy or cudaStreamPerThread.
bool isDefault(cudaStream_t stream) {
  return reinterpret_cast<uintptr_t>(stream) <= 2;
}
Queue* queueOf(cudaStream_t stream) {
  return isDefault(stream) ? nullptr : reinterpret_cast<Stream*>(stream)->queue.get();
}

// What the legacy stream does before its work: wait for everything queued so far.
void drainAll() {
  std::vector<std::pair<std::shared_ptr<Queue>, uint64_t>> marks;
  {
    const std::lock_guard<std::mutex> lock(streams().mutex);
    for (const auto& q : streams().live) marks.emplace_back(q, q->last());
  }
  for (auto& [q, ticket] : marks) q->waitFor(ticket);
}

// `job` after the stream's earlier work; on the legacy stream, after every stream's, at once.
uint64_t submit(cudaStream_t stream, std::function<void()> job) {
  Queue* q = queueOf(stream);
  if (q == nullptr) {
    drainAll();
    job();
    return 0;
  }
  return q->push(std::move(job));
}

// Runs `job` in stream order and returns when it has run: the calls that are blocking.
void runAndWait(cudaStream_t stream, std::function<void()> job) {
  Queue* q = queueOf(stream);
  const uint64_t ticket = submit(stream, std::move(job));
  if (q != nullptr) q->waitFor(ticket);
}

// Stream work that touches memory: the bounds are checked when it is queued (the caller's stack
// names the culprit) and again when it runs, when memory from our allocator must still be ours:
// a free that is not ordered after the work that uses the memory aborts here.
struct Range {
  void* p;
  size_t bytes;
  bool ours;
};
Range range(const void* p, size_t bytes, const char* overrun) {
  allocations().check(p, bytes, overrun);
  return {const_cast<void*>(p), bytes, bytes > 0 && allocations().owns(p)};
}
void stillOurs(const Range& r) {
  if (r.ours && !allocations().owns(r.p)) {
    fail("stream work ran on memory freed before it ran (a free not ordered after it)", r.p,
         r.bytes);
  }
}

std::function<void()> copyJob(void* dst, const void* src, size_t bytes) {
  const Range to = range(dst, bytes, "a copy overruns its destination");
  const Range from = range(src, bytes, "a copy overruns its source");
  return [to, from] {
    stillOurs(to);
    stillOurs(from);
    if (to.bytes > 0) std::memmove(to.p, from.p, to.bytes);
  };
}
std::function<void()> setJob(void* dst, int value, size_t bytes) {
  const Range to = range(dst, bytes, "a memset overruns its destination");
  return [to, value] {
    stillOurs(to);
    if (to.bytes > 0) std::memset(to.p, value, to.bytes);
  };
}

// An event is the position of its last record in one stream's work.
struct Event {
  std::mutex mutex;
  std::shared_ptr<Queue> queue;  // null: never recorded, or recorded on the legacy stream
  uint64_t ticket = 0;
  std::shared_ptr<double> ms = std::make_shared<double>(0);  // when the record ran
};
struct Pool {};

double nowMs() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The event's last record as of now, as CUDA takes it: later records do not move a wait.
struct Mark {
  std::shared_ptr<Queue> queue;
  uint64_t ticket = 0;
  void wait() const {
    if (queue) queue->waitFor(ticket);
  }
};
Mark markOf(Event* e) {
  const std::lock_guard<std::mutex> lock(e->mutex);
  return {e->queue, e->ticket};
}

void waitEvent(Event* e) {
  markOf(e).wait();
}

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

int moecommEmulatedSetJitter(int micros) {
  return jitter().exchange(std::max(0, micros));
}

int moecommEmulatedSetStreamDelay(cudaStream_t stream, int micros) {
  Queue* q = queueOf(stream);
  return q == nullptr ? 0 : q->delay_us.exchange(std::max(0, micros));
}

cudaError_t moecommEmulatedEnqueue(cudaStream_t stream, void (*run)(void*), void* work) {
  submit(stream, [run, work] { run(work); });
  return cudaSuccess;
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
  drainAll();
  return allocations().release(p, "cudaFree of memory it did not give");
}
cudaError_t cudaFreeHost(void* p) {
  ++host_waits;
  drainAll();
  return allocations().release(p, "cudaFreeHost of memory it did not give");
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t stream) {
  if (p != nullptr && !allocations().owns(p)) fail("cudaFreeAsync of memory it did not give", p, 0);
  submit(stream, [p] { allocations().release(p, "cudaFreeAsync of memory it did not give"); });
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  ++host_waits;
  submit(nullptr, copyJob(dst, src, bytes));
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind,
                            cudaStream_t stream) {
  // Pageable host memory on either side makes the driver stage the copy: the call returns when
  // the host memory may be reused (read or written), so the host waits.
  if (bytes > 0 && (!allocations().owns(dst) || !allocations().owns(src))) {
    ++host_waits;
    runAndWait(stream, copyJob(dst, src, bytes));
    return cudaSuccess;
  }
  submit(stream, copyJob(dst, src, bytes));
  return cudaSuccess;
}
cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  ++host_waits;
  submit(nullptr, setJob(dst, value, bytes));
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream) {
  submit(stream, setJob(dst, value, bytes));
  return cudaSuccess;
}
cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void* data) {
  submit(stream, [fn, data] { fn(data); });
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  return makeHandle<Stream>(stream);
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned) {
  return cudaStreamCreate(stream);
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (isDefault(stream)) return cudaErrorInvalidResourceHandle;
  return dropHandle<Stream>(stream);
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  ++host_waits;
  Queue* q = queueOf(stream);
  if (q == nullptr) {
    drainAll();
  } else {
    q->waitFor(q->last());
  }
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  ++host_waits;
  drainAll();
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned) {
  if (event == nullptr) return cudaErrorInvalidResourceHandle;
  const Mark mark = markOf(reinterpret_cast<Event*>(event));
  if (!mark.queue || mark.queue.get() == queueOf(stream)) return cudaSuccess;
  submit(stream, [mark] { mark.wait(); });
  return cudaSuccess;
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
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (event == nullptr) return cudaErrorInvalidResourceHandle;
  auto* e = reinterpret_cast<Event*>(event);
  auto stamp = std::make_shared<double>(0);
  const uint64_t ticket = submit(stream, [stamp] { *stamp = nowMs(); });
  const std::lock_guard<std::mutex> lock(e->mutex);
  e->ticket = ticket;
  e->queue = isDefault(stream) ? nullptr : reinterpret_cast<Stream*>(stream)->queue;
  e->ms = std::move(stamp);
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  ++host_waits;
  waitEvent(reinterpret_cast<Event*>(event));
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  auto* a = reinterpret_cast<Event*>(start);
  auto* b = reinterpret_cast<Event*>(end);
  waitEvent(a);
  waitEvent(b);
  const auto stamp = [](Event* e) {
    const std::lock_guard<std::mutex> lock(e->mutex);
    return *e->ms;
  };
  *ms = static_cast<float>(stamp(b) - stamp(a));
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

// The shape checks cuBLAS makes before it queues anything.
bool validGemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, int lda, int ldb,
               int ldc) {
  const bool na = ta == CUBLAS_OP_N, nb = tb == CUBLAS_OP_N;
  return m >= 0 && n >= 0 && k >= 0 && lda >= std::max(1, na ? m : k) &&
         ldb >= std::max(1, nb ? k : n) && ldc >= std::max(1, m);
}

// Column-major C = alpha op(A) op(B) + beta C, as cuBLAS defines it (on the stream's thread).
void gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
          const void* a, cudaDataType at, int lda, const void* b, cudaDataType bt, int ldb,
          float beta, void* c, cudaDataType ct, int ldc) {
  const bool na = ta == CUBLAS_OP_N, nb = tb == CUBLAS_OP_N;
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
}

}  // namespace

extern "C" {

// Scalars and shapes are read at the call (host pointer mode), operands when the work runs; the
// grouped call's pointer arrays are device memory, read then too.
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb,
                            int m, int n, int k, const void* alpha, const void* a, cudaDataType at,
                            int lda, const void* b, cudaDataType bt, int ldb, const void* beta,
                            void* c, cudaDataType ct, int ldc, cublasComputeType_t,
                            cublasGemmAlgo_t) {
  if (!validGemm(ta, tb, m, n, k, lda, ldb, ldc)) return CUBLAS_STATUS_INVALID_VALUE;
  const float alpha_value = *static_cast<const float*>(alpha);
  const float beta_value = *static_cast<const float*>(beta);
  submit(handle->stream, [=] {
    gemm(ta, tb, m, n, k, alpha_value, a, at, lda, b, bt, ldb, beta_value, c, ct, ldc);
  });
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmGroupedBatchedEx(cublasHandle_t handle, const cublasOperation_t ta[],
                                          const cublasOperation_t tb[], const int m[],
                                          const int n[], const int k[], const void* alpha,
                                          const void* const a[], cudaDataType_t at, const int lda[],
                                          const void* const b[], cudaDataType_t bt, const int ldb[],
                                          const void* beta, void* const c[], cudaDataType_t ct,
                                          const int ldc[], int groups, const int group_size[],
                                          cublasComputeType_t) {
  struct Group {
    cublasOperation_t ta, tb;
    int m, n, k, lda, ldb, ldc, size;
    float alpha, beta;
  };
  std::vector<Group> shapes;
  for (int g = 0; g < groups; ++g) {
    if (!validGemm(ta[g], tb[g], m[g], n[g], k[g], lda[g], ldb[g], ldc[g]) || group_size[g] < 0) {
      return CUBLAS_STATUS_INVALID_VALUE;
    }
    shapes.push_back({ta[g], tb[g], m[g], n[g], k[g], lda[g], ldb[g], ldc[g], group_size[g],
                      static_cast<const float*>(alpha)[g], static_cast<const float*>(beta)[g]});
  }
  submit(handle->stream, [=] {
    int problem = 0;
    for (const Group& g : shapes) {
      for (int i = 0; i < g.size; ++i, ++problem) {
        gemm(g.ta, g.tb, g.m, g.n, g.k, g.alpha, a[problem], at, g.lda, b[problem], bt, g.ldb,
             g.beta, c[problem], ct, g.ldc);
      }
    }
  });
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasScalEx(cublasHandle_t handle, int n, const void* alpha,
                            cudaDataType alpha_type, void* x, cudaDataType xt, int incx,
                            cudaDataType) {
  if (alpha_type != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  const float s = *static_cast<const float*>(alpha);
  submit(handle->stream, [=] {
    for (int i = 0; i < n; ++i) {
      store(x, xt, int64_t{i} * incx, s * load(x, xt, int64_t{i} * incx));
    }
  });
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"

// ---------------------------------------------------------------------------------------- NCCL
#if MOECOMM_EMULATE_NCCL
struct ncclComm {
  struct Op {
    void* buffer;
    size_t bytes;
    cudaStream_t stream;
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

// Sends to itself meet its receives in posting order, with the same sizes; the copies go on the
// stream of the receive.
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
      submit(comm->recvs[i].stream,
             copyJob(comm->recvs[i].buffer, comm->sends[i].buffer, comm->sends[i].bytes));
    }
    comm->sends.clear();
    comm->recvs.clear();
  }
  group_comms.clear();
  return ncclSuccess;
}

ncclResult_t post(ncclComm* comm, bool send, const void* buffer, size_t count, ncclDataType_t type,
                  int peer, cudaStream_t stream) {
  if (comm == nullptr || peer != 0) {
    last_error = "the emulation has one rank per communicator";
    return ncclInvalidArgument;
  }
  (send ? comm->sends : comm->recvs)
      .push_back({const_cast<void*>(buffer), count * elementBytes(type), stream});
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
                      ncclComm_t comm, cudaStream_t stream) {
  return post(comm, true, buffer, count, type, peer, stream);
}
ncclResult_t ncclRecv(void* buffer, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  return post(comm, false, buffer, count, type, peer, stream);
}

}  // extern "C"
#endif  // MOECOMM_EMULATE_NCCL
