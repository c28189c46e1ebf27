// Small helpers for absl::Status / absl::StatusOr propagation.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define PI_CONCAT_INNER(a, b) a##b
#define PI_CONCAT(a, b) PI_CONCAT_INNER(a, b)

// Returns the status from the enclosing function when `expr` is not OK.
#define PI_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::absl::Status _pi_status = (expr);      \
    if (!_pi_status.ok()) return _pi_status; \
  } while (0)

// `PI_ASSIGN_OR_RETURN(auto x, Fn());` assigns the value or returns the error.
#define PI_ASSIGN_OR_RETURN(lhs, expr) \
  PI_ASSIGN_OR_RETURN_IMPL(PI_CONCAT(_pi_statusor_, __LINE__), lhs, expr)
#define PI_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return std::move(tmp).status(); \
  lhs = std::move(tmp).value()
