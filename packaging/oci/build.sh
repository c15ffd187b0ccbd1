#!/usr/bin/env bash
# Builds the container image mailgate:VERSION (and :latest) from the release binary,
# without any base image: the root filesystem is assembled here under target/oci/rootfs
# (the binary, the shared libraries `ldd` names, the CA bundle, passwd/group with uid and
# gid 65532, /etc/mailgate/mailgate.toml, /tmp; the empty store directory comes from
# volume/, owned by 65532), every file's
# mtime set to SOURCE_DATE_EPOCH (the last commit's time), then `podman build` (or
# `docker build`) of packaging/oci/Containerfile with the same timestamp.
#
#   packaging/oci/build.sh            # prints the image name on its last line
#   ENGINE=docker packaging/oci/build.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ENGINE=${ENGINE:-podman}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
REVISION=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
SOURCE=$(git remote get-url origin 2>/dev/null || echo unknown)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
CREATED=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)

[ -x target/release/mailgate ] || cargo build --release --locked --quiet
BIN=target/release/mailgate

CTX=target/oci
ROOT=$CTX/rootfs
rm -rf "$CTX"
mkdir -p "$ROOT"/{usr/bin,etc/mailgate,etc/ssl/certs,tmp,proc,dev} "$CTX/volume"
install -m 0755 "$BIN" "$ROOT/usr/bin/mailgate"

# What the binary links, at the paths the dynamic loader looks for (symlinks resolved).
ldd "$BIN" | awk '/=> \// {print $3} /^[[:space:]]*\/[^ ]*ld-linux/ {print $1}' | sort -u |
  while read -r lib; do
    mkdir -p "$ROOT$(dirname "$lib")"
    cp -L "$lib" "$ROOT$lib"
    chmod 0755 "$ROOT$lib"
  done
# glibc's name service reads these; files only, no NSS modules needed.
printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$ROOT/etc/nsswitch.conf"
printf 'root:x:0:0:root:/root:/sbin/nologin\nmailgate:x:65532:65532:mailgate:/var/lib/mailgate:/sbin/nologin\n' > "$ROOT/etc/passwd"
printf 'root:x:0:\nmailgate:x:65532:\n' > "$ROOT/etc/group"
cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"

# The container's configuration: the shipped one with SMTP on every address of the
# container (allowed_networks stays loopback: the manifests name the pod network, or
# clients use AUTH), the status listener on loopback, the store and outbox in the volume.
sed -e 's|^listen = \["127.0.0.1:2525"\].*|listen = ["0.0.0.0:2525"]         # every address of the container|' \
    -e 's#^path = "data/mailgate.redb"#path = "/var/lib/mailgate/mailgate.redb"#' \
    -e 's#^directory = "outbox"#directory = "/var/lib/mailgate/outbox"#' \
    config/mailgate.toml > "$ROOT/etc/mailgate/mailgate.toml"
grep -q '^listen = \["0.0.0.0:2525"\]' "$ROOT/etc/mailgate/mailgate.toml"
grep -q '^listen = "127.0.0.1:8525"' "$ROOT/etc/mailgate/mailgate.toml"
grep -q '^path = "/var/lib/mailgate/mailgate.redb"' "$ROOT/etc/mailgate/mailgate.toml"

chmod 0644 "$ROOT"/etc/* "$ROOT/etc/mailgate/mailgate.toml" "$ROOT/etc/ssl/certs/ca-certificates.crt" 2>/dev/null || true
chmod 0755 "$ROOT/etc/mailgate" "$ROOT/etc/ssl" "$ROOT/etc/ssl/certs"
chmod 1777 "$ROOT/tmp"
chmod 0750 "$CTX/volume"
cp packaging/oci/Containerfile "$CTX/Containerfile"
# Fixed mtimes: the layer is the same byte for byte whenever the tree is.
find "$CTX" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

IMAGE=localhost/mailgate:$VERSION
"$ENGINE" build --quiet --format docker --timestamp "$SOURCE_DATE_EPOCH" \
  --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" \
  --build-arg "SOURCE=$SOURCE" --build-arg "CREATED=$CREATED" \
  -t "$IMAGE" -t localhost/mailgate:latest -f "$CTX/Containerfile" "$CTX" >/dev/null
echo "$IMAGE"
