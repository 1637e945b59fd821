// Group scores for group-limited routing: each group's score is the sum of its two best values.
#pragma once

namespace moecomm::cpu {

// values [groups * per_group], all finite; scores [groups]. A group of one scores its one value.
// seconds, when not null, gets each group's second-best value (-inf for a group of one).
void groupTopTwoSums(const float* values, int groups, int per_group, float* scores, float* seconds);

// The `keep` best groups by score, ties to the lower group, written to kept in ascending group
// order (the order the final selection needs). Returns how many were written: keep, or fewer only
// when scores are NaN.
int keptGroups(const float* scores, int groups, int keep, int* kept);

}  // namespace moecomm::cpu
