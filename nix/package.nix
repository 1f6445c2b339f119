# The linkmesh binary, built from this repository with the locked crates.
{ lib, rustPlatform }:
let
  cargoToml = builtins.fromTOML (builtins.readFile ../Cargo.toml);
  fs = lib.fileset;
in
rustPlatform.buildRustPackage {
  pname = "linkmesh";
  inherit (cargoToml.package) version;

  # Only what the build and the tests read, so that docs or Nix edits do not
  # rebuild the binary.
  src = fs.toSource {
    root = ../.;
    fileset = fs.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      (fs.maybeMissing ../build.rs)
      (fs.maybeMissing ../proto)
      (fs.maybeMissing ../tests)
      (fs.maybeMissing ../benches)
      (fs.maybeMissing ../config)
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # The protobuf files are compiled in build.rs without protoc; the test
  # suite runs against the embedded backend (MongoDB tests print SKIPPED
  # without a mongod on PATH).

  meta = {
    inherit (cargoToml.package) description;
    license = lib.licenses.asl20;
    mainProgram = "linkmesh";
    platforms = lib.platforms.linux;
  };
}
