// CUDA kernels on the host (the builtins kernels/cuda uses, no more), for the emulated GPU tests:
// compiled into every kernel source that cuda_to_host rewrote. A launch goes on its stream's
// thread (host_runtime.cpp) and returns; there its blocks run one after another, and a block's
// threads are fibers (ucontext) that switch only at barriers, so __syncthreads, __syncwarp,
// shuffles and ballots keep their meaning and shared memory is one array per block. The blocks
// of a launch, and the threads of a block between two barriers, run in an order a seeded random
// engine picks anew each time (a GPU promises no order), so a thread that reads what another
// writes before a barrier between them reads it too early in some runs. What it cannot show:
// two threads' instructions interleaved between barriers, timing, fast intrinsics, and
// multiply-adds that nvcc fuses where the host compiler does not (CMakeLists.txt turns fusing on).
#pragma once

// Before the CUDA headers, which keep these definitions when they exist.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

#include <cuda_runtime_api.h>
#include <ucontext.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "tests/emulated/stream_work.hpp"

// ThreadSanitizer follows one stack per thread; it must be told of every switch between fibers.
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define MOECOMM_EMULATED_TSAN 1
#endif

// One copy per OS thread: ranks are threads that launch kernels at the same time.
#define __shared__ static thread_local

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

using std::isfinite;
using std::max;
using std::min;

// The IEEE-rounded intrinsics are the host's operators, each result passed through an empty asm
// so that the host compiler never fuses them into a multiply-add (nvcc never fuses them; the
// emulated kernels are built with contraction on, as nvcc builds the rest).
inline float roundedResult(float r) {
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+x"(r));
#elif defined(__aarch64__)
  asm("" : "+w"(r));
#endif
  return r;
}
inline float __fdiv_rn(float a, float b) {
  return roundedResult(a / b);
}
inline float __fmul_rn(float a, float b) {
  return roundedResult(a * b);
}
inline float __fadd_rn(float a, float b) {
  return roundedResult(a + b);
}

namespace emu {

enum class FiberState { kRunnable, kAtWarpBarrier, kAtBlockBarrier, kDone };

struct Fiber {
  ucontext_t context;
  FiberState state = FiberState::kRunnable;
  unsigned thread = 0;
};

inline constexpr size_t kFiberStack = 128 * 1024;
inline constexpr unsigned kWarpSize = 32;

struct Block {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  std::vector<uint64_t> lane_values;  // what each thread offers a shuffle or ballot
  int current = 0;
  std::function<void()>* body = nullptr;
};

inline thread_local Block* block = nullptr;
inline thread_local std::vector<std::unique_ptr<char[]>> stacks;  // reused across launches
#if MOECOMM_EMULATED_TSAN
struct TsanFibers {  // one a stack, reused as the stacks are
  std::vector<void*> fibers;
  ~TsanFibers() {
    for (void* f : fibers) __tsan_destroy_fiber(f);
  }
};
inline thread_local TsanFibers tsan_fibers;
inline thread_local void* tsan_scheduler = nullptr;
#endif

// Before every swapcontext: the fiber (or, with -1, the scheduler) that runs next.
inline void switchingTo([[maybe_unused]] int fiber) {
#if MOECOMM_EMULATED_TSAN
  __tsan_switch_to_fiber(
      fiber < 0 ? tsan_scheduler : tsan_fibers.fibers[static_cast<size_t>(fiber)], 0);
#endif
}
inline thread_local std::vector<char> dynamic_shared;

inline void* dynamicShared() {
  return dynamic_shared.data();
}

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "cuda emulation: %s\n", what);
  std::abort();
}

// MOECOMM_EMULATED_SCHEDULE: shuffle (the default), forward or reverse; MOECOMM_EMULATED_SEED
// picks another shuffle. forward is the order the emulation had before session 17: thread 0
// first, which hides a missing barrier after thread 0 fills shared memory for the others.
enum class Schedule { kShuffle, kForward, kReverse };

inline Schedule schedule() {
  static const Schedule s = [] {
    const char* e = std::getenv("MOECOMM_EMULATED_SCHEDULE");
    if (e == nullptr || std::strcmp(e, "shuffle") == 0) return Schedule::kShuffle;
    if (std::strcmp(e, "forward") == 0) return Schedule::kForward;
    if (std::strcmp(e, "reverse") == 0) return Schedule::kReverse;
    fail("MOECOMM_EMULATED_SCHEDULE must be shuffle, forward or reverse");
  }();
  return s;
}

// The running launch's engine, seeded anew by each launch from the seed and the count of
// launches on this stream's thread, so that a run repeats itself: each stream has a thread of
// its own and its launches come in program order, whatever the other ranks' threads do.
inline thread_local std::mt19937_64 engine;

inline void seedLaunch() {
  static const uint64_t seed = [] {
    const char* e = std::getenv("MOECOMM_EMULATED_SEED");
    return e != nullptr ? std::strtoull(e, nullptr, 0) : 0x5eed5eedULL;
  }();
  thread_local uint64_t launches = 0;
  engine.seed(seed * 0x9e3779b97f4a7c15ULL + ++launches);
}

// Fills `order` with 0..n-1 in the order the schedule takes them.
inline void arrange(std::vector<unsigned>& order, size_t n) {
  order.resize(n);
  std::iota(order.begin(), order.end(), 0u);
  if (schedule() == Schedule::kReverse) std::reverse(order.begin(), order.end());
  if (schedule() == Schedule::kShuffle) std::shuffle(order.begin(), order.end(), engine);
}

// The running fiber stops at a barrier; the scheduler resumes it when its warp or block is there.
inline void wait(FiberState barrier) {
  Fiber& f = block->fibers[static_cast<size_t>(block->current)];
  f.state = barrier;
  switchingTo(-1);
  swapcontext(&f.context, &block->scheduler);
  threadIdx = {block->fibers[static_cast<size_t>(block->current)].thread, 0, 0};
}

inline void fiberMain() {
  (*block->body)();
  block->fibers[static_cast<size_t>(block->current)].state = FiberState::kDone;
  switchingTo(-1);
  swapcontext(&block->fibers[static_cast<size_t>(block->current)].context, &block->scheduler);
}

// Releases the fibers waiting at `barrier` in [begin, end) when every live one there waits.
inline bool release(Block& b, size_t begin, size_t end, FiberState barrier) {
  bool waiting = false;
  for (size_t t = begin; t < end; ++t) {
    if (b.fibers[t].state == barrier) {
      waiting = true;
    } else if (b.fibers[t].state != FiberState::kDone) {
      return false;
    }
  }
  if (!waiting) return false;
  for (size_t t = begin; t < end; ++t) {
    if (b.fibers[t].state == barrier) b.fibers[t].state = FiberState::kRunnable;
  }
  return true;
}

inline void runBlock(unsigned threads, std::function<void()>* body) {
  Block b;
  b.fibers.resize(threads);
  b.lane_values.assign(threads, 0);
  b.body = body;
  block = &b;
  while (stacks.size() < threads) stacks.emplace_back(new char[kFiberStack]);
#if MOECOMM_EMULATED_TSAN
  tsan_scheduler = __tsan_get_current_fiber();
  while (tsan_fibers.fibers.size() < threads) tsan_fibers.fibers.push_back(__tsan_create_fiber(0));
#endif
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = b.fibers[t];
    f.thread = t;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = stacks[t].get();
    f.context.uc_stack.ss_size = kFiberStack;
    f.context.uc_link = nullptr;
    makecontext(&f.context, fiberMain, 0);
  }
  std::vector<unsigned> order;
  for (;;) {
    bool ran = false;
    arrange(order, threads);
    for (const unsigned t : order) {
      if (b.fibers[t].state != FiberState::kRunnable) continue;
      b.current = static_cast<int>(t);
      threadIdx = {t, 0, 0};
      switchingTo(static_cast<int>(t));
      swapcontext(&b.scheduler, &b.fibers[t].context);
      ran = true;
    }
    if (std::all_of(b.fibers.begin(), b.fibers.end(),
                    [](const Fiber& f) { return f.state == FiberState::kDone; })) {
      break;
    }
    bool released = false;
    for (size_t w = 0; w < threads; w += kWarpSize) {
      released |=
          release(b, w, std::min<size_t>(threads, w + kWarpSize), FiberState::kAtWarpBarrier);
    }
    released |= release(b, 0, threads, FiberState::kAtBlockBarrier);
    if (!ran && !released) fail("deadlock: threads wait at barriers that never fill");
  }
  block = nullptr;
}

inline dim3 asDim(dim3 d) {
  return d;
}
inline dim3 asDim(long long v) {
  if (v <= 0 || v > 0x7fffffffLL) fail("a launch dimension out of range");
  return dim3(static_cast<unsigned>(v));
}

// The shape is checked at the launch; the blocks run later, on the stream's thread, with copies
// of the arguments (a kernel's parameters are values).
template <typename Kernel, typename Grid, typename Threads, typename... Args>
void launch(Kernel kernel, Grid grid, Threads threads, size_t shared, cudaStream_t stream,
            Args... args) {
  const dim3 g = asDim(grid), t = asDim(threads);
  if (t.x > 1024 || t.y != 1 || t.z != 1 || g.y != 1 || g.z != 1)
    fail("a launch shape CUDA refuses");
  if (shared > 48 * 1024) fail("more than 48 KiB of dynamic shared memory without an opt-in");
  enqueue(stream, [kernel, g, t, shared, args...]() mutable {
    gridDim = g;
    blockDim = t;
    dynamic_shared.assign(shared + 16, static_cast<char>(0x5a));  // garbage, as on a GPU
    std::function<void()> body = [&] { kernel(args...); };
    seedLaunch();
    std::vector<unsigned> blocks;
    arrange(blocks, g.x);
    for (const unsigned i : blocks) {
      blockIdx = {i, 0, 0};
      runBlock(t.x, &body);
    }
  });
}

// Every lane of the warp offers a value; each reads lane `source`'s.
template <typename T>
T exchange(T value, int source) {
  static_assert(sizeof(T) <= sizeof(uint64_t));
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  const int me = block->current;
  block->lane_values[static_cast<size_t>(me)] = bits;
  wait(FiberState::kAtWarpBarrier);
  const size_t from = static_cast<size_t>(me / 32 * 32 + source);
  if (from >= block->lane_values.size()) fail("a shuffle from a lane past the block");
  const uint64_t got = block->lane_values[from];
  wait(FiberState::kAtWarpBarrier);  // nobody offers again before everyone has read
  T result;
  std::memcpy(&result, &got, sizeof(T));
  return result;
}

inline int lane() {
  return block->current % 32;
}

}  // namespace emu

inline void __syncthreads() {
  emu::wait(emu::FiberState::kAtBlockBarrier);
}
inline void __syncwarp(unsigned = 0xffffffffu) {
  emu::wait(emu::FiberState::kAtWarpBarrier);
}
template <typename T>
T __shfl_xor_sync(unsigned, T v, int mask) {
  return emu::exchange(v, emu::lane() ^ mask);
}
template <typename T>
T __shfl_sync(unsigned, T v, int source) {
  return emu::exchange(v, source);
}
inline unsigned __ballot_sync(unsigned, int predicate) {
  const int me = emu::block->current;
  const size_t base = static_cast<size_t>(me / 32 * 32);
  emu::block->lane_values[static_cast<size_t>(me)] = predicate != 0 ? 1 : 0;
  emu::wait(emu::FiberState::kAtWarpBarrier);
  unsigned bits = 0;
  for (size_t l = 0; l < 32 && base + l < emu::block->lane_values.size(); ++l) {
    if (emu::block->lane_values[base + l] != 0) bits |= 1u << l;
  }
  emu::wait(emu::FiberState::kAtWarpBarrier);
  return bits;
}
inline int __all_sync(unsigned mask, int predicate) {
  const unsigned live = __ballot_sync(mask, 1);
  return __ballot_sync(mask, predicate) == live ? 1 : 0;
}
// Fibers never run at once, so plain read-modify-writes are atomic.
template <typename T, typename U>
T atomicAdd(T* p, U v) {
  const T old = *p;
  *p = static_cast<T>(old + v);
  return old;
}
template <typename T, typename U>
T atomicMin(T* p, U v) {
  const T old = *p;
  *p = std::min<T>(old, static_cast<T>(v));
  return old;
}
inline int __ffs(unsigned v) {
  return __builtin_ffs(static_cast<int>(v));
}
