// The overrides disk (guestabi/overrides_disk.hpp): what the host encodes the init decodes, and
// the decoder refuses anything else with one clear line, reading nothing past what it was given.
#include "img2vm/guestabi/overrides_disk.hpp"

#include <gtest/gtest.h>

#include "img2vm/guestabi/error.hpp"

using namespace img2vm::guestabi;

namespace {

std::string error_of(std::string_view bytes) {
  try {
    decode_overrides_disk(bytes);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

void set_u32(std::string& disk, std::size_t off, uint32_t v) {
  for (int i = 0; i < 4; ++i)
    disk[off + static_cast<std::size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xff);
}

RunOverrides full() {
  RunOverrides o;
  o.entrypoint = std::vector<std::string>{};
  o.cmd = std::vector<std::string>{"sh", "-c", "echo \"a b\"; exit 3"};
  o.env = {"BIG=" + std::string(3000, 'x'), "EMPTY="};
  o.working_dir = "/w";
  o.user = "app:staff";
  o.hostname = "box";
  o.dns = {"10.0.2.3"};
  o.tty = true;
  o.interactive = true;
  o.net = NetConfig{"eth0", "10.0.2.15", 24, "10.0.2.2", 1500, ""};
  // A file mount as large as one may be: the overrides disk is where it travels.
  MountSpec f;
  f.type = MountSpec::Type::kFile;
  f.target = "/etc/app.conf";
  f.content.assign(kMaxFileMountBytes, '\xa5');
  f.mode = 0440;
  f.uid = 7;
  f.gid = 8;
  f.readonly = true;
  o.mounts.push_back(f);
  return o;
}

}  // namespace

TEST(OverridesDisk, RoundTrip) {
  for (const RunOverrides& o : {RunOverrides{}, full()}) {
    std::string disk = encode_overrides_disk(o);
    EXPECT_EQ(disk.size() % kOverridesDiskSector, 0u);
    EXPECT_EQ(disk.substr(0, 8), "IMG2VMRO");
    EXPECT_EQ(decode_overrides_disk(disk), o);
    // A device larger than the data (zeros or anything after it) decodes the same.
    EXPECT_EQ(decode_overrides_disk(disk + std::string(4096, '\0')), o);
    EXPECT_EQ(decode_overrides_disk(disk + std::string(100, 'z')), o);
  }
}

TEST(OverridesDisk, LayoutIsTheDocumentedOne) {
  RunOverrides o;
  o.hostname = "box";
  std::string json = to_json(o);
  std::string disk = encode_overrides_disk(o);
  ASSERT_EQ(disk.size(), kOverridesDiskSector);
  EXPECT_EQ(disk.substr(8, 4), std::string("\x01\x00\x00\x00", 4));  // version 1, little-endian
  EXPECT_EQ(static_cast<unsigned char>(disk[12]), json.size());
  EXPECT_EQ(disk.substr(13, 3), std::string(3, '\0'));
  EXPECT_EQ(disk.substr(16, json.size()), json);
  EXPECT_EQ(disk.substr(16 + json.size()), std::string(disk.size() - 16 - json.size(), '\0'));
  // JSON that ends exactly at a sector boundary gets no extra sector.
  RunOverrides exact;
  exact.hostname = "";
  std::string base = to_json(exact);
  exact.hostname = std::string(kOverridesDiskSector - 16 - base.size(), 'h');
  EXPECT_EQ(encode_overrides_disk(exact).size(), kOverridesDiskSector);
}

TEST(OverridesDisk, Truncated) {
  std::string disk = encode_overrides_disk(full());
  std::string e = error_of("");
  EXPECT_NE(e.find("overrides disk: truncated"), std::string::npos) << e;
  e = error_of(disk.substr(0, 15));
  EXPECT_NE(e.find("truncated: 15 bytes"), std::string::npos) << e;
  const std::size_t json = to_json(full()).size();
  e = error_of(disk.substr(0, 16 + json - 1));
  EXPECT_NE(e.find("truncated: its header claims " + std::to_string(json) + " bytes of JSON, " +
                   std::to_string(json - 1) + " follow it"),
            std::string::npos)
      << e;
}

TEST(OverridesDisk, OversizedLengthIsRefusedBeforeAnyRead) {
  std::string disk = encode_overrides_disk(RunOverrides{});
  for (uint32_t claim : {uint32_t(kMaxOverridesJson + 1), 0xffffffffu}) {
    set_u32(disk, 12, claim);
    std::string e = error_of(disk);
    EXPECT_NE(e.find("claims " + std::to_string(claim) + " bytes of JSON, more than the limit"),
              std::string::npos)
        << e;
  }
  // Within the limit but past the end of the device.
  set_u32(disk, 12, uint32_t(kMaxOverridesJson));
  EXPECT_NE(error_of(disk).find("truncated"), std::string::npos);
}

TEST(OverridesDisk, WrongMagicOrVersion) {
  std::string disk = encode_overrides_disk(full());
  std::string other = disk;
  other[0] = 'X';
  EXPECT_NE(error_of(other).find("magic"), std::string::npos);
  // The format before the header (bare JSON, NUL-padded) is refused the same way.
  std::string bare = to_json(full()) + std::string(512, '\0');
  EXPECT_NE(error_of(bare).find("not an overrides disk"), std::string::npos);
  for (uint32_t v : {0u, 2u, 0x01000000u}) {
    other = disk;
    set_u32(other, 8, v);
    std::string e = error_of(other);
    EXPECT_NE(e.find("format version " + std::to_string(v) + ", this build reads version 1"),
              std::string::npos)
        << e;
  }
}

TEST(OverridesDisk, JsonInsideIsChecked) {
  auto with_json = [](const std::string& json) {
    std::string disk = encode_overrides_disk(RunOverrides{});
    disk.resize(16);
    set_u32(disk, 12, uint32_t(json.size()));
    return disk + json;
  };
  EXPECT_EQ(decode_overrides_disk(with_json(R"({"schema":1,"tty":true})")).tty, true);
  EXPECT_NE(error_of(with_json(R"({"schema":2})")).find("version 2"), std::string::npos);
  EXPECT_NE(error_of(with_json(R"({"schema":1,"env":["NOEQUALS"]})")).find("\"env\""),
            std::string::npos);
  EXPECT_NE(error_of(with_json(std::string("{\"schema\":1}\0junk", 17))).find("not valid JSON"),
            std::string::npos);
  std::string e = error_of(with_json(""));
  EXPECT_NE(e.find("overrides disk: img2vm run overrides: not valid JSON"), std::string::npos) << e;
}

TEST(OverridesDisk, EncoderRefusesMoreThanTheDecoderTakes) {
  RunOverrides o;
  o.env = {"BIG=" + std::string(kMaxOverridesJson, 'x')};
  try {
    encode_overrides_disk(o);
    FAIL() << "encoded overrides over the limit";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("more than the limit"), std::string::npos) << e.what();
  }
}
