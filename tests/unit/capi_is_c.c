/* Compiled as C: the public C header must stay valid C. */
#include <moecomm/moecomm.h>

int moecomm_c_header_default_alignment(void) {
  moecommConfig_t config = MOECOMM_CONFIG_INIT;
  return config.expert_alignment + (int)(config.magic == MOECOMM_CONFIG_MAGIC);
}

int moecomm_c_header_allocator_init(void) {
  moecommDeviceAllocator_t allocator = MOECOMM_DEVICE_ALLOCATOR_INIT;
  return (int)(allocator.magic == MOECOMM_ALLOCATOR_MAGIC) + (allocator.allocate == NULL);
}
