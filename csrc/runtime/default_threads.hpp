// How many threads the core uses when nobody says: what this process may run
// on, not what the machine has.
#pragma once

namespace tmech {

// TINYMECH_NUM_THREADS, else OMP_NUM_THREADS (the convention CPU libraries
// share; its first number), else the physical cores among the CPUs this
// process may run on (a container's or taskset's CPU set; a second hardware
// thread of a core shares its FMA units and, measured on one core here, two
// threads where one fits cost decoding 14 %), else every hardware thread.
// A variable that is not a whole number in [1, kMaxThreads] (threads.hpp,
// the limit of set_num_threads too) is ignored. Never more than kMaxThreads.
int default_thread_count();

// The same parse, exposed for tests: the number in [1, kMaxThreads] `text`
// starts with (up to a comma), or 0.
int parse_thread_count(const char* text);

}  // namespace tmech
