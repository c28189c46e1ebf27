// ParseJson: JSON text -> jinja::Value (nlohmann's ordered_json keeps the key order, as Python's
// json.loads does).
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "chat/jinja_value.h"
#include "nlohmann/json.hpp"

namespace pipeinfer::chat::jinja {
namespace {

Value FromJson(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null:
      return Value::None();
    case nlohmann::ordered_json::value_t::boolean:
      return Value::Bool(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
      return Value::Int(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned:
      return Value::Int(static_cast<int64_t>(j.get<uint64_t>()));
    case nlohmann::ordered_json::value_t::number_float:
      return Value::Float(j.get<double>());
    case nlohmann::ordered_json::value_t::string:
      return Value::Str(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      List l;
      for (const auto& e : j) l.push_back(FromJson(e));
      return Value::ListOf(std::move(l));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict d;
      for (auto it = j.begin(); it != j.end(); ++it) d.emplace_back(it.key(), FromJson(it.value()));
      return Value::DictOf(std::move(d));
    }
    default:
      return Value::None();
  }
}

}  // namespace

absl::StatusOr<Value> ParseJson(std::string_view json) {
  try {
    return FromJson(nlohmann::ordered_json::parse(json));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(Cat("invalid JSON: ", e.what()));
  }
}

}  // namespace pipeinfer::chat::jinja
