#include "cli/detach.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <iostream>

#include "absl/strings/str_cat.h"

namespace pipeinfer::cli {
namespace {

int g_ready_fd = -1;  // the supervisor's end of the "cluster is up" pipe

// Copies what is readable on `from` to `to`; false at end of file (or an error).
bool Relay(int from, int to) {
  char buf[4096];
  const ssize_t n = read(from, buf, sizeof buf);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return true;
  if (n <= 0) return false;
  for (ssize_t off = 0; off < n;) {
    const ssize_t w = write(to, buf + off, static_cast<size_t>(n - off));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;  // our own output is gone: keep draining the pipe
    off += w;
  }
  return true;
}

}  // namespace

int ForkSupervisor(const volatile int* stop) {
  int out[2], err[2], ready[2];
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0 || pipe2(ready, O_CLOEXEC) != 0) {
    std::cerr << "error: cannot create pipes for the supervisor\n";
    return 1;
  }
  std::fflush(stdout);
  std::cout.flush();
  const pid_t pid = fork();
  if (pid < 0) {
    std::cerr << "error: cannot fork the supervisor\n";
    return 1;
  }
  if (pid == 0) {
    setsid();                  // no terminal signals; outlives the command
    signal(SIGPIPE, SIG_IGN);  // the command may be gone while we still write to it
    const int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    for (int fd : {out[0], out[1], err[0], err[1], ready[0]}) close(fd);
    if (devnull > 2) close(devnull);
    g_ready_fd = ready[1];  // close-on-exec: no started process holds it
    setvbuf(stdout, nullptr, _IOLBF, 0);
    return -1;
  }
  for (int fd : {out[1], err[1], ready[1]}) close(fd);
  bool out_open = true, err_open = true, ready_open = true, up = false, forwarded = false;
  while (out_open || err_open || ready_open) {
    if (*stop && !forwarded) {
      kill(pid, SIGTERM);  // it stops what it started and exits
      forwarded = true;
    }
    pollfd fds[3] = {{out_open ? out[0] : -1, POLLIN, 0},
                     {err_open ? err[0] : -1, POLLIN, 0},
                     {ready_open ? ready[0] : -1, POLLIN, 0}};
    if (poll(fds, 3, 100) < 0) continue;  // EINTR: a signal; look at *stop
    if (out_open && (fds[0].revents & (POLLIN | POLLHUP | POLLERR))) out_open = Relay(out[0], 1);
    if (err_open && (fds[1].revents & (POLLIN | POLLHUP | POLLERR))) err_open = Relay(err[0], 2);
    if (ready_open && (fds[2].revents & (POLLIN | POLLHUP | POLLERR))) {
      char c = 0;
      const ssize_t n = read(ready[0], &c, 1);
      if (n == 1 && c == 'u') up = true;
      if (n == 0 || (n < 0 && errno != EINTR)) ready_open = false;
    }
  }
  for (int fd : {out[0], err[0], ready[0]}) close(fd);
  if (up) return 0;  // it runs on, supervising; init reaps it when it exits
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status) == 0 ? 1 : WEXITSTATUS(status);
  std::cerr << "error: the supervisor was killed by signal " << WTERMSIG(status) << "\n";
  return 1;
}

absl::Status DetachOutput(const std::string& log) {
  std::fflush(stdout);
  std::cout.flush();
  std::cerr.flush();
  const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot open the supervisor log ", log));
  dup2(fd, 1);
  dup2(fd, 2);
  close(fd);
  if (g_ready_fd >= 0) {
    const char c = 'u';
    (void)!write(g_ready_fd, &c, 1);
    close(g_ready_fd);
    g_ready_fd = -1;
  }
  return absl::OkStatus();
}

}  // namespace pipeinfer::cli
