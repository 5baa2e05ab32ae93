// Runs code on a thread with a stack of a given size, so that a test can show that some work's
// stack use does not grow with its input (a recursion over a deep tree would overflow it).
#pragma once

#include <cstddef>
#include <functional>

namespace img2vm::testing {

// Runs `fn` on a new thread whose stack is `stack_bytes` long and waits for it; an exception
// `fn` throws is rethrown here. Throws img2vm::Error when the thread cannot be started.
void run_with_stack(size_t stack_bytes, const std::function<void()>& fn);

}  // namespace img2vm::testing
