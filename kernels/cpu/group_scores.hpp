// Group scores for group-limited routing: each group's score is the sum of its two best values.
#pragma once

namespace moecomm::cpu {

// values [groups * per_group], all finite; scores [groups]. A group of one scores its one value.
void groupTopTwoSums(const float* values, int groups, int per_group, float* scores);

}  // namespace moecomm::cpu
