#include "small_stack.hpp"

#include <pthread.h>

#include <cstring>
#include <exception>
#include <string>

#include "img2vm/base/error.hpp"

namespace img2vm::testing {

namespace {

struct Job {
  const std::function<void()>* fn;
  std::exception_ptr error;
};

void* run_job(void* arg) {
  auto* job = static_cast<Job*>(arg);
  try {
    (*job->fn)();
  } catch (...) {
    job->error = std::current_exception();
  }
  return nullptr;
}

}  // namespace

void run_with_stack(size_t stack_bytes, const std::function<void()>& fn) {
  pthread_attr_t attr;
  if (int e = pthread_attr_init(&attr)) throw_errno("pthread_attr_init", e);
  Job job{&fn, nullptr};
  pthread_t t;
  int e = pthread_attr_setstacksize(&attr, stack_bytes);
  if (!e) e = pthread_create(&t, &attr, run_job, &job);
  pthread_attr_destroy(&attr);
  if (e) throw_errno("starting a thread with a " + std::to_string(stack_bytes) + "-byte stack", e);
  pthread_join(t, nullptr);
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace img2vm::testing
