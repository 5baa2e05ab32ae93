# `cmake --install`: the public headers (img2vm_library installs each module's include/), the
# static libraries with an exported CMake package (img2vm::runtime, img2vm::vm, ...), an
# img2vm.pc for pkg-config, img2vm in bin and img2vm-vmm / img2vm-init in libexec/img2vm
# (cmd/img2vm/CMakeLists.txt). docs/library.md, "Installing and linking".
include(CMakePackageConfigHelpers)

set(IMG2VM_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/img2vm)
get_property(_img2vm_libs GLOBAL PROPERTY IMG2VM_INSTALLED_LIBRARIES)
install(TARGETS ${_img2vm_libs} EXPORT img2vmTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT img2vmTargets NAMESPACE img2vm:: DESTINATION ${IMG2VM_CMAKE_DIR})

configure_package_config_file(cmake/img2vmConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/img2vmConfig.cmake INSTALL_DESTINATION ${IMG2VM_CMAKE_DIR})
# 0.x: a minor version may change the API.
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/img2vmConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/img2vmConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/img2vmConfigVersion.cmake DESTINATION ${IMG2VM_CMAKE_DIR})

# pkg-config: the libraries are static, so their dependencies are in Requires (not .private)
# and `pkg-config --libs img2vm` links everything an embedder needs.
file(RELATIVE_PATH IMG2VM_PC_UP /p/${CMAKE_INSTALL_LIBDIR}/pkgconfig /p)
string(REGEX REPLACE "/$" "" IMG2VM_PC_UP "${IMG2VM_PC_UP}")
configure_file(cmake/img2vm.pc.in ${CMAKE_CURRENT_BINARY_DIR}/img2vm.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/img2vm.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
