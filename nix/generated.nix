# Files committed for deployments without Nix, generated from nix/lib.nix so
# that they stay identical to what the NixOS modules produce. Regenerate with
#   bash nix/generate.sh
# (nix/check.sh fails when a committed copy differs).
let
  linkmesh = import ./lib.nix;
  hosts = [ "linkmesh-1" "linkmesh-2" "linkmesh-3" ];
in
{
  # config/haproxy/haproxy.cfg: three instances named linkmesh-1..3 on one
  # container network (docs/deploy-containers.md).
  haproxy = linkmesh.haproxyConfig {
    instances = linkmesh.mkInstances { inherit hosts; httpPort = 8080; grpcPort = 4320; };
    dnsResolvers = true;
    header = [
      ""
      "Source: nix/generated.nix; regenerate with `bash nix/generate.sh`."
      "Three instances named linkmesh-1..3 on one container network, each with"
      "its web/API port 8080 and gRPC port 4320 (docs/deploy-containers.md)."
      "TLS: pass tlsCertFile to haproxyConfig, or terminate TLS in front of it."
    ];
  };

  # containers/mongodb-init.js: initiates the replica set of mongo-1..3 and
  # creates the admin and linkmesh users (run with mongosh inside mongo-1).
  mongodbInit = linkmesh.mongoInitScript {
    replSet = linkmesh.replSetConfig {
      name = "rs0";
      members = [
        { host = "mongo-1:27017"; priority = 2; }
        "mongo-2:27017"
        "mongo-3:27017"
      ];
    };
  };
}
