// The runtime: the thread pool (parallel_for, its exceptions, the thread
// count from the environment), the mutex that refuses deadlocks, and the
// pool of capture buffers.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "runtime/default_threads.hpp"
#include "runtime/float_buffers.hpp"
#include "runtime/owned_mutex.hpp"
#include "runtime/threads.hpp"
#include "tests/native_tests.hpp"

namespace tmech::test {
namespace {

// Capture buffers: large ones come back for the same size, small ones are
// freed at once, and release gives the kept memory back.
void test_float_buffers() {
  release_pooled_buffers();
  const int64_t big = kPooledBytes / 4 + 3, small = 100;
  float* first = nullptr;
  {
    FloatBuffer a = alloc_floats(big), b = alloc_floats(small);
    a[big - 1] = 1.f;  // the whole size is usable
    b[small - 1] = 1.f;
    first = a.get();
  }
  check(pooled_bytes() == big * 4, "a freed large buffer is kept");
  FloatBuffer again = alloc_floats(big), other = alloc_floats(big + 1);
  check(again.get() == first && other.get() != first && pooled_bytes() == 0, "and handed out for its size only");
  again.reset();
  other.reset();
  check(release_pooled_buffers() == (2 * big + 1) * 4 && pooled_bytes() == 0, "release frees what was kept");
}

// Every index of every parallel_for is visited exactly once, whatever the
// thread count, size and alignment, including calls nested inside a task and
// calls back to back (workers joining late must not rerun or miss chunks).
void test_parallel_for() {
  for (int threads : {1, 2, 3, 5}) {
    set_num_threads(threads);
    std::atomic<bool> ok{true};
    for (int64_t n : {1, 2, 7, 64, 65, 1000, 4097})
      for (int64_t align : {1, 3, 64}) {
        for (int rep = 0; rep < 20; ++rep) {
          std::vector<int> seen(static_cast<size_t>(n), 0);
          std::vector<int> busy(static_cast<size_t>(threads), 0);
          parallel_for(
              n,
              [&](int64_t b, int64_t e, int t) {
                if (t < 0 || t >= threads || busy[static_cast<size_t>(t)]++ != 0)
                  ok = false;  // one chunk per index at a time
                if (b % align != 0) ok = false;
                for (int64_t i = b; i < e; ++i) ++seen[static_cast<size_t>(i)];
                parallel_for(3, [&](int64_t, int64_t, int inner) {
                  if (inner != t) ok = false;
                });  // nested: inline
                --busy[static_cast<size_t>(t)];
              },
              align);
          for (int v : seen)
            if (v != 1) ok = false;
        }
      }
    check(ok, "parallel_for covers every index once with " + std::to_string(threads) + " threads");
  }
  set_num_threads(0);
}

// A chunk that throws, on a worker or on the calling thread: the job drains
// (no chunk runs after parallel_for returns: they may use its caller's stack)
// and the first exception comes out; the pool works on.
void test_parallel_for_exceptions() {
  set_num_threads(3);
  for (int thrower : {0, 1, 2}) {
    std::atomic<int> running{0}, ran{0};
    std::atomic<bool> threw{false};
    bool caught = false;
    try {
      parallel_for(3, [&](int64_t, int64_t, int t) {
        ++running;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        ++ran;
        --running;
        if (t == thrower) {
          threw = true;
          throw std::bad_alloc();
        }
      });
    } catch (const std::bad_alloc&) {
      caught = true;
    }
    const int running_at_return = running, ran_at_return = ran;
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    // (thread `thrower` may have taken no chunk, its share run by the others: then nothing throws)
    check(caught == threw && running_at_return == 0 && ran == ran_at_return,
          "parallel_for: thread " + std::to_string(thrower) + "'s chunk throws, the job drains, its exception out");
  }
  std::atomic<int64_t> sum{0};
  parallel_for(1000, [&](int64_t b, int64_t e, int) { sum += e - b; });
  check(sum == 1000, "parallel_for works after a chunk threw");
  set_num_threads(1);
  bool threw = false;
  try {
    parallel_for(4, [](int64_t, int64_t, int) { throw std::bad_alloc(); });
  } catch (const std::bad_alloc&) {
    threw = true;
  }
  set_num_threads(2);
  std::atomic<int> chunks{0};
  parallel_for(1000, [&](int64_t, int64_t, int) { ++chunks; });
  check(threw && chunks == 2, "a single-threaded job that threw leaves the thread outside the pool (jobs split again)");
  set_num_threads(0);
}

// Two threads each holding a mutex and asking for the other's (hooks running
// each other's models): one is refused, the other gets it; nothing hangs.
void test_deadlock_refused() {
  OwnedMutex a("model"), b("model");
  std::atomic<int> holding{0}, refused{0}, locked{0};
  auto run = [&](OwnedMutex& mine, OwnedMutex& other) {
    OwnedLock hold(mine, "reentry");
    ++holding;
    while (holding < 2) std::this_thread::yield();
    try {
      OwnedLock both(other, "reentry");
      ++locked;
    } catch (const std::logic_error& e) {
      refused += std::string(e.what()).find("would deadlock") != std::string::npos;
    }
  };
  auto done = std::async(std::launch::async, [&] {
    std::thread t1(run, std::ref(a), std::ref(b)), t2(run, std::ref(b), std::ref(a));
    t1.join();
    t2.join();
  });
  if (done.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
    std::printf("FAIL: two threads waiting for each other's mutex deadlocked\n");
    std::_Exit(1);
  }
  check(refused == 1 && locked == 1, "of two threads waiting for each other's mutex, one is refused");
  bool reentry = false;
  {
    OwnedLock hold(a, "reentry");
    try {
      OwnedLock again(a, "reentry");
    } catch (const std::logic_error& e) {
      reentry = std::string(e.what()) == "reentry";
    }
  }
  check(reentry, "a thread asking for a mutex it holds is refused");
}

// Thread counts from the environment: a positive whole number, or the first
// of OMP_NUM_THREADS's comma-separated list; anything else is ignored.
void test_thread_count_parse() {
  const std::pair<const char*, int> cases[] = {
      {"4", 4},  {"1", 1},           {"16,2", 16}, {"0", 0},       {"-2", 0},   {"", 0},    {"abc", 0}, {"3x", 0},
      {" 2", 0}, {"99999999999", 0}, {nullptr, 0}, {"1024", 1024}, {"1025", 0}, {"4000", 0}};  // set_num_threads' limit
  for (const auto& [text, want] : cases)
    check(parse_thread_count(text) == want, std::string("parse_thread_count(\"") + (text ? text : "null") + "\")");
  check(default_thread_count() >= 1, "default_thread_count() >= 1");
}

}  // namespace

void test_runtime() {
  test_thread_count_parse();
  test_parallel_for();
  test_parallel_for_exceptions();
  test_deadlock_refused();
  test_float_buffers();
}

}  // namespace tmech::test
