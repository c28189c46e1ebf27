// Filters, tests, methods and global functions of the Jinja-subset interpreter (internal to
// libs/chat). Errors carry no position; the evaluator adds it.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "chat/jinja_value.h"

namespace pipeinfer::chat::jinja {

// `subject | name(args, kwargs)`.
absl::StatusOr<Value> ApplyFilter(std::string_view name, const Value& subject,
                                  std::vector<Value>& args, Kwargs& kwargs);
// `v is name(args)`.
absl::StatusOr<bool> ApplyTest(std::string_view name, const Value& v, std::vector<Value>& args);
// `obj.name(args, kwargs)` for strings, dicts and lists. NotFound when `obj` has no such method.
absl::StatusOr<Value> CallMethod(const Value& obj, std::string_view name, std::vector<Value>& args,
                                 Kwargs& kwargs);
// raise_exception, namespace, range, dict, strftime_now.
void AddGlobals(Dict& globals);

// The elements a for loop visits: list items, dict keys, string characters; undefined: none.
absl::StatusOr<List> Iterate(const Value& v);
// Python's x in container.
absl::StatusOr<bool> Contains(const Value& container, const Value& item);
// Python's a < b for numbers and strings (and lists of them).
absl::StatusOr<bool> Less(const Value& a, const Value& b);
// obj[key] as Jinja's environment.getitem does (undefined when absent).
Value GetItem(const Value& obj, const Value& key);
// obj[start:stop:step] (null = omitted) for lists and strings.
absl::StatusOr<Value> Slice(const Value& obj, const Value* start, const Value* stop,
                            const Value* step);
// The UTF-8 characters of `s` as byte offsets: [b0, b1, ..., s.size()].
std::vector<size_t> CharStarts(std::string_view s);

}  // namespace pipeinfer::chat::jinja
