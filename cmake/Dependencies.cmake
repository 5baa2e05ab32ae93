# Every dependency comes from a Debian package; scripts/setup.sh installs them.
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
find_package(CURL REQUIRED)                          # libcurl4-openssl-dev
find_package(nlohmann_json 3.10 REQUIRED)            # nlohmann-json3-dev
find_package(CLI11 2 REQUIRED)                       # libcli11-dev
pkg_check_modules(LIBARCHIVE REQUIRED IMPORTED_TARGET libarchive)  # libarchive-dev
# img2vm reads tar and the usual compressions only. Debian's shared libarchive also loads libxml2,
# ICU, nettle and libacl for formats img2vm never opens, about 9 ms of every command's start (a
# fifth of a small convert's fixed cost). Linked from libarchive.a instead, with only the
# compression libraries its reader needs; the installed package (img2vmConfig.cmake, img2vm.pc)
# still asks for the shared library.
option(IMG2VM_STATIC_LIBARCHIVE "Link libarchive.a (starts faster) rather than libarchive.so" ON)
if(IMG2VM_STATIC_LIBARCHIVE)
  find_library(IMG2VM_LIBARCHIVE_STATIC NAMES libarchive.a HINTS ${LIBARCHIVE_LIBRARY_DIRS})
  if(NOT IMG2VM_LIBARCHIVE_STATIC)
    message(FATAL_ERROR "libarchive.a not found (libarchive-dev); or configure with -DIMG2VM_STATIC_LIBARCHIVE=OFF")
  endif()
  # What `pkg-config --static libarchive` lists after -larchive (nettle, acl, lzma, zstd, lz4,
  # bz2, z, xml2; their -dev packages are in scripts/setup.sh). With --as-needed (Hardening.cmake)
  # a program loads only those its libarchive objects call: for img2vm, the decompressors.
  set(_archive_deps ${LIBARCHIVE_STATIC_LIBRARIES})
  list(REMOVE_ITEM _archive_deps archive)
  set_property(TARGET PkgConfig::LIBARCHIVE PROPERTY INTERFACE_LINK_LIBRARIES
    ${IMG2VM_LIBARCHIVE_STATIC} ${_archive_deps})
endif()
# SHA-256 of every blob, layer and file img2vm digests (lib/base/src/digest.cpp).
pkg_check_modules(NETTLE REQUIRED IMPORTED_TARGET nettle)           # nettle-dev
pkg_check_modules(EXT2FS REQUIRED IMPORTED_TARGET ext2fs com_err)   # libext2fs-dev
pkg_check_modules(ZSTD REQUIRED IMPORTED_TARGET libzstd)            # libzstd-dev
pkg_check_modules(ISAL REQUIRED IMPORTED_TARGET libisal)            # libisal-dev (gzip inflate)
pkg_check_modules(SECCOMP REQUIRED IMPORTED_TARGET libseccomp)      # libseccomp-dev
# user-mode networking; slirp.pc requires glib-2.0.pc (libglib2.0-dev), libslirp links glib itself
pkg_check_modules(SLIRP REQUIRED IMPORTED_TARGET slirp)             # libslirp-dev
pkg_check_modules(NFTABLES REQUIRED IMPORTED_TARGET libnftables)   # libnftables-dev (tap backend)
# rtnetlink and tc (links, addresses, routes, ingress qdiscs, u32 filters, mirred actions)
pkg_check_modules(LIBNL REQUIRED IMPORTED_TARGET libnl-route-3.0 libnl-3.0)  # libnl-route-3-dev (netns network)
if(IMG2VM_TESTS)
  find_package(OpenSSL 3 REQUIRED)                   # libssl-dev: the tests' TLS registry front
  find_package(GTest REQUIRED)                       # googletest (libgtest-dev)
  find_package(ZLIB REQUIRED)                        # zlib1g-dev: the gzip tests' writer
  include(GoogleTest)
endif()
