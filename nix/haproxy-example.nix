# Input of the committed config/haproxy/haproxy.cfg (for deployments without
# Nix; see docs/deploy-containers.md). Regenerate with: bash nix/gen-haproxy.sh
let
  linkmesh = import ./lib.nix;
in
linkmesh.haproxyConfig {
  instances = linkmesh.mkInstances {
    hosts = [ "linkmesh-1" "linkmesh-2" "linkmesh-3" ];
    httpPort = 8080;
    grpcPort = 4320;
  };
  dnsResolvers = true;
  header = [
    ""
    "Source: nix/haproxy-example.nix; regenerate with `bash nix/gen-haproxy.sh`."
    "Three instances named linkmesh-1..3 on one container network, each with"
    "its web/API port 8080 and gRPC port 4320 (docs/deploy-containers.md)."
    "TLS: pass tlsCertFile to haproxyConfig, or terminate TLS in front of it."
  ];
}
