// Loops marked MOECOMM_VECTOR_CLONES get an AVX2 clone beside the baseline x86-64 one, picked at
// load time by the CPU's features, so the binary still runs on any x86-64. Sanitizer builds go
// without them (one code path to instrument).
#pragma once

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define MOECOMM_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MOECOMM_VECTOR_CLONES
#endif
