#include "src/core/rank_list.hpp"

#include "src/core/format.hpp"

namespace moecomm {

std::string formatRankList(const std::vector<int>& ranks) {
  std::string text;
  for (size_t i = 0; i < ranks.size();) {
    size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
    if (!text.empty()) text += ", ";
    text += j > i + 1 ? text::format("{}-{}", ranks[i], ranks[j])
                      : (j == i + 1 ? text::format("{}, {}", ranks[i], ranks[j])
                                    : text::format("{}", ranks[i]));
    i = j + 1;
  }
  return text.empty() ? "none" : text;
}

}  // namespace moecomm
