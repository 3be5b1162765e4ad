// One process-wide thread pool, sized once (default_thread_count() threads)
// and resizable with set_num_threads. parallel_for splits [0, n) into
// contiguous chunks, which the calling thread and the workers take in turn:
// a thread may run several chunks, one after the other, with its own index.
// Calls from two Python threads at once are serialized; a call from inside
// a pool task runs inline.
#pragma once
#include <cstdint>
#include <functional>

namespace tmech {

// n <= 0: default_thread_count(); more than kMaxThreads: std::invalid_argument;
// a thread the system refuses: std::runtime_error, the pool left as it was.
void set_num_threads(int n);
constexpr int kMaxThreads = 1024;  // more than any CPU offers cores: a mistyped count
int num_threads();

// While one lives, the pool keeps its size (set_num_threads waits for it to go):
// for a caller that sizes per-thread state by num_threads() before its parallel_for,
// whose thread indices would otherwise outrun that state after a resize.
class ThreadCountHold {
 public:
  ThreadCountHold();
  ~ThreadCountHold();
  ThreadCountHold(const ThreadCountHold&) = delete;
  ThreadCountHold& operator=(const ThreadCountHold&) = delete;
};

// fn(begin, end, thread_index), once per chunk. Chunks are split on multiples
// of `align`; two chunks with the same thread_index never run at once.
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int64_t align = 1);

// A per-thread grow-only buffer for kernels' scratch space (thread_index as
// given to fn). Valid until the next call with a larger size on that thread.
float* thread_scratch(int thread_index, int64_t floats);

}  // namespace tmech
