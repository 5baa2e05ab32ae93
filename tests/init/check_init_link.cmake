# Fails when the guest init links anything of the host side (docs/guest-abi.md): run by ctest as
#   cmake -DBUILD_DIR=<build dir> -DTARGETS_FILE=<init_link_targets.txt> -P check_init_link.cmake
# It reads the real link statement of img2vm-init from the generated build files (build.ninja, or
# link.txt with Makefiles) and the link libraries of img2vm-init, img2vm_init_core and the
# guestabi targets (written at generate time, TARGETS_FILE). Allowed: img2vm::guestabi (either
# flavour), img2vm_flags (warnings), nlohmann_json (header-only) and libc/libstdc++.
if(NOT BUILD_DIR OR NOT TARGETS_FILE)
  message(FATAL_ERROR "usage: cmake -DBUILD_DIR=... -DTARGETS_FILE=... -P check_init_link.cmake")
endif()

set(link_line "")
if(EXISTS "${BUILD_DIR}/guest/init/CMakeFiles/img2vm-init.dir/link.txt")
  file(READ "${BUILD_DIR}/guest/init/CMakeFiles/img2vm-init.dir/link.txt" link_line)
elseif(EXISTS "${BUILD_DIR}/build.ninja")
  file(READ "${BUILD_DIR}/build.ninja" ninja)
  # The statement "build guest/img2vm-init: ..." and its indented variables, up to a blank line.
  string(REGEX MATCH "\nbuild guest/img2vm-init:[^\n]*(\n  [^\n]*)*" link_line "${ninja}")
endif()
if(link_line STREQUAL "")
  message(FATAL_ERROR "cannot find the link statement of img2vm-init under ${BUILD_DIR}")
endif()
file(READ "${TARGETS_FILE}" target_libs)

set(bad "")
foreach(what IN ITEMS link_line target_libs)
  set(text "${${what}}")
  # Host-side libraries by name.
  foreach(lib IN ITEMS ext2fs com_err archive curl ssl crypto zstd isal seccomp slirp nftables gtest)
    if(text MATCHES "[-/._:a-z]${lib}[-._a-zA-Z0-9]*" OR text MATCHES "^${lib}")
      list(APPEND bad "${what}: ${lib} (${CMAKE_MATCH_0})")
    endif()
  endforeach()
  # Our libraries other than guestabi (img2vm_flags carries only compiler flags).
  string(REGEX MATCHALL "img2vm(_|::)[a-z_]+" ours "${text}")
  foreach(o IN LISTS ours)
    if(NOT o MATCHES "^img2vm(_|::)(guestabi|guestabi_guest|flags|init_core)$")
      list(APPEND bad "${what}: ${o}")
    endif()
  endforeach()
  # Sources of other modules compiled straight into the init.
  string(REGEX MATCHALL "lib/[a-z]+/src/[^ ;\n]*" foreign "${text}")
  foreach(f IN LISTS foreign)
    if(NOT f MATCHES "^lib/guestabi/")
      list(APPEND bad "${what}: ${f}")
    endif()
  endforeach()
endforeach()

if(bad)
  list(REMOVE_DUPLICATES bad)
  list(JOIN bad "\n  " lines)
  message(FATAL_ERROR "the guest init links host-side code:\n  ${lines}")
endif()
message(STATUS "img2vm-init links only guestabi and libc")
