# OCI image built with dockerTools: the same layout as containers/Containerfile
# (non-root uid 65532, config at /etc/linkmesh/linkmesh.toml, data in
# /var/lib/linkmesh, ports 8080 and 4320), with the Nix closure instead of a
# static binary. `nix build .#image && podman load < result`.
{ dockerTools, cacert, linkmesh }:
dockerTools.buildLayeredImage {
  name = "linkmesh";
  tag = linkmesh.version;

  contents = [ linkmesh cacert ];

  # passwd/group, nsswitch.conf and the container config are shared with the
  # Containerfile build.
  extraCommands = ''
    mkdir -p etc/linkmesh tmp var/lib/linkmesh
    cp ${../containers/rootfs/etc/passwd} etc/passwd
    cp ${../containers/rootfs/etc/group} etc/group
    cp ${../containers/rootfs/etc/nsswitch.conf} etc/nsswitch.conf
    cp ${../containers/linkmesh.toml} etc/linkmesh/linkmesh.toml
    chmod 1777 tmp
  '';
  fakeRootCommands = ''
    chown 65532:65532 var/lib/linkmesh
    chmod 0700 var/lib/linkmesh
  '';

  config = {
    User = "65532:65532";
    WorkingDir = "/var/lib/linkmesh";
    Entrypoint = [ "${linkmesh}/bin/linkmesh" ];
    Cmd = [ "serve" "--config" "/etc/linkmesh/linkmesh.toml" ];
    Env = [ "SSL_CERT_FILE=${cacert}/etc/ssl/certs/ca-bundle.crt" ];
    ExposedPorts = {
      "8080/tcp" = { };
      "4320/tcp" = { };
    };
    Volumes = { "/var/lib/linkmesh" = { }; };
    StopSignal = "SIGTERM";
    Labels = {
      "org.opencontainers.image.title" = "linkmesh";
      "org.opencontainers.image.version" = linkmesh.version;
      "org.opencontainers.image.licenses" = "Apache-2.0";
    };
  };
}
