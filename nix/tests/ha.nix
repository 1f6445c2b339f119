# NixOS VM test (flake check `ha`): three LinkMesh instances on three
# machines, each also a member of a MongoDB replica set; HAProxy on a fourth
# machine; a collector on a fifth that talks to the control plane only
# through HAProxy. One instance is stopped and the control plane must keep
# answering through HAProxy.
#
# Run with: nix build .#checks.x86_64-linux.ha  (needs KVM; not run on the
# machines this repository is developed on, which cannot fetch nixpkgs).
{ haModule }:
let
  names = [ "lm1" "lm2" "lm3" ];

  # Test-only secrets. They live in the Nix store through environment.etc,
  # which is fine for a throwaway VM and never for a real deployment.
  testSecrets = {
    "linkmesh-test/mongodb-keyfile".text = "bGlua21lc2gtdm0tdGVzdC1yZXBsaWNhLXNldC1rZXktZmlsZS0wMTIzNDU2Nzg5";
    "linkmesh-test/mongodb-admin-password".text = "admin0123456789abcdef";
    "linkmesh-test/mongodb-app-password".text = "app0123456789abcdef";
    "linkmesh-test/bootstrap-admin-password".text = "bootstrap-admin-0123";
  };

  # The same group description on every machine.
  group = {
    enable = true;
    instances = builtins.listToAttrs (map
      (n: {
        name = n;
        value = { host = n; listenAddress = "0.0.0.0"; };
      })
      names);
    settings = {
      # A private test network; in production terminate TLS at HAProxy
      # (haproxy.tlsCertFile) or set [tls] on the instances.
      server.allow_insecure_http = true;
      server.shutdown_grace = "5s";
      database.connect_timeout = "5s";
    };
    secrets.bootstrapAdminPasswordFile = "/etc/linkmesh-test/bootstrap-admin-password";
    mongodb = {
      replSetName = "rs0";
      # lm1 runs the init unit; a higher priority keeps it primary, so the
      # localhost exception applies there.
      members = [{ host = "lm1:27017"; priority = 2; } "lm2:27017" "lm3:27017"];
      keyFile = "/etc/linkmesh-test/mongodb-keyfile";
      appPasswordFile = "/etc/linkmesh-test/mongodb-app-password";
    };
  };

  instanceNode = name: { lib, ... }: {
    imports = [ haModule ];
    virtualisation.memorySize = 2048;
    environment.etc = testSecrets;
    services.linkmesh.ha = lib.recursiveUpdate group {
      localInstances = [ name ];
      openFirewall = true;
      mongodb = {
        enable = true;
        openFirewall = true;
        initiate = name == "lm1";
        adminPasswordFile = "/etc/linkmesh-test/mongodb-admin-password";
      };
    };
  };
in
{
  name = "linkmesh-ha";

  nodes = {
    lm1 = instanceNode "lm1";
    lm2 = instanceNode "lm2";
    lm3 = instanceNode "lm3";

    lb = { pkgs, lib, ... }: {
      imports = [ haModule ];
      environment.systemPackages = [ pkgs.socat pkgs.curl ];
      services.linkmesh.ha = lib.recursiveUpdate group {
        localInstances = [ ];
        haproxy = {
          enable = true;
          openFirewall = true;
        };
      };
    };

    collector = { pkgs, ... }: {
      environment.systemPackages = [ pkgs.curl pkgs.jq ];
    };
  };

  testScript = ''
    import base64
    import json

    instances = {"lm1": lm1, "lm2": lm2, "lm3": lm3}
    admin = '{"username": "admin", "password": "bootstrap-admin-0123"}'

    def backends_up(proxy, expected):
        # Field 18 of `show stat` is the server status.
        proxy.wait_until_succeeds(
            "echo 'show stat' | socat - UNIX-CONNECT:/run/haproxy/admin.sock"
            " | awk -F, '$1 == \"linkmesh_http\" && $18 == \"UP\"' | wc -l"
            f" | grep -qx {expected}",
            timeout=120,
        )

    def api(cmd):
        return collector.succeed(
            "curl -sf --max-time 10 -b /tmp/cookies -c /tmp/cookies"
            " -H 'Content-Type: application/json' " + cmd
        )

    def varint(n):
        out = b""
        while True:
            b = n & 0x7F
            n >>= 7
            if n:
                out += bytes([b | 0x80])
            else:
                return out + bytes([b])

    def grpc_enroll(token, name):
        # linkmesh.v1.CollectorService/Enroll over HTTP/2 through HAProxy:
        # EnrollRequest{token = 1, name = 3} in a gRPC length-prefixed frame.
        msg = b"\x0a" + varint(len(token)) + token.encode() + b"\x1a" + varint(len(name)) + name.encode()
        frame = b"\x00" + len(msg).to_bytes(4, "big") + msg
        collector.succeed(f"echo {base64.b64encode(frame).decode()} | base64 -d > /tmp/enroll.bin")
        headers = collector.succeed(
            "curl -s --http2-prior-knowledge --max-time 10 -D - -o /tmp/enroll.out -X POST"
            " -H 'content-type: application/grpc' -H 'te: trailers'"
            " --data-binary @/tmp/enroll.bin http://lb:4320/linkmesh.v1.CollectorService/Enroll"
        )
        assert "grpc-status: 0" in headers, f"gRPC Enroll failed: {headers}"

    start_all()

    with subtest("replica set comes up"):
        for m in instances.values():
            m.wait_for_unit("mongodb.service")
        lm1.wait_for_unit("linkmesh-mongodb-init.service", timeout=300)

    with subtest("every instance is ready"):
        for name, m in instances.items():
            m.wait_for_unit(f"linkmesh-{name}.service")
            m.wait_until_succeeds("curl -sf http://127.0.0.1:8080/readyz", timeout=180)
        # The unit runs hardened with a dynamic user.
        lm1.succeed("systemctl show linkmesh-lm1 -p DynamicUser | grep -qx DynamicUser=yes")
        lm1.succeed("systemctl show linkmesh-lm1 -p ProtectSystem | grep -qx ProtectSystem=strict")

    with subtest("HAProxy sees three healthy instances"):
        lb.wait_for_unit("haproxy.service")
        backends_up(lb, 3)
        collector.wait_until_succeeds("curl -sf http://lb:8080/readyz", timeout=60)

    with subtest("a collector enrolls and connects through HAProxy"):
        api("-X POST -d '" + admin + "' http://lb:8080/api/v1/auth/login")
        token = json.loads(api(
            "-X POST -d '{\"name\": \"vm-test\", \"max_uses\": 10}'"
            " http://lb:8080/api/v1/enrollment-tokens"
        ))
        secret = token["token"]
        enrolled = json.loads(api(
            "-X POST -d '" + json.dumps({"token": secret, "name": "collector-1"}) + "'"
            " http://lb:8080/api/v1/enroll"
        ))
        print(f"enrolled: {enrolled}")
        # The collector endpoint: gRPC over HTTP/2 end to end through HAProxy.
        grpc_enroll(secret, "collector-grpc-1")

    with subtest("one instance stops, the control plane still answers"):
        lm2.succeed("systemctl stop linkmesh-lm2.service")
        backends_up(lb, 2)
        for _ in range(20):
            collector.succeed("curl -sf --max-time 5 http://lb:8080/readyz")
        listed = json.loads(api("http://lb:8080/api/v1/collectors"))
        for name in ("collector-1", "collector-grpc-1"):
            assert name in json.dumps(listed), f"{name} missing from {listed}"
        api(
            "-X POST -d '" + json.dumps({"token": secret, "name": "collector-2"}) + "'"
            " http://lb:8080/api/v1/enroll"
        )
        grpc_enroll(secret, "collector-grpc-2")

    with subtest("the stopped instance comes back"):
        lm2.succeed("systemctl start linkmesh-lm2.service")
        backends_up(lb, 3)
  '';
}
