#include "runtime/threads.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "runtime/default_threads.hpp"

namespace tmech {
namespace {

thread_local bool t_inside_pool = false;
thread_local int t_index = 0;  // this thread's slot while inside the pool

// Marks the calling thread as inside the pool for a scope, however it ends.
struct InsidePool {
  InsidePool() { t_inside_pool = true; }
  ~InsidePool() { t_inside_pool = false; }
};

// A decoded token makes dozens of parallel calls a few microseconds apart;
// waking a sleeping thread costs about as much as one of them. So waiters
// first spin for a short while, and only then sleep on a condition variable.
constexpr double kSpinSeconds = 200e-6;
// Chunks per thread. Whoever is free takes the next chunk, so a thread the
// OS has not scheduled yet (a busy machine) delays nobody: the others run its
// share. Measured on an idle machine, one chunk per thread beat four (prefill
// 700 vs 660 tok/s on GPT-2 small): bigger chunks re-read less of A.
constexpr int64_t kChunksPerThread = 1;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// True as soon as ready() holds, false if it still doesn't after kSpinSeconds.
template <class Ready>
bool spin_until(Ready ready) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(kSpinSeconds);
  for (int i = 0;; ++i) {
    if (ready()) return true;
    cpu_relax();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > deadline) return false;
  }
}

// Workers and the caller take chunks of a job until none are left. A worker
// announces itself (active_) before it checks that the job is still open, and
// the caller closes the job before it waits for active_ to drop to zero; with
// sequentially consistent atomics, a worker either joins in time to be waited
// for or sees the job closed and touches nothing. A chunk that throws (an
// allocation failing) stops the handing out of chunks; once every thread has
// left the job (which lives on the caller's stack, as the arrays it writes
// may), the caller rethrows the first exception.
class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop(); }

  int size() const { return size_; }

  void resize(int n) {
    if (n > kMaxThreads)
      throw std::invalid_argument("at most " + std::to_string(kMaxThreads) + " threads, not " + std::to_string(n));
    std::lock_guard<std::mutex> call(call_mutex_);
    if (n <= 0) n = default_thread_count();
    const int before = size();
    try {
      start(n);
    } catch (const std::system_error&) {  // the system refused a thread: keep the pool as it was
      start(before);
      throw std::runtime_error("could not start " + std::to_string(n) + " threads; still using " +
                               std::to_string(before));
    }
  }

  void run(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int64_t align) {
    if (n <= 0) return;
    const int64_t units = (n + align - 1) / align;
    if (t_inside_pool) {  // nested: run inline on this thread's own slot
      fn(0, n, t_index);
      return;
    }
    std::lock_guard<std::mutex> call(call_mutex_);
    InsidePool inside;
    if (size() == 1 || units == 1) {
      fn(0, n, 0);
      return;
    }
    const int64_t chunks = std::min<int64_t>(units, size() * kChunksPerThread);
    std::atomic<int64_t> next{0};
    std::mutex error_mutex;
    std::exception_ptr error;
    const std::function<void(int)> take_chunks = [&, chunks, units](int t) {
      for (int64_t c; (c = next.fetch_add(1)) < chunks;) {
        const int64_t b = std::min(units * c / chunks * align, n);
        const int64_t e = std::min(units * (c + 1) / chunks * align, n);
        if (b >= e) continue;
        try {
          fn(b, e, t);
        } catch (...) {
          std::lock_guard<std::mutex> lock(error_mutex);
          if (!error) error = std::current_exception();
          next = chunks;
        }
      }
    };
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &take_chunks;
      open_ = true;
      ++generation_;
    }
    wake_.notify_all();
    take_chunks(0);
    open_ = false;
    if (!spin_until([&] { return active_ == 0; })) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [&] { return active_ == 0; });
    }
    if (error) std::rethrow_exception(error);
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
      auto fresh = [&] { return quit_ || generation_ != seen; };
      if (!spin_until(fresh)) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, fresh);
      }
      if (quit_) return;
      seen = generation_;
      ++active_;
      if (open_) {
        const std::function<void(int)>* job;
        {
          std::lock_guard<std::mutex> lock(mutex_);
          job = job_;
        }
        (*job)(index);  // never throws: take_chunks keeps its chunks' exceptions
      }
      if (--active_ == 0) {
        std::lock_guard<std::mutex> lock(mutex_);  // so a caller about to sleep cannot miss it
        done_.notify_one();
      }
    }
  }

  // n threads: the caller and n - 1 workers.
  void start(int n) {
    stop();
    scratch_.resize(static_cast<size_t>(n));
    quit_ = false;
    // New workers start at the current generation so they never rerun a finished job.
    const uint64_t g = generation_.load();
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i, g] { work(i, g); });
    size_ = n;
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      quit_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
    size_ = 1;
  }

  std::mutex call_mutex_;  // one parallel_for at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  std::vector<std::vector<float>> scratch_;
  const std::function<void(int)>* job_ = nullptr;  // the caller's, while open_
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> open_{false};  // the current job still has chunks to hand out
  std::atomic<int> active_{0};     // workers inside the current job
  std::atomic<bool> quit_{false};
  std::atomic<int> size_{1};  // the caller and the workers (read without the locks)
};

Pool& pool() {
  static Pool p(0);
  return p;
}

std::shared_mutex& size_mutex() {
  static std::shared_mutex m;
  return m;
}

}  // namespace

void set_num_threads(int n) {
  std::unique_lock<std::shared_mutex> lock(size_mutex());
  pool().resize(n);
}
int num_threads() { return pool().size(); }

ThreadCountHold::ThreadCountHold() { size_mutex().lock_shared(); }
ThreadCountHold::~ThreadCountHold() { size_mutex().unlock_shared(); }

void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int64_t align) {
  pool().run(n, fn, std::max<int64_t>(align, 1));
}

float* thread_scratch(int thread_index, int64_t floats) { return pool().scratch(thread_index, floats); }

}  // namespace tmech
