#include "runtime/default_threads.hpp"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <utility>

#include "runtime/threads.hpp"

#if defined(__linux__)
#include <sched.h>
#endif

namespace tmech {
namespace {

int hardware_threads() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

#if defined(__linux__)
// -1 where the file is missing or holds no number.
long read_number(const std::string& path) {
  std::ifstream in(path);
  long v = -1;
  if (!(in >> v)) return -1;
  return v;
}

// Physical cores among the CPUs of this process's affinity mask; the mask's
// CPU count where the topology cannot be read; 0 where the mask cannot.
int affinity_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 0;
  std::set<std::pair<long, long>> cores;  // (package, core)
  int logical = 0;
  bool topology = true;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &set)) continue;
    ++logical;
    const std::string dir = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    const long package = read_number(dir + "physical_package_id"), core = read_number(dir + "core_id");
    if (package < 0 || core < 0) topology = false;
    cores.emplace(package, core);
  }
  return topology && !cores.empty() ? static_cast<int>(cores.size()) : logical;
}
#endif

}  // namespace

int parse_thread_count(const char* text) {
  if (!text) return 0;
  long n = 0;
  const char* p = text;
  for (; *p >= '0' && *p <= '9'; ++p) {
    n = n * 10 + (*p - '0');
    if (n > kMaxThreads) return 0;
  }
  const bool ends_well = p != text && (*p == '\0' || *p == ',');
  return ends_well && n > 0 ? static_cast<int>(n) : 0;
}

int default_thread_count() {
  for (const char* name : {"TINYMECH_NUM_THREADS", "OMP_NUM_THREADS"})
    if (const int n = parse_thread_count(std::getenv(name))) return n;
#if defined(__linux__)
  if (const int n = affinity_cores()) return std::min(n, kMaxThreads);
#endif
  return std::min(hardware_threads(), kMaxThreads);
}

}  // namespace tmech
