# Every dependency comes from a Debian package; scripts/setup.sh installs them.
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
find_package(OpenSSL 3 REQUIRED)                     # libssl-dev
find_package(CURL REQUIRED)                          # libcurl4-openssl-dev
find_package(nlohmann_json 3.10 REQUIRED)            # nlohmann-json3-dev
find_package(CLI11 2 REQUIRED)                       # libcli11-dev
pkg_check_modules(LIBARCHIVE REQUIRED IMPORTED_TARGET libarchive)  # libarchive-dev
pkg_check_modules(EXT2FS REQUIRED IMPORTED_TARGET ext2fs com_err)   # libext2fs-dev
pkg_check_modules(ZSTD REQUIRED IMPORTED_TARGET libzstd)            # libzstd-dev
pkg_check_modules(ISAL REQUIRED IMPORTED_TARGET libisal)            # libisal-dev (gzip inflate)
pkg_check_modules(SECCOMP REQUIRED IMPORTED_TARGET libseccomp)      # libseccomp-dev
# user-mode networking; slirp.pc requires glib-2.0.pc (libglib2.0-dev), libslirp links glib itself
pkg_check_modules(SLIRP REQUIRED IMPORTED_TARGET slirp)             # libslirp-dev
pkg_check_modules(NFTABLES REQUIRED IMPORTED_TARGET libnftables)   # libnftables-dev (tap backend)
if(IMG2VM_TESTS)
  find_package(GTest REQUIRED)                       # googletest (libgtest-dev)
  find_package(ZLIB REQUIRED)                        # zlib1g-dev: the gzip tests' writer
  include(GoogleTest)
endif()
