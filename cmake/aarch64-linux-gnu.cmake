# Cross-compiles the native tests for 64-bit ARM (NEON kernels), statically
# linked so qemu-aarch64 can run them on an x86-64 machine (see .ci/run).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_EXE_LINKER_FLAGS "-static")
