// SIGINT/SIGTERM handling for the service mains: construct StopSignals before any thread exists
// (threads started later inherit the blocked mask, so no worker is interrupted), then Wait() for
// the signal that asks the service to shut down.
#pragma once

#include <signal.h>

namespace pipeinfer {

class StopSignals {
 public:
  // Blocks SIGINT and SIGTERM in the calling thread.
  StopSignals();
  // Blocks until SIGINT or SIGTERM arrives; returns its number.
  int Wait() const;

 private:
  sigset_t set_;
};

}  // namespace pipeinfer
