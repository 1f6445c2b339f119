# haproxy.cfg variants produced by nix/lib.nix, each checked with
# `haproxy -c` by nix/check.sh (the committed config/haproxy/haproxy.cfg is
# checked as well). certFile: any PEM with certificate and key.
{ certFile ? "/etc/ssl/linkmesh/haproxy.pem" }:
let
  linkmesh = import ../lib.nix;
in
{
  # Three instances on one machine next to HAProxy, as in the single-host
  # NixOS example, with stats socket and Prometheus exporter.
  loopback = linkmesh.haproxyConfig {
    instances = linkmesh.mkInstances { count = 3; };
    statsBind = "127.0.0.1:8404";
    statsSocket = "/tmp/linkmesh-haproxy-check.sock";
  };

  # Instances on three machines, TLS terminated at HAProxy, IPv6 binds.
  tls = linkmesh.haproxyConfig {
    instances = linkmesh.mkInstances { hosts = [ "10.0.0.11" "10.0.0.12" "fd00::13" ]; httpPort = 8080; grpcPort = 4320; };
    httpBind = "[::]:443";
    grpcBind = "[::]:4317";
    tlsCertFile = certFile;
  };

  # Five instances with DNS names that may not resolve yet.
  dns = linkmesh.haproxyConfig {
    instances = linkmesh.mkInstances { count = 5; host = "linkmesh.internal"; httpPort = 9080; grpcPort = 9320; };
    dnsResolvers = true;
    streamTimeout = "4h";
  };
}
