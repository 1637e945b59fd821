#include "transport/factory.hpp"

#include "transport/local/local_transport.hpp"
#ifdef MOECOMM_HAVE_UCX
#include "transport/ucx/ucx_transport.hpp"
#endif
#ifdef MOECOMM_HAVE_MPI
#include "transport/mpi/mpi_transport.hpp"
#endif

namespace moecomm {

uint32_t builtTransports() {
  uint32_t bits = kTransportLocal;
#ifdef MOECOMM_HAVE_UCX
  bits |= kTransportUcx;
#endif
#ifdef MOECOMM_HAVE_MPI
  bits |= kTransportMpi;
#endif
#ifdef MOECOMM_HAVE_NCCL
  bits |= kTransportNccl;
#endif
  return bits;
}

std::string transportList(uint32_t bits) {
  std::string out;
  for (auto [bit, name] : {std::pair{kTransportLocal, "local"}, std::pair{kTransportUcx, "ucx"},
                           std::pair{kTransportMpi, "mpi"}, std::pair{kTransportNccl, "nccl"}}) {
    if ((bits & bit) == 0) continue;
    if (!out.empty()) out += ", ";
    out += name;
  }
  return out.empty() ? "none" : out;
}

uint32_t transportBit(const std::string& name) {
  if (name == "local") return kTransportLocal;
  if (name == "ucx") return kTransportUcx;
  if (name == "mpi") return kTransportMpi;
  if (name == "nccl") return kTransportNccl;
  return 0;
}

Status createTransport(const std::string& name, Bootstrap& bootstrap, Deadline deadline,
                       std::unique_ptr<Transport>* out) {
  if (name == "local") return createLocalTransport(bootstrap, deadline, out);
#ifdef MOECOMM_HAVE_UCX
  if (name == "ucx") return createUcxTransport(bootstrap, deadline, out);
#endif
#ifdef MOECOMM_HAVE_MPI
  if (name == "mpi") return createMpiTransport(bootstrap, deadline, out);
#endif
  return makeError(StatusCode::kInvalidArgument,
                   "transport '{}' is not built into this library; built: {}", name,
                   transportList(builtTransports()));
}

}  // namespace moecomm
