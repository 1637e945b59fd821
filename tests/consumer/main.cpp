// Two in-process ranks, identity experts: combine must return sum_j w_j * x.
#include <moecomm/moecomm.hpp>

#include <cmath>
#include <cstdio>
#include <thread>
#include <vector>

int main() {
  moecomm::LocalWorld world(2);
  int failures[2] = {0, 0};
  auto rank_main = [&](int rank) {
    moecomm::Group group = moecomm::Group::create(world, rank, {4, 16, moecomm::DType::kF32, 2});
    moecomm::Dispatcher dispatcher(group);
    std::vector<float> x(5 * 16), w(10, 0.5f);
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 13) + rank;
    std::vector<int32_t> idx = {0, 1, 1, 2, 2, 3, 3, 0, 0, 2};
    auto batch =
        dispatcher.dispatch(moecomm::TensorView::matrix(x.data(), moecomm::DType::kF32, 5, 16),
                            moecomm::TensorView::matrix(idx.data(), moecomm::DType::kI32, 5, 2),
                            moecomm::TensorView::matrix(w.data(), moecomm::DType::kF32, 5, 2));
    moecomm::Tensor out = dispatcher.combine(batch.x, batch.handle);
    for (size_t i = 0; i < x.size(); ++i) {
      if (std::fabs(out.as<float>()[i] - x[i]) > 1e-6f) ++failures[rank];
    }
  };
  std::thread a(rank_main, 0), b(rank_main, 1);
  a.join();
  b.join();
  std::printf("consumer (C++): %s\n", failures[0] + failures[1] == 0 ? "OK" : "FAILED");
  return failures[0] + failures[1] == 0 ? 0 : 1;
}
