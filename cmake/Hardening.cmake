# Warnings and sanitizers shared by every target of ours, through one interface target.
add_library(img2vm_flags INTERFACE)
target_compile_options(img2vm_flags INTERFACE -Wall -Wextra -Wshadow -Wnon-virtual-dtor
  -Wcast-align -Wformat=2 -Wimplicit-fallthrough)
if(IMG2VM_WERROR)
  target_compile_options(img2vm_flags INTERFACE -Werror)
endif()
# Only the shared libraries a program calls are loaded when it starts (a static libarchive lists
# every library its writer could use; img2vm reads only).
target_link_options(img2vm_flags INTERFACE -Wl,--as-needed)
if(IMG2VM_SANITIZE)
  set(_san -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
  target_compile_options(img2vm_flags INTERFACE ${_san})
  target_link_options(img2vm_flags INTERFACE ${_san})
endif()
if(IMG2VM_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "IMG2VM_FUZZ needs clang (use the 'fuzz' preset)")
  endif()
  # Instrument our libraries for coverage; the fuzz targets add -fsanitize=fuzzer themselves.
  set(_fz -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer)
  target_compile_options(img2vm_flags INTERFACE ${_fz})
  target_link_options(img2vm_flags INTERFACE -fsanitize=address,undefined)
endif()

# img2vm_library(NAME SOURCES ... DEPS ...): one static library per lib/ module, with public
# headers under lib/<module>/include/img2vm/<module>/ (installed to <prefix>/include) and
# internal ones in lib/<module>/src/. img2vm_<module>_internal adds the src/ directory for the
# tests and fuzz targets that reach into a module's internals; it is never installed.
function(img2vm_library name)
  cmake_parse_arguments(A "" "" "SOURCES;PUBLIC_DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(img2vm_${name} STATIC ${A_SOURCES})
  add_library(img2vm::${name} ALIAS img2vm_${name})
  set_target_properties(img2vm_${name} PROPERTIES EXPORT_NAME ${name} OUTPUT_NAME img2vm_${name})
  target_include_directories(img2vm_${name}
    PUBLIC $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include> $<INSTALL_INTERFACE:include>
    PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
  target_link_libraries(img2vm_${name} PUBLIC ${A_PUBLIC_DEPS}
    PRIVATE $<BUILD_INTERFACE:img2vm_flags> ${A_PRIVATE_DEPS})
  add_library(img2vm_${name}_internal INTERFACE)
  target_include_directories(img2vm_${name}_internal INTERFACE ${CMAKE_CURRENT_SOURCE_DIR}/src)
  target_link_libraries(img2vm_${name}_internal INTERFACE img2vm_${name})
  set_property(GLOBAL APPEND PROPERTY IMG2VM_INSTALLED_LIBRARIES img2vm_${name})
  install(DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
    FILES_MATCHING PATTERN "*.hpp")
endfunction()
