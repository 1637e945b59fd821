/* moecomm C ABI, in NCCL's style: opaque handles, status codes, config structs that start with
 * size/magic/version and grow without breaking callers. No exception crosses it. */
#ifndef MOECOMM_H_
#define MOECOMM_H_

#include <stddef.h>
#include <stdint.h>

#include "moecomm/version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define MOECOMM_C_API
#else
#define MOECOMM_C_API __attribute__((visibility("default")))
#endif

typedef enum {
  moecommSuccess = 0,
  moecommInvalidArgument = 1,
  moecommInvalidUsage = 2,
  moecommSystemError = 3,
  moecommInternalError = 4,
  moecommRemoteError = 5,
  moecommTimeout = 6,
  moecommInProgress = 7,
  moecommNumResults = 8
} moecommResult_t;

typedef enum {
  moecommFloat32 = 0,
  moecommBfloat16 = 1,
  moecommFloat16 = 2,
  moecommFp8E4M3 = 3,
  moecommInt32 = 4,
  moecommInt64 = 5
} moecommDataType_t;

typedef enum { moecommDeviceCpu = 0, moecommDeviceCuda = 1 } moecommDeviceType_t;

/* A framework-free tensor descriptor: contiguous rows, row-major. */
typedef struct {
  void* data;
  moecommDataType_t dtype;
  moecommDeviceType_t device_type;
  int device_index;
  int ndim;
  int64_t sizes[4];
} moecommTensor_t;

typedef struct moecommWorld* moecommWorld_t;   /* threads of one process, or a launched world */
typedef struct moecommGroup* moecommGroup_t;   /* one rank's membership of a group */
typedef struct moecommHandle* moecommHandle_t; /* one dispatch: expert batch and layout */

#define MOECOMM_CONFIG_MAGIC 0x4d4f4531u
#define MOECOMM_ABI_VERSION 1u

typedef struct {
  size_t size;          /* sizeof(moecommConfig_t) as the caller compiled it */
  unsigned int magic;   /* MOECOMM_CONFIG_MAGIC */
  unsigned int version; /* MOECOMM_ABI_VERSION */
  int num_experts;
  int hidden;
  moecommDataType_t dtype; /* dispatch payload: moecommFloat32, moecommBfloat16 or
                              moecommFp8E4M3 (with moecommDispatchFp8) */
  int topk;
  int64_t timeout_ms;    /* 0: MOECOMM_TIMEOUT_MS or 300000 */
  const char* transport; /* NULL or "auto": MOECOMM_TRANSPORT, else the best available */
  int expert_alignment;  /* 0 here means 1 (no padding) */
  /* 0: expert-major batches (one row per token and local expert); 1: token-major (one row per
   * token and rank with its local expert ids and weights, DeepEP's normal mode; combine then sums
   * the ranks' rows without weights). moecomm::BatchLayout says more. */
  int token_major;
} moecommConfig_t;

#define MOECOMM_CONFIG_INIT                                                                       \
  {                                                                                               \
    sizeof(moecommConfig_t), MOECOMM_CONFIG_MAGIC, MOECOMM_ABI_VERSION, 0, 0, moecommBfloat16, 0, \
        0, NULL, 0, 0                                                                             \
  }

MOECOMM_C_API const char* moecommGetErrorString(moecommResult_t result);
/* The last error message of `group`'s rank, or of this thread's last call when group is NULL. The
 * pointer stays valid until the next call on the same group or thread. */
MOECOMM_C_API const char* moecommGetLastError(moecommGroup_t group);
MOECOMM_C_API moecommResult_t moecommGetVersion(int* version);

/* Where moecomm's GPU tensors get their memory (moecomm::DeviceAllocator, include/moecomm/
 * allocator.hpp): a framework's caching allocator. It serves the outputs, handles and temporaries
 * of every call, ordered on the call's stream; parameters always come from cudaMalloc. allocate
 * returns NULL on failure; release gets the same bytes, device and stream, once, from any thread.
 * Process-wide, for tensors allocated from now on; NULL restores the default
 * (MOECOMM_CUDA_ALLOCATOR: sync, cudaMalloc; or stream, a stream-ordered pool). */
#define MOECOMM_ALLOCATOR_MAGIC 0x4d4f4541u
typedef struct {
  size_t size;          /* sizeof(moecommDeviceAllocator_t) as the caller compiled it */
  unsigned int magic;   /* MOECOMM_ALLOCATOR_MAGIC */
  unsigned int version; /* MOECOMM_ABI_VERSION */
  void* (*allocate)(size_t bytes, int device, void* stream, void* context);
  void (*release)(void* ptr, size_t bytes, int device, void* stream, void* context);
  void* context;
  const char* name; /* for error messages (copied); NULL: "application" */
} moecommDeviceAllocator_t;
#define MOECOMM_DEVICE_ALLOCATOR_INIT                                                           \
  {                                                                                             \
    sizeof(moecommDeviceAllocator_t), MOECOMM_ALLOCATOR_MAGIC, MOECOMM_ABI_VERSION, NULL, NULL, \
        NULL, NULL                                                                              \
  }
MOECOMM_C_API moecommResult_t moecommSetDeviceAllocator(const moecommDeviceAllocator_t* allocator);

MOECOMM_C_API moecommResult_t moecommWorldCreate(int nranks, moecommWorld_t* world);
MOECOMM_C_API moecommResult_t moecommWorldDestroy(moecommWorld_t world);

/* This process's rank of a world started by a launcher (torchrun's RANK, WORLD_SIZE, MASTER_ADDR,
 * MASTER_PORT; MOECOMM_-prefixed overrides). timeout_ms 0: MOECOMM_TIMEOUT_MS. */
MOECOMM_C_API moecommResult_t moecommWorldFromEnv(int64_t timeout_ms, moecommWorld_t* world);

/* A framework's process group as callbacks returning 0 on success. barrier may be NULL. */
typedef struct {
  size_t size; /* sizeof(moecommBootstrapCallbacks_t) */
  int rank;
  int nranks;
  int (*all_gather)(const void* send, void* recv, size_t bytes, void* context);
  int (*barrier)(void* context);
  void* context;
} moecommBootstrapCallbacks_t;
#define MOECOMM_BOOTSTRAP_CALLBACKS_INIT \
  { sizeof(moecommBootstrapCallbacks_t), -1, 0, NULL, NULL, NULL }
MOECOMM_C_API moecommResult_t
moecommWorldFromCallbacks(const moecommBootstrapCallbacks_t* callbacks, moecommWorld_t* world);
/* rank: this process's rank (-1 for a world of threads); size: the ranks of the world. */
MOECOMM_C_API moecommResult_t moecommWorldRank(moecommWorld_t world, int* rank);
MOECOMM_C_API moecommResult_t moecommWorldSize(moecommWorld_t world, int* size);

/* Collective: for a world of threads, call once per rank, each from its own thread; for a launched
 * world, once per process with rank -1 (or its own rank). *group is set only on success. */
MOECOMM_C_API moecommResult_t moecommGroupCreate(moecommWorld_t world, int rank,
                                                 const moecommConfig_t* config,
                                                 moecommGroup_t* group);
MOECOMM_C_API moecommResult_t moecommGroupDestroy(moecommGroup_t group);
MOECOMM_C_API moecommResult_t moecommGroupRank(moecommGroup_t group, int* rank);
MOECOMM_C_API moecommResult_t moecommGroupSize(moecommGroup_t group, int* size);

/* x [T, hidden]; topk_idx [T, topk] int32/int64; topk_weights [T, topk] float32. *handle is set
 * only on success and owns the expert batch until moecommHandleDestroy. stream: a cudaStream_t
 * for CUDA tensors (NULL: the default stream), ignored on CPU; docs/cuda.md says which paths wait
 * for it. */
MOECOMM_C_API moecommResult_t moecommDispatch(moecommGroup_t group, const moecommTensor_t* x,
                                              const moecommTensor_t* topk_idx,
                                              const moecommTensor_t* topk_weights,
                                              moecommHandle_t* handle, void* stream);
/* FP8 dispatch, for groups of dtype moecommFp8E4M3: x [T, hidden] e4m3 and x_scales [T,
 * ceil(hidden / 128)] float32 (one scale per 128-element block, as moecomm::quantizeFp8 makes)
 * travel together; moecommHandleGetScales gives the batch's scales. */
MOECOMM_C_API moecommResult_t moecommDispatchFp8(moecommGroup_t group, const moecommTensor_t* x,
                                                 const moecommTensor_t* x_scales,
                                                 const moecommTensor_t* topk_idx,
                                                 const moecommTensor_t* topk_weights,
                                                 moecommHandle_t* handle, void* stream);
/* The batch's block scales [rows, ceil(hidden / 128)] float32 after moecommDispatchFp8. */
MOECOMM_C_API moecommResult_t moecommHandleGetScales(moecommHandle_t handle,
                                                     moecommTensor_t* x_scales);
/* Views of the batch the handle owns. counts has local-experts entries, offsets one more; any
 * output pointer may be NULL. A token-major batch has no row_weights (an empty tensor) and no
 * offsets (left untouched); its ids and weights come from moecommHandleGetTokenSlots. */
MOECOMM_C_API moecommResult_t moecommHandleGetBatch(moecommHandle_t handle, moecommTensor_t* x,
                                                    moecommTensor_t* row_weights,
                                                    int64_t* expert_counts,
                                                    int64_t* expert_offsets);
/* A token-major batch's topk_idx [rows, topk] int32 (local expert ids, -1 for none) and
 * topk_weights [rows, topk] float32; either pointer may be NULL. */
MOECOMM_C_API moecommResult_t moecommHandleGetTokenSlots(moecommHandle_t handle,
                                                         moecommTensor_t* topk_idx,
                                                         moecommTensor_t* topk_weights);
MOECOMM_C_API moecommResult_t moecommHandleDestroy(moecommHandle_t handle);

MOECOMM_C_API moecommResult_t moecommCombine(moecommGroup_t group, const moecommTensor_t* y,
                                             moecommHandle_t handle, const moecommTensor_t* out,
                                             void* stream);
MOECOMM_C_API moecommResult_t moecommDispatchBackward(moecommGroup_t group,
                                                      const moecommTensor_t* grad_rows,
                                                      moecommHandle_t handle,
                                                      const moecommTensor_t* grad_x, void* stream);
MOECOMM_C_API moecommResult_t moecommCombineBackward(
    moecommGroup_t group, const moecommTensor_t* grad_out, const moecommTensor_t* y,
    moecommHandle_t handle, const moecommTensor_t* grad_y, const moecommTensor_t* grad_weights,
    void* stream);

#ifdef __cplusplus
}
#endif

#endif /* MOECOMM_H_ */
