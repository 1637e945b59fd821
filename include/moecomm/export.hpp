// Symbol visibility for the public API. The library builds with hidden visibility; only what
// carries MOECOMM_API is exported.
#pragma once

#if defined(_WIN32)
#define MOECOMM_API
#else
#define MOECOMM_API __attribute__((visibility("default")))
#endif
