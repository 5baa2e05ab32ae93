// Errors carry what failed and on which object (file, digest, URL) so that the CLI can show
// them as one line. Lower layers throw img2vm::Error; callers add context as it propagates.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace img2vm {

// Broad classes of failure, so that a caller (the CLI, an orchestrator) can choose an exit
// code or a retry policy without parsing messages.
enum class ErrorKind {
  kInvalidArgument,  // the user's input is malformed (a reference, a flag value)
  kNotFound,         // an image, tag, blob or file that does not exist
  kIntegrity,        // a digest or size mismatch, a corrupt archive
  kIo,               // a local I/O or system-call failure
  kNetwork,          // a transport failure talking to a remote
  kAuth,             // refused credentials
  kUnsupported,      // a media type, feature or platform we do not handle
  kLimit,            // a configured limit was exceeded
  kInternal,         // a bug on our side
};

// The exception every img2vm library throws: a kind and a one-line message with context.
class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string message);
  // What went wrong, for callers that react differently (exit codes, retries).
  ErrorKind kind() const noexcept { return kind_; }

  // Returns a copy of this error with "context: " prepended to its message.
  Error with_context(std::string_view context) const;

 private:
  ErrorKind kind_;
};

// Throws kIo with "what: strerror(errno)" for the errno value given.
[[noreturn]] void throw_errno(std::string_view what, int err);
// Same, using the current errno.
[[noreturn]] void throw_errno(std::string_view what);

}  // namespace img2vm
