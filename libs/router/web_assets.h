// The router's browser pages (libs/router/web/*.html), compiled into the binary: the chat page
// served at `/` and the live pipeline view at `/pipeline`. Self-contained HTML (inline script and
// style, no external requests).
#pragma once

#include <string_view>

namespace pipeinfer::router {

std::string_view ChatPageHtml();
std::string_view PipelinePageHtml();

}  // namespace pipeinfer::router
