// Rewrites a .cu file of kernels/cuda as host C++ for the emulated GPU tests: each launch
// `kernel<<<grid, block, shared, stream>>>(args)` becomes a call of emu::launch, and each
// `extern __shared__ T name[];` a pointer to the launch's dynamic shared memory. Everything else
// is left as written, so the emulated tests run the kernels' own code.
#include <cctype>
#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>
#include <string>

namespace {

bool isNameChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_' || c == ':';
}

// The start of the kernel name that ends just before `end` (template arguments included).
size_t nameStart(const std::string& s, size_t end) {
  size_t k = end;
  while (k > 0 && std::isspace(static_cast<unsigned char>(s[k - 1])) != 0) --k;
  int depth = 0;
  while (k > 0) {
    const char c = s[k - 1];
    if (c == '>') {
      ++depth;
    } else if (c == '<') {
      --depth;
    } else if (depth == 0 && !isNameChar(c)) {
      break;
    }
    --k;
  }
  return k;
}

std::string rewriteLaunches(const std::string& s) {
  std::string out;
  size_t from = 0;
  for (size_t open = s.find("<<<"); open != std::string::npos; open = s.find("<<<", from)) {
    const size_t begin = nameStart(s, open);
    const size_t close = s.find(">>>", open);
    const size_t args = close == std::string::npos ? close : s.find('(', close);
    if (args == std::string::npos) throw std::runtime_error("a launch without arguments");
    const std::string name = s.substr(begin, open - begin);
    const std::string config = s.substr(open + 3, close - open - 3);
    out += s.substr(from, begin - from);
    // A generic lambda lets template kernels deduce their arguments, as <<<>>> does.
    out += "emu::launch([&](auto... emu_args) { " + name + "(emu_args...); }, " + config + ", ";
    from = args + 1;
  }
  return out + s.substr(from);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: cuda_to_host in.cu out.cpp\n";
    return 2;
  }
  std::ifstream in(argv[1]);
  if (!in) {
    std::cerr << "cuda_to_host: cannot read " << argv[1] << "\n";
    return 1;
  }
  std::stringstream text;
  text << in.rdbuf();
  try {
    const std::regex shared(R"(extern __shared__ (\w+) (\w+)\[\];)");
    const std::string body = std::regex_replace(
        text.str(), shared, "$1* $2 = reinterpret_cast<$1*>(emu::dynamicShared());");
    std::ofstream out(argv[2]);
    out << "// Generated from " << argv[1] << " by cuda_to_host: do not edit.\n"
        << "#line 1 \"" << argv[1] << "\"\n"
        << rewriteLaunches(body);
    if (!out) {
      std::cerr << "cuda_to_host: cannot write " << argv[2] << "\n";
      return 1;
    }
  } catch (const std::exception& e) {
    std::cerr << "cuda_to_host: " << argv[1] << ": " << e.what() << "\n";
    return 1;
  }
  return 0;
}
