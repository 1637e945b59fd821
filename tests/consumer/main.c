/* The C ABI through pkg-config: version and error strings. */
#include <moecomm/moecomm.h>
#include <stdio.h>
#include <string.h>

int main(void) {
  int version = 0;
  moecommWorld_t world = NULL;
  if (moecommGetVersion(&version) != moecommSuccess || version != MOECOMM_VERSION_CODE) return 1;
  if (moecommWorldCreate(0, &world) != moecommInvalidArgument) return 2;
  if (strlen(moecommGetLastError(NULL)) == 0) return 3;
  printf("consumer (C): OK, version %d\n", version);
  return 0;
}
