#include "threads.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace tmech {
namespace {

thread_local bool t_inside_pool = false;
thread_local int t_index = 0;  // this thread's slot while inside the pool

class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop(); }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void resize(int n) {
    std::lock_guard<std::mutex> call(call_mutex_);
    if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    stop();
    scratch_.resize(static_cast<size_t>(n));
    quit_ = false;
    // New workers start at the current generation so they never rerun a finished job.
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i, g = generation_] { work(i, g); });
  }

  void run(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int64_t align) {
    if (n <= 0) return;
    const int64_t units = (n + align - 1) / align;
    if (t_inside_pool) {  // nested: run inline on this thread's own slot
      fn(0, n, t_index);
      return;
    }
    std::lock_guard<std::mutex> call(call_mutex_);
    if (size() == 1 || units == 1) {
      t_inside_pool = true;
      fn(0, n, 0);
      t_inside_pool = false;
      return;
    }
    const int threads = static_cast<int>(std::min<int64_t>(size(), units));
    auto range = [=](int t) {
      int64_t b = units * t / threads * align, e = units * (t + 1) / threads * align;
      return std::pair<int64_t, int64_t>(std::min(b, n), std::min(e, n));
    };
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = [&](int t) {
        if (t >= threads) return;
        auto r = range(t);
        if (r.first < r.second) fn(r.first, r.second, t);
      };
      pending_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    t_inside_pool = true;
    job_(0);
    t_inside_pool = false;
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return pending_ == 0; });
  }

  float* scratch(int t, int64_t floats) {
    auto& buf = scratch_.at(static_cast<size_t>(t));
    if (static_cast<int64_t>(buf.size()) < floats) buf.resize(static_cast<size_t>(floats));
    return buf.data();
  }

 private:
  void work(int index, uint64_t seen) {
    t_inside_pool = true;
    t_index = index;
    for (;;) {
      std::function<void(int)> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return quit_ || generation_ != seen; });
        if (quit_) return;
        seen = generation_;
        job = job_;
      }
      job(index);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      quit_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  std::mutex call_mutex_;  // one parallel_for at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  std::vector<std::vector<float>> scratch_;
  std::function<void(int)> job_;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool quit_ = false;
};

Pool& pool() {
  static Pool p(0);
  return p;
}

}  // namespace

void set_num_threads(int n) { pool().resize(n); }
int num_threads() { return pool().size(); }

void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int64_t align) {
  pool().run(n, fn, std::max<int64_t>(align, 1));
}

float* thread_scratch(int thread_index, int64_t floats) {
  return pool().scratch(thread_index, floats);
}

}  // namespace tmech
