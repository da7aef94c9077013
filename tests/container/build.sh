#!/usr/bin/env bash
# Builds the authrelay image as a user does (`podman build -t authrelay .` on the repository),
# first making sure its two base images exist: pulled where the registries can be reached,
# otherwise local stand-ins made here under the same names:
#
#   rust:1-bookworm                        a debootstrap'ed bookworm with the C toolchain,
#                                          libssl-dev and this machine's Rust toolchain (the
#                                          official image: buildpack-deps:bookworm + rustup)
#   gcr.io/distroless/cc-debian12:nonroot  the Debian 12 packages distroless cc is made of
#                                          (base-files, netbase, tzdata, libc6, libssl3, libgcc,
#                                          libstdc++, the CA bundle), user 65532, no shell
#
# Podman needs, on machines without systemd and with cgroups v1: runc, cgroupfs, no default
# ulimits (containers.conf below, exported as CONTAINERS_CONF for the caller too).
#
#   tests/container/build.sh            # prints the image's size and the build's seconds
#   FRESH=1 tests/container/build.sh    # stand-ins made again, image built without cache
#   BASES_ONLY=1 tests/container/build.sh   # the base images only
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="${AUTHRELAY_CONTAINER_WORK:-/var/tmp/authrelay-container}"
mkdir -p "$WORK/logs"
RUST_IMG=docker.io/library/rust:1-bookworm
DISTROLESS_IMG=gcr.io/distroless/cc-debian12:nonroot
BASE_IMG=localhost/authrelay-bookworm-min:latest
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

need=()
for tool in podman buildah runc debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ "${#need[@]}" -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >"$WORK/logs/apt.log" 2>&1
fi
cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
EOF
export CONTAINERS_CONF="$WORK/containers.conf"

# Pulled where it can be; a stand-in otherwise (or always with STANDINS=1).
have() {
  podman image exists "$1" && [ -z "${FRESH:-}" ] && return 0
  [ -z "${STANDINS:-}" ] && timeout 20 podman pull -q "$1" >/dev/null 2>&1
}

base() {
  podman image exists "$BASE_IMG" && [ -z "${FRESH:-}" ] && return
  local dir="$WORK/bookworm-rootfs"
  rm -rf "$dir"
  debootstrap --variant=minbase bookworm "$dir" "$MIRROR" >"$WORK/logs/debootstrap.log" 2>&1
  tar -C "$dir" -c . | podman import - "$BASE_IMG" >/dev/null
  rm -rf "$dir"
}

distroless() {
  local d="$WORK/distroless" root="$WORK/distroless/rootfs"
  local pkgs="base-files netbase tzdata media-types libc6 libssl3 libgcc-s1 libgomp1 libstdc++6 gcc-12-base ca-certificates"
  rm -rf "$d"
  mkdir -p "$d/debs" "$root"
  podman run --rm -v "$d/debs:/debs" "$BASE_IMG" sh -c "
      echo 'deb $MIRROR bookworm main' > /etc/apt/sources.list
      apt-get update -qq && cd /debs && apt-get download -qq $pkgs" >"$WORK/logs/distroless.log" 2>&1
  local deb name
  for deb in "$d"/debs/*.deb; do
    dpkg-deb -x "$deb" "$root"
    name="$(dpkg-deb -f "$deb" Package)"
    mkdir -p "$root/var/lib/dpkg/status.d"
    { dpkg-deb -f "$deb"; echo "Status: install ok installed"; } >"$root/var/lib/dpkg/status.d/$name"
  done
  # distroless keeps the CA bundle only, and no shell or maintainer-script tools.
  mkdir -p "$root/etc/ssl/certs"
  cat "$root"/usr/share/ca-certificates/mozilla/*.crt >"$root/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$root/usr/share/ca-certificates" "$root/usr/sbin/update-ca-certificates" \
    "$root/etc/ca-certificates" "$root/usr/share/doc-base" "$root/usr/share/man" "$root/usr/share/lintian"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' >"$root/etc/group"
  install -d -m 0700 "$root/root"
  install -d -m 0700 -o 65532 -g 65532 "$root/home/nonroot"
  install -d -m 1777 "$root/tmp"
  printf '%s\n' 'passwd: compat' 'group: compat' 'hosts: files dns' >"$root/etc/nsswitch.conf"
  if find "$root" \( -name sh -o -name bash -o -name dash -o -name busybox \) | grep -q .; then
    echo "the distroless stand-in has a shell" >&2
    exit 1
  fi
  podman rmi -f "$DISTROLESS_IMG" >/dev/null 2>&1 || true
  tar --numeric-owner -C "$root" -c . | podman import \
    --change 'USER 65532' --change 'WORKDIR /home/nonroot' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'LABEL org.opencontainers.image.description="local stand-in for gcr.io/distroless/cc-debian12:nonroot"' \
    - "$DISTROLESS_IMG" >/dev/null
  rm -rf "$d"
}

rust() {
  local d="$WORK/rust" sysroot rustup_bin version
  sysroot="$(rustc --print sysroot)"
  rustup_bin="$(command -v rustup)"
  version="$(rustc --version | cut -d' ' -f2)"
  rm -rf "$d"
  mkdir -p "$d/ca"
  cp /usr/local/share/ca-certificates/*.crt "$d/ca/" 2>/dev/null || true
  cat >"$d/Containerfile" <<EOF
FROM $BASE_IMG
LABEL org.opencontainers.image.description="local stand-in for rust:1-bookworm"
RUN echo 'deb $MIRROR bookworm main' > /etc/apt/sources.list \\
    && apt-get update -qq \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
       build-essential pkg-config libssl-dev ca-certificates git curl \\
    && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN tc="\$RUSTUP_HOME/toolchains/$version-x86_64-unknown-linux-gnu" \\
    && mkdir -p "\$RUSTUP_HOME/toolchains" "\$CARGO_HOME/bin" \\
    && cp -a /mnt/toolchain "\$tc" && rm -rf "\$tc/share/doc" \\
    && install -m 0755 /mnt/rustup "\$CARGO_HOME/bin/rustup" \\
    && for p in cargo rustc rustdoc; do ln -s rustup "\$CARGO_HOME/bin/\$p"; done \\
    && printf 'version = "12"\ndefault_toolchain = "%s-x86_64-unknown-linux-gnu"\nprofile = "minimal"\n' "$version" > "\$RUSTUP_HOME/settings.toml" \\
    && chmod -R a+w "\$RUSTUP_HOME" "\$CARGO_HOME" && cargo --version
EOF
  podman build -q --format docker -t "$RUST_IMG" -v "$sysroot:/mnt/toolchain:ro" \
    -v "$rustup_bin:/mnt/rustup:ro" -f "$d/Containerfile" "$d" >"$WORK/logs/rust.log" 2>&1
  rm -rf "$d"
}

t0=$SECONDS
if ! have "$RUST_IMG" || ! have "$DISTROLESS_IMG"; then
  base
  have "$DISTROLESS_IMG" || distroless
  have "$RUST_IMG" || rust
fi
echo "base images ready in $((SECONDS - t0)) s"
[ -n "${BASES_ONLY:-}" ] && exit 0
t1=$SECONDS
# --format docker: the OCI image format has no HEALTHCHECK (podman drops it with a warning).
podman build ${FRESH:+--no-cache} --format docker -t authrelay "$ROOT" >"$WORK/logs/build.log" 2>&1 \
  || { tail -30 "$WORK/logs/build.log" >&2; exit 1; }
echo "image built in $((SECONDS - t1)) s, $(podman image inspect authrelay --format '{{.Size}}') bytes"
