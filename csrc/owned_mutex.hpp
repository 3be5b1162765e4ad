// A mutex that knows which thread holds it: a thread asking for it again (a
// Python hook running the model whose pass called it) gets an error instead
// of waiting for itself forever with the GIL released, where Ctrl-C cannot
// reach it.
#pragma once
#include <atomic>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace tmech {

class OwnedMutex {
 public:
  OwnedMutex() = default;
  // A copy of the object it guards (a forked cache) gets a mutex of its own.
  OwnedMutex(const OwnedMutex&) {}
  OwnedMutex& operator=(const OwnedMutex&) { return *this; }

  // Throws std::logic_error(reentry) when this thread holds it already.
  void lock(const char* reentry) {
    if (owner_.load() == std::this_thread::get_id()) throw std::logic_error(reentry);
    mutex_.lock();
    owner_.store(std::this_thread::get_id());
  }
  void unlock() {
    owner_.store(std::thread::id());
    mutex_.unlock();
  }

 private:
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
