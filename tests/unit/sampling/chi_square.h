// Pearson chi-square goodness-of-fit check shared by the sampling tests.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <sstream>
#include <string>

#include "sampling/sampling.h"

namespace pipeinfer::sampling::testing {

// Upper critical value of the chi-square distribution at significance 0.001: exact table values
// for df <= 10, the Wilson-Hilferty approximation above (slightly conservative there).
inline double ChiSquareCritical001(int df) {
  static constexpr double kTable[] = {0,      10.828, 13.816, 16.266, 18.467, 20.515,
                                      22.458, 24.322, 26.124, 27.877, 29.588};
  if (df <= 10) return kTable[df];
  const double z = 3.090232;  // standard normal quantile at 0.999
  const double h = 2.0 / (9.0 * df);
  const double t = 1.0 - h + z * std::sqrt(h);
  return df * t * t * t;
}

struct ChiSquareResult {
  bool ok = false;
  double statistic = 0;
  int df = 0;
  std::string detail;
};

// Compares observed counts (token -> count, `n` draws in all) with `expected`. Cells whose expected
// count is below 5 are pooled into one cell. Any draw of a token outside `expected` fails.
inline ChiSquareResult ChiSquare(const std::map<int32_t, int64_t>& observed,
                                 const SparseDist& expected, int64_t n) {
  ChiSquareResult r;
  std::ostringstream detail;
  std::map<int32_t, double> want;
  for (size_t i = 0; i < expected.size(); ++i) want[expected.ids[i]] += expected.probs[i];
  for (const auto& [id, count] : observed) {
    if (count > 0 && want.find(id) == want.end()) {
      detail << "token " << id << " drawn " << count << " times but has probability 0";
      r.detail = detail.str();
      return r;
    }
  }
  double pooled_exp = 0, pooled_obs = 0;
  int cells = 0;
  for (const auto& [id, p] : want) {
    const double e = p * static_cast<double>(n);
    auto it = observed.find(id);
    const double o = it == observed.end() ? 0.0 : static_cast<double>(it->second);
    if (e < 5.0) {
      pooled_exp += e;
      pooled_obs += o;
      continue;
    }
    r.statistic += (o - e) * (o - e) / e;
    ++cells;
    detail << id << ": observed " << o << " expected " << e << "\n";
  }
  if (pooled_exp > 0) {
    if (pooled_exp >= 1.0) {
      r.statistic += (pooled_obs - pooled_exp) * (pooled_obs - pooled_exp) / pooled_exp;
      ++cells;
    } else if (cells > 0) {
      // Too little mass to form a cell: fold it into the statistic's last cell conservatively by
      // only requiring that the rare tokens are not grossly over-represented.
      if (pooled_obs > 20 + 10 * pooled_exp) {
        detail << "rare tokens drawn " << pooled_obs << " times, expected " << pooled_exp;
        r.detail = detail.str();
        return r;
      }
    }
  }
  r.df = cells - 1;
  if (r.df <= 0) {
    r.ok = true;  // one cell: support already checked
  } else {
    r.ok = r.statistic < ChiSquareCritical001(r.df);
  }
  detail << "chi2 " << r.statistic << " df " << r.df << " critical "
         << (r.df > 0 ? ChiSquareCritical001(r.df) : 0.0);
  r.detail = detail.str();
  return r;
}

}  // namespace pipeinfer::sampling::testing
