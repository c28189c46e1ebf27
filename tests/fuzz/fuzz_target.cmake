# pipeinfer_add_fuzz(NAME n SOURCES a.cc ... LIBS l ... [MAX_LEN bytes])
# With PIPEINFER_FUZZ (clang): the libFuzzer binary n, a short fuzz run n_short (label fuzz,
# scripts/test.sh --fuzz; corpus grows in the build folder, seeded from corpus/) and n_replay, the
# committed corpus run once through the libFuzzer binary (ASan + UBSan). Otherwise n_replay links the
# same target with tests/fuzz/gguf/replay_main.cc and runs the committed corpus in every test pass.
set(PIPEINFER_FUZZ_DIR ${CMAKE_CURRENT_LIST_DIR})
function(pipeinfer_add_fuzz)
  cmake_parse_arguments(F "" "NAME;MAX_LEN" "SOURCES;LIBS" ${ARGN})
  if(NOT F_MAX_LEN)
    set(F_MAX_LEN 4096)
  endif()
  file(GLOB _seeds ${CMAKE_CURRENT_SOURCE_DIR}/corpus/*)
  set(_defs PIPEINFER_FIXTURES_DIR="${PIPEINFER_FIXTURES_DIR}")
  if(PIPEINFER_FUZZ)
    add_executable(${F_NAME} ${F_SOURCES})
    target_link_libraries(${F_NAME} PRIVATE ${F_LIBS})
    target_include_directories(${F_NAME} PRIVATE ${PIPEINFER_LIBS_DIR} ${PIPEINFER_TESTS_DIR})
    target_compile_definitions(${F_NAME} PRIVATE ${_defs})
    target_link_options(${F_NAME} PRIVATE -fsanitize=fuzzer)
    set(_corpus ${CMAKE_CURRENT_BINARY_DIR}/corpus)
    # PIPEINFER_FUZZ_SECONDS (environment) sets the run's length; 60 s by default.
    add_test(NAME ${F_NAME}_short
      COMMAND sh -c "mkdir -p '${_corpus}' && '$<TARGET_FILE:${F_NAME}>' -max_total_time=\${PIPEINFER_FUZZ_SECONDS:-60} -max_len=${F_MAX_LEN} -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 '${_corpus}' '${CMAKE_CURRENT_SOURCE_DIR}/corpus'")
    set_tests_properties(${F_NAME}_short PROPERTIES LABELS fuzz TIMEOUT 1200)
    add_test(NAME ${F_NAME}_replay COMMAND ${F_NAME} ${_seeds})
  else()
    add_executable(${F_NAME}_replay ${F_SOURCES} ${PIPEINFER_FUZZ_DIR}/gguf/replay_main.cc)
    target_link_libraries(${F_NAME}_replay PRIVATE ${F_LIBS})
    target_include_directories(${F_NAME}_replay PRIVATE ${PIPEINFER_LIBS_DIR} ${PIPEINFER_TESTS_DIR})
    target_compile_definitions(${F_NAME}_replay PRIVATE ${_defs})
    add_test(NAME ${F_NAME}_replay COMMAND ${F_NAME}_replay ${_seeds})
  endif()
  set_tests_properties(${F_NAME}_replay PROPERTIES TIMEOUT 300)
endfunction()
