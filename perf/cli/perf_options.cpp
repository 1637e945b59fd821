#include "perf/cli/perf_options.hpp"

#include <cctype>
#include <cmath>

namespace moecomm::perf {

bool parseSize(const std::string& text, uint64_t* out) {
  if (text.empty()) return false;
  size_t end = 0;
  double value = 0;
  try {
    value = std::stod(text, &end);
  } catch (...) {
    return false;
  }
  uint64_t scale = 1;
  if (end < text.size()) {
    if (end + 1 != text.size()) return false;
    switch (std::toupper(static_cast<unsigned char>(text[end]))) {
      case 'K':
        scale = uint64_t{1} << 10;
        break;
      case 'M':
        scale = uint64_t{1} << 20;
        break;
      case 'G':
        scale = uint64_t{1} << 30;
        break;
      default:
        return false;
    }
  }
  if (value < 0 || !std::isfinite(value)) return false;
  *out = static_cast<uint64_t>(std::llround(value * static_cast<double>(scale)));
  return true;
}

size_t dtypeBytes(const std::string& name) {
  if (name == "int8" || name == "uint8") return 1;
  if (name == "half" || name == "bfloat16") return 2;
  if (name == "int32" || name == "uint32" || name == "float") return 4;
  if (name == "int64" || name == "uint64" || name == "double") return 8;
  return 0;
}

namespace {

// A size option: accepts 4096, 4K, 32M, 1G.
CLI::Option* addSize(CLI::App& app, const std::string& flags, uint64_t& target,
                     const std::string& help) {
  return app
      .add_option_function<std::string>(
          flags,
          [&target, flags](const std::string& text) {
            if (!parseSize(text, &target)) {
              throw CLI::ValidationError(flags,
                                         "'" + text + "' is not a size (e.g. 4096, 64K, 32M, 1G)");
            }
          },
          help)
      ->type_name("SIZE");
}

void addCommon(CLI::App& app, CommonOptions& o) {
  app.add_option("-t,--threads", o.threads,
                 "ranks as threads of this process; 0 (default) runs as one rank of a world "
                 "started by mpirun/srun or torchrun-style variables (RANK, WORLD_SIZE, "
                 "MASTER_ADDR, MASTER_PORT), or alone")
      ->check(CLI::Range(0, 1024));
  app.add_option("--transport", o.transport, "local, ucx, mpi, nccl or auto")
      ->check(CLI::IsMember({"auto", "local", "ucx", "mpi", "nccl"}));
  app.add_option("-T,--timeout", o.timeout_s, "deadline of every wait, in seconds")
      ->check(CLI::PositiveNumber);
  app.add_option("-J,--json", o.json, "write the config, ranks, rows and summary to this file");
}

}  // namespace

void addAlltoallOptions(CLI::App& app, AlltoallOptions& o) {
  app.option_defaults()->always_capture_default();
  addSize(app, "-b,--minbytes", o.min_bytes,
          "smallest size: one rank's whole send buffer (default 8K)");
  addSize(app, "-e,--maxbytes", o.max_bytes, "largest size (default 32M)");
  app.add_option("-f,--stepfactor", o.factor, "multiply the size by this each step (default 2)")
      ->check(CLI::Range(1.0001, 1e6));
  addSize(app, "-i,--stepbytes", o.step_bytes, "add this to the size each step (wins over -f)");
  app.add_option("-n,--iters", o.iters, "timed iterations per size")->check(CLI::Range(1, 1000000));
  app.add_option("-w,--warmup_iters", o.warmup, "untimed iterations first")
      ->check(CLI::Range(0, 1000000));
  app.add_option("-c,--check", o.check, "checked iterations per size after the timed ones (0: off)")
      ->check(CLI::Range(0, 1000));
  app.add_option("-d,--datatype", o.dtype,
                 "int8, uint8, int32, uint32, int64, uint64, half, float, double, bfloat16")
      ->check(CLI::IsMember({"int8", "uint8", "int32", "uint32", "int64", "uint64", "half", "float",
                             "double", "bfloat16"}));
  app.add_option("-a,--average", o.average,
                 "time across ranks: 0 rank 0, 1 average, 2 minimum, 3 maximum")
      ->check(CLI::Range(0, 3));
  app.add_option("-N,--run_cycles", o.repeats, "sweeps of all sizes")
      ->check(CLI::Range(1, 1000000));
  app.add_option("--mode", o.mode,
                 "tag: messages into the receive buffer; put: one-sided puts into registered "
                 "windows (the path dispatch/combine take)")
      ->check(CLI::IsMember({"tag", "put"}));
  app.add_option("--baseline", o.baseline,
                 "mpi: also time MPI_Alltoall on the same sizes and print the ratio (needs mpirun)")
      ->check(CLI::IsMember({"mpi"}));
  app.add_flag("--corrupt", o.corrupt, "flip one received byte on rank 0 (shows #wrong works)")
      ->group("");
  addCommon(app, o);
  app.callback([&o] {
    if (o.min_bytes > o.max_bytes) {
      throw CLI::ValidationError("-b/-e", "minbytes is larger than maxbytes");
    }
  });
}

void addDispatchOptions(CLI::App& app, DispatchBenchOptions& o) {
  app.option_defaults()->always_capture_default();
  app.add_option("--tokens", o.tokens, "tokens per rank")->check(CLI::Range(1, 1 << 24));
  app.add_option("--hidden", o.hidden, "elements per token")->check(CLI::Range(1, 1 << 20));
  app.add_option("--topk", o.topk, "experts per token")->check(CLI::Range(1, 1024));
  app.add_option("--experts", o.experts, "experts in all (a multiple of the ranks)")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--dtype", o.dtype,
                 "payload: bf16, f32, or fp8 (e4m3 values with an f32 scale per 128; the "
                 "identity experts return bf16 to combine)")
      ->check(CLI::IsMember({"bf16", "f32", "fp8"}));
  app.add_option("--routing", o.routing,
                 "uniform, zipf:S (expert popularity ~ 1/rank^S) or hot:FRACTION (that share of "
                 "tokens picks expert 0 first)")
      ->check([](const std::string& r) -> std::string {
        if (r == "uniform") return "";
        for (const char* prefix : {"zipf:", "hot:"}) {
          const std::string p = prefix;
          if (r.rfind(p, 0) == 0) {
            try {
              double v = std::stod(r.substr(p.size()));
              if (p == "hot:" && (v < 0 || v > 1)) return "hot:FRACTION needs 0 <= FRACTION <= 1";
              if (p == "zipf:" && v < 0) return "zipf:S needs S >= 0";
              return "";
            } catch (...) {
              return "'" + r + "': the number after '" + p + "' is missing";
            }
          }
        }
        return "'" + r + "' is not uniform, zipf:S or hot:FRACTION";
      });
  app.add_option("-n,--iters", o.iters, "timed iterations")->check(CLI::Range(1, 1000000));
  app.add_option("-w,--warmup_iters", o.warmup, "untimed iterations first")
      ->check(CLI::Range(0, 1000000));
  app.add_flag("!--no-check", o.check, "skip verifying the first iteration against the reference");
  app.add_option("--alignment", o.alignment, "rows per expert block are padded to this")
      ->check(CLI::Range(1, 4096));
  app.add_option("--layout", o.layout,
                 "what a rank receives: expert (one row per token and local expert, expert by "
                 "expert) or token (one row per token and rank, DeepEP's normal mode; the "
                 "identity experts hand combine each row times its local weights' sum)")
      ->check(CLI::IsMember({"expert", "token"}));
  addCommon(app, o);
}

}  // namespace moecomm::perf
