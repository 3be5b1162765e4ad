#include "runtime/owned_mutex.hpp"

#include <string>
#include <unordered_map>

namespace tmech {
namespace {

// Which mutex each blocked thread waits for: with the mutexes' owners, the
// edges of the wait-for graph. A thread registers before it blocks and walks
// the graph under the same lock, so of two threads closing a cycle, the
// second sees the first's edge.
struct WaitGraph {
  std::mutex mutex;
  std::unordered_map<std::thread::id, const OwnedMutex*> waiting_for;
};

WaitGraph& graph() {
  static WaitGraph g;
  return g;
}

}  // namespace

void OwnedMutex::lock(const char* reentry) {
  const std::thread::id me = std::this_thread::get_id();
  if (owner_.load() == me) throw std::logic_error(reentry);
  if (!mutex_.try_lock()) wait(me);
  owner_.store(me);
}

void OwnedMutex::wait(std::thread::id me) {
  WaitGraph& g = graph();
  {
    std::lock_guard<std::mutex> lock(g.mutex);
    // Holder, the mutex it waits for, that one's holder, ...: at most one step
    // per waiting thread (an edge being released ends the chain early).
    const OwnedMutex* m = this;
    for (size_t step = 0; m && step <= g.waiting_for.size(); ++step) {
      const std::thread::id holder = m->owner_.load();
      if (holder == me)
        throw std::logic_error(
            std::string("waiting for this ") + kind_ +
            " would deadlock: a pass on another thread holds it and waits, from a hook, for a model or KV cache "
            "that a pass on this thread holds (hooks on two threads running each other's models); run them one "
            "after the other");
      const auto next = g.waiting_for.find(holder);
      m = next == g.waiting_for.end() ? nullptr : next->second;
    }
    g.waiting_for[me] = this;
  }
  mutex_.lock();
  std::lock_guard<std::mutex> lock(g.mutex);
  g.waiting_for.erase(me);
}

}  // namespace tmech
