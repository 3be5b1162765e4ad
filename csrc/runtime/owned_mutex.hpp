// A mutex that knows which thread holds it, so that a wait that could never
// end is refused with an error instead of blocking forever with the GIL
// released, where Ctrl-C cannot reach it:
// - a thread asking for a mutex it holds already (a Python hook running the
//   model whose pass called it);
// - a thread asking for a mutex held by a thread that waits, directly or along
//   a chain of threads, for one this thread holds (thread A's hook runs model
//   2 while thread B's hook runs model 1): before each wait, the chain of
//   holders and the mutexes they wait for is followed; if it leads back to
//   this thread, the wait would close a cycle, and this thread is refused (its
//   pass unwinds and releases what it holds, so the other thread goes on).
#pragma once
#include <atomic>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace tmech {

class OwnedMutex {
 public:
  // kind: what the mutex guards, for the error message ("model", "KV cache").
  explicit OwnedMutex(const char* kind) : kind_(kind) {}
  // A copy of the object it guards (a forked cache) gets a mutex of its own.
  OwnedMutex(const OwnedMutex& other) : kind_(other.kind_) {}
  OwnedMutex& operator=(const OwnedMutex&) { return *this; }

  // Throws std::logic_error(reentry) when this thread holds it already, and
  // std::logic_error (a deadlock) when waiting for it would never end.
  void lock(const char* reentry);
  void unlock() {
    owner_.store(std::thread::id());
    mutex_.unlock();
  }

 private:
  void wait(std::thread::id me);  // lock() when another thread holds it

  const char* kind_;
  std::mutex mutex_;
  std::atomic<std::thread::id> owner_{};
};

// Holds an OwnedMutex for a scope.
class OwnedLock {
 public:
  OwnedLock(OwnedMutex& m, const char* reentry) : m_(m) { m_.lock(reentry); }
  ~OwnedLock() { m_.unlock(); }
  OwnedLock(const OwnedLock&) = delete;
  OwnedLock& operator=(const OwnedLock&) = delete;

 private:
  OwnedMutex& m_;
};

}  // namespace tmech
