#include "img2vm/base/ascii.hpp"

#include <gtest/gtest.h>

#include <string>

using img2vm::ascii_lower;

TEST(AsciiLower, LowersOnlyAsciiLetters) {
  EXPECT_EQ(ascii_lower("Docker.IO:5000/Library"), "docker.io:5000/library");
  EXPECT_EQ(ascii_lower("WWW-Authenticate"), "www-authenticate");
  EXPECT_EQ(ascii_lower("@[`{ 09_-~"), "@[`{ 09_-~");  // the bytes around A-Z stay
  EXPECT_EQ(ascii_lower(""), "");
}

TEST(AsciiLower, LeavesOtherBytesAlone) {
  // UTF-8 "ÄÖ" and Latin-1 bytes are not letters to it, nor is a NUL.
  std::string in("\xc3\x84\xc3\x96X\0Y\xc4\xd6", 9);
  std::string want("\xc3\x84\xc3\x96x\0y\xc4\xd6", 9);
  EXPECT_EQ(ascii_lower(in), want);
}
