/* Compiled as C: the public C header must stay valid C. */
#include <moecomm/moecomm.h>

int moecomm_c_header_default_alignment(void) {
  moecommConfig_t config = MOECOMM_CONFIG_INIT;
  return config.expert_alignment + (int)(config.magic == MOECOMM_CONFIG_MAGIC);
}
