// "1, 3, 5-7" for error messages that name ranks.
#pragma once

#include <string>
#include <vector>

namespace moecomm {

std::string formatRankList(const std::vector<int>& ranks);

}  // namespace moecomm
